"""CLO trainer on tiny random models built from real configs (and one run on the embedded model)."""

import copy
import math
from unittest import mock

import pytest
import torch
from tiny_models import BOS_TEMPLATE, clo_config, make_model, make_tokenizer, make_turn_end_tokenizer, seed_rows

from clo_utils.data import build_cross_lingual_pairs
from clo_utils.losses import response_positions, sequence_logps
from clo_utils.models import select_trainable
from clo_utils.precision import Gpu
from clo_utils.train import (
    CLOCollator,
    CLOTrainer,
    seeds_within_max_length,
    tokenize_clo_pairs,
    tokenize_dpo_pairs,
    tokenize_prompt_response,
    tokenize_sft_rows,
    train_clo,
)

_config = clo_config


def test_labels_cover_exactly_the_response_and_eos(tok):
    prompt = [{"role": "user", "content": "How are you?"}]
    response = [{"role": "assistant", "content": "I am fine."}]
    ids, labels = tokenize_prompt_response(tok, prompt, response)
    n_prompt = len(tok.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"])
    assert labels[:n_prompt] == [-100] * n_prompt
    assert all(x != -100 for x in labels[n_prompt:])
    decoded = tok.decode(labels[n_prompt:])
    assert decoded.startswith("I am fine.") and tok.eos_token in decoded
    assert "How are you" not in decoded  # the prompt is not repeated inside the response
    assert tok.eos_token_id in labels


def test_one_bos_when_the_template_renders_it():
    tok = make_tokenizer(BOS_TEMPLATE)
    ids, _ = tokenize_prompt_response(
        tok, [{"role": "user", "content": "Hi"}], [{"role": "assistant", "content": "Hello"}]
    )
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_eos_is_appended_when_the_template_has_none():
    tok = make_tokenizer("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    ids, labels = tokenize_prompt_response(
        tok, [{"role": "user", "content": "Hi"}], [{"role": "assistant", "content": "Hello"}]
    )
    assert labels[-1] == tok.eos_token_id


def _distinct_seeds(n):
    return [
        {**r, "prompt_en": f"{r['prompt_en']} {i}", "prompt_tgt": f"{r['prompt_tgt']} {i}"}
        for i, r in enumerate(seed_rows(n))
    ]


def _sequence_lengths(tok, row):
    """The four CLO sequences' lengths, rendered independently with the chat template (+ EOS when the
    rendered answer has none: the tiny template's answer ends with EOS)."""

    def length(prompt, response):
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], return_dict=True
        )["input_ids"]
        return len(ids) + (tok.eos_token_id not in ids)

    return [
        length(row["prompt_en"], row["response_en"]),
        length(row["prompt_en"], row["response_tgt"]),
        length(row["prompt_tgt"], row["response_tgt"]),
        length(row["prompt_tgt"], row["response_en"]),
    ]


def test_seeds_within_max_length_keeps_a_seed_only_when_all_four_sequences_fit(tok):
    rows = _distinct_seeds(4)
    rows[1]["response_en"] = "fine " * 40  # too long: en chosen and tgt rejected, not the target SFT row
    rows[2]["response_tgt"] = "molt " * 40
    limit = max(max(_sequence_lengths(tok, r)) for i, r in enumerate(rows) if i in (0, 3))
    assert all(max(_sequence_lengths(tok, r)) > limit for r in rows[1:3])
    kept, dropped = seeds_within_max_length(rows, tok, limit)
    assert [r["id"] for r in kept] == ["s0", "s3"] and dropped == ["s1", "s2"]
    assert seeds_within_max_length(rows, tok, limit - 1)[0] != kept  # the limit is inclusive and exact
    with pytest.raises(ValueError, match="no seed fits"):
        seeds_within_max_length(rows[1:3], tok, limit)


def test_every_method_trains_on_the_kept_seeds_and_refuses_a_longer_row(tok):
    from clo_utils.data import build_sft_rows

    rows = _distinct_seeds(4)
    rows[1]["response_en"] = "fine " * 40
    kept, dropped = seeds_within_max_length(rows, tok, 96)
    assert dropped == ["s1"]
    examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(kept), tok, 96)
    sft = tokenize_sft_rows(build_sft_rows(kept, "both"), tok, 96)
    dpo = tokenize_dpo_pairs(build_cross_lingual_pairs(kept), tok, 96)
    assert [e["seed_id"] for e in examples] == ["s0", "s2", "s3"] and len(sft) == 6 and len(dpo) == 6
    # Fed the unfiltered seeds, no method drops rows on its own: each refuses, naming the fix.
    for tokenize, data in (
        (tokenize_clo_pairs, build_cross_lingual_pairs(rows)),
        (tokenize_dpo_pairs, build_cross_lingual_pairs(rows)),
        (tokenize_sft_rows, build_sft_rows(rows, "en")),
    ):
        with pytest.raises(ValueError, match=r"\['s1'\].*seeds_within_max_length"):
            tokenize(data, tok, 96)
    # SFT-tgt alone would fit seed s1's target row, yet it is not trained on: the filter is per seed.
    assert "s1" not in {r["seed_id"] for r in build_sft_rows(kept, "tgt")}


def test_missing_chat_template_is_a_clear_error(tok):
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        tokenize_prompt_response(tok, [{"role": "user", "content": "a"}], [{"role": "assistant", "content": "b"}])


def _sequences(batch) -> list[list[int]]:
    """The token ids of each sequence of a collated batch, padded or packed."""
    if "segment_ids" in batch:
        ids, seg = batch["input_ids"][0], batch["segment_ids"][0]
        return [ids[seg == k].tolist() for k in range(int(seg.max()) + 1)]
    return [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]


def _padded(trainer, batch) -> dict:
    """The padded batch of the same seeds as `batch` (which may be packed)."""
    return CLOCollator(trainer.pad_token_id)([trainer.train_dataset[int(i)] for i in batch["seed_index"]])


@pytest.mark.parametrize("padding_free", [True, False])
def test_both_triples_of_a_seed_share_a_batch_under_shuffling(tmp_path, tok, padding_free):
    rows = seed_rows(8)
    trainer = CLOTrainer(
        make_model("llama", len(tok)),
        _config(tmp_path, padding_free=padding_free),
        tokenize_clo_pairs(build_cross_lingual_pairs(rows), tok, 256)[0],
        processing_class=tok,
    )
    for batch in trainer.get_train_dataloader():
        assert ("segment_ids" in batch) == padding_free
        texts = tok.batch_decode(_sequences(batch), skip_special_tokens=True)
        for k, idx in enumerate(batch["seed_index"].tolist()):
            seed = rows[[r["id"] for r in rows].index(trainer.train_dataset[idx]["seed_id"])]
            en_c, en_r, tgt_c, tgt_r = texts[4 * k : 4 * k + 4]
            assert seed["prompt_en"] in en_c and seed["response_en"] in en_c
            assert seed["prompt_en"] in en_r and seed["response_tgt"] in en_r
            assert seed["prompt_tgt"] in tgt_c and seed["response_tgt"] in tgt_c
            assert seed["prompt_tgt"] in tgt_r and seed["response_en"] in tgt_r


def _loss_on_first_batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer.compute_loss(trainer.model, batch), batch


def test_nll_target_only_sees_no_english_response(tmp_path, tok):
    model = make_model("llama", len(tok))
    examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(seed_rows(2)), tok, 256)
    for nll_on, cols in (("target", [2]), ("both", [0, 2])):
        trainer = CLOTrainer(model, _config(tmp_path, lam=1.0, nll_on=nll_on), examples, processing_class=tok)
        loss, batch = _loss_on_first_batch(trainer)
        padded = _padded(trainer, batch)
        with torch.no_grad():
            logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        logps, counts = sequence_logps(logits, padded["labels"])
        rows = [4 * s + c for s in range(batch["seed_index"].numel()) for c in cols]
        expected = -logps[rows].sum() / counts[rows].sum()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5), nll_on


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma3"])
def test_lm_head_runs_on_response_positions_only_and_log_probs_are_unchanged(tmp_path, tok, arch):
    model = make_model(arch, len(tok))
    examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(seed_rows(2)), tok, 256)
    trainer = CLOTrainer(model, _config(tmp_path, lam=1.0, nll_on="both"), examples, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    padded = _padded(trainer, batch)
    with torch.no_grad():
        full = sequence_logps(
            model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits, padded["labels"]
        )[0]
    # reference pass (run in __init__) and policy pass both took the packed path
    ref = torch.tensor([trainer.train_dataset[int(i)]["ref_logps"] for i in batch["seed_index"]]).view(-1)
    assert torch.allclose(ref, full, atol=1e-4)
    head_inputs = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: head_inputs.append(args[0].shape))
    loss = trainer.compute_loss(model, batch)
    hook.remove()
    keep = response_positions(batch["labels"])
    assert head_inputs == [torch.Size([int(keep.sum()), model.config.hidden_size])]
    assert keep.sum() < keep.numel()  # prompts and padding were skipped
    chosen = [4 * s + c for s in range(batch["seed_index"].numel()) for c in (0, 2)]
    counts = (padded["labels"][:, 1:] != -100).sum(-1)
    assert loss.item() == pytest.approx((-full[chosen].sum() / counts[chosen].sum()).item(), rel=1e-5)


def test_a_model_without_logits_to_keep_gets_full_logits(tmp_path, tok):
    model = make_model("llama", len(tok))
    examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(seed_rows(2)), tok, 256)
    trainer = CLOTrainer(model, _config(tmp_path, padding_free=True), examples, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))

    class OldStyle(torch.nn.Module):  # custom code that predates the argument
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache
            )

    assert "segment_ids" in batch  # the packed batch: full logits are split per sequence too
    with torch.no_grad():
        (kept, _), _ = trainer._response_logps(model, batch)
        (fallback, _), out = trainer._response_logps(OldStyle(model), batch)
        (padded, _), _ = trainer._response_logps(OldStyle(model), _padded(trainer, batch))
    assert out.logits.ndim == 3 and torch.allclose(kept, fallback, atol=1e-4)
    assert torch.allclose(padded, fallback, atol=1e-4)
    assert trainer._logits_to_keep_works is False


def test_reference_pass_batches_single_sequences_and_equals_per_seed_batching(tmp_path, tok):
    model = make_model("llama", len(tok))
    rows = seed_rows(4)
    rows[1]["response_tgt"] = "El mar és blau i ample. " * 3  # a long target side: its seed's rows differ in length
    examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(rows), tok, 256)
    shapes = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    trainer = CLOTrainer(model, _config(tmp_path, precompute_ref_batch_size=1), examples, processing_class=tok)
    hook.remove()
    lengths = sorted((len(ids) for ex in examples for ids in ex["input_ids"]), reverse=True)
    # 16 sequences, 4 per batch (one seed's worth), longest first: each batch as wide as its longest sequence
    assert shapes == [(4, lengths[k]) for k in range(0, 16, 4)]
    assert trainer.reference_seeds_computed == 4
    expected = []
    with torch.no_grad():
        for ex in examples:  # per-seed batching: the seed's own four sequences padded together
            b = CLOCollator(tok.pad_token_id)([ex])
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            expected.append(sequence_logps(logits, b["labels"])[0])
    torch.testing.assert_close(
        torch.tensor(trainer.train_dataset["ref_logps"]), torch.stack(expected), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma3"])
def test_padding_free_batch_gives_the_padded_batchs_loss_log_probs_and_gradients(tmp_path, tok, arch, attn):
    """A sliding window shorter than the sequences but longer than their prompts (mistral, gemma3) runs the
    sliding-window masks too, on windows that would reach into the previous sequence."""
    model = make_model(arch, len(tok), **({"sliding_window": 24} if arch in ("mistral", "gemma3") else {}))
    model.config._attn_implementation = attn
    rows = seed_rows(4)
    rows[1]["response_tgt"] = "El mar és blau i ample. " * 3
    examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(rows), tok, 256)
    generator = torch.Generator().manual_seed(0)
    examples = [{**ex, "ref_logps": (-30 * torch.rand(4, generator=generator)).tolist()} for ex in examples]
    trainer = CLOTrainer(model, _config(tmp_path, lam=0.5, padding_free=True), examples, processing_class=tok)
    assert trainer.padding_free
    features = [trainer.train_dataset[i] for i in range(4)]
    packed, padded = trainer.data_collator(features), CLOCollator(trainer.pad_token_id)(features)
    lengths = [len(ids) for f in features for ids in f["input_ids"]]
    assert packed["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in packed
    assert int(padded["attention_mask"].sum()) == sum(lengths) < padded["input_ids"].numel()
    results = []
    for batch in (packed, padded):
        results.append(_step_outputs(trainer, model, batch))
    (logps, counts, loss, grads), (logps_pad, counts_pad, loss_pad, grads_pad) = results
    assert torch.equal(counts, counts_pad) and logps.shape == (16,)
    torch.testing.assert_close(logps, logps_pad, rtol=1e-5, atol=1e-4)
    with torch.no_grad():  # not vacuous: with positions that do not restart, the sequences see each other
        joined = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1]).unsqueeze(0)}
        assert not torch.allclose(trainer._response_logps(model, joined)[0][0], logps, atol=1e-2)
    _assert_same_loss_and_gradients(model, (loss, grads), (loss_pad, grads_pad))


def _step_outputs(trainer, model, batch):
    """(log-probs, counts, loss, {name: grad}) of one CLO step on `batch`, gradients from zero."""
    model.zero_grad()
    with torch.no_grad():
        (logps, counts), _ = trainer._response_logps(model, batch)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logps, counts, loss.detach(), grads


def _assert_same_loss_and_gradients(model, got, expected):
    """(loss, {name: grad}) of one CLO step equal another's, with a gradient for every parameter, not all zero."""
    (loss, grads), (loss_ref, grads_ref) = got, expected
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    assert grads.keys() == grads_ref.keys() and len(grads) == len(list(model.parameters()))
    assert any(g.abs().sum() > 0 for g in grads.values())
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-4, atol=1e-6, msg=name)


def _uneven_examples(tok):
    """Four seeds whose four sequences differ much in length, with given reference log-probs."""
    rows = seed_rows(4)
    rows[1]["response_tgt"] = "El mar és blau i ample. " * 4
    rows[2]["response_en"] = "The sea is blue and wide. " * 2
    examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(rows), tok, 256)
    generator = torch.Generator().manual_seed(0)
    return [{**ex, "ref_logps": (-30 * torch.rand(4, generator=generator)).tolist()} for ex in examples]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_chunked_forward_gives_the_single_forwards_loss_log_probs_and_gradients(tmp_path, tok, arch):
    from clo_utils.batching import length_chunks

    model = make_model(arch, len(tok))
    examples = _uneven_examples(tok)
    trainer = CLOTrainer(model, _config(tmp_path, forward_chunk_padding=0.05), examples, processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    lengths = batch["attention_mask"].sum(-1).tolist()
    chunks = length_chunks(lengths, 0.05)
    shapes = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    results = []
    for padding in (0.05, None):
        trainer.forward_chunk_padding = padding
        results.append(_step_outputs(trainer, model, batch))
    hook.remove()
    # chunked: one forward per chunk, each as wide as its longest row; then one forward of the whole batch
    chunked_shapes = [(len(c), max(lengths[i] for i in c)) for c in chunks]
    assert len(chunks) > 1 and shapes == 2 * chunked_shapes + 2 * [tuple(batch["input_ids"].shape)]
    assert sum(r * w for r, w in chunked_shapes) < batch["input_ids"].numel()
    (logps, counts, loss, grads), (logps_one, counts_one, loss_one, grads_one) = results
    with torch.no_grad():  # each sequence alone, unpadded: the log-probs are in the batch's row order
        alone = torch.stack(
            [
                sequence_logps(model(input_ids=ids[:n].unsqueeze(0)).logits, labels[:n].unsqueeze(0))[0][0]
                for ids, labels, n in zip(batch["input_ids"], batch["labels"], lengths)
            ]
        )
    torch.testing.assert_close(logps, alone, rtol=1e-5, atol=1e-4)
    assert torch.equal(counts, counts_one)
    torch.testing.assert_close(logps, logps_one, rtol=1e-5, atol=1e-4)
    _assert_same_loss_and_gradients(model, (loss, grads), (loss_one, grads_one))


def test_cpu_profile_chunks_clo_forwards_and_trl_configs_take_the_profile_without_it(tmp_path):
    from clo_utils.train import CLOConfig, dpo_config, sft_config, training_profile
    from clo_utils.train_setup import CPU_FORWARD_CHUNK_PADDING

    assert 0 < CPU_FORWARD_CHUNK_PADDING <= 0.1  # within the padding goal of a training batch
    assert training_profile("cpu")["forward_chunk_padding"] == CPU_FORWARD_CHUNK_PADDING
    with mock.patch("clo_utils.precision.local_gpu", return_value=Gpu("A100", 40 * 2**30, bf16=True)):
        assert training_profile("gpu")["forward_chunk_padding"] is None
    cfg = CLOConfig(output_dir=str(tmp_path / "clo"), report_to="none", **training_profile("cpu"))
    assert cfg.forward_chunk_padding == CPU_FORWARD_CHUNK_PADDING
    assert _config(tmp_path).forward_chunk_padding is None  # outside the profile: one forward per batch
    assert "forward_chunk_padding" not in training_profile("cpu", clo=False)
    assert sft_config(str(tmp_path / "sft"), device="cpu").use_cpu  # TRL's configs refuse unknown keys
    assert dpo_config(str(tmp_path / "dpo"), device="cpu").use_cpu


def test_distributed_training_keeps_one_forward_per_batch(tmp_path, tok, caplog, monkeypatch):
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    trainer = CLOTrainer(
        make_model("llama", len(tok)),
        _config(tmp_path, forward_chunk_padding=0.1),
        _uneven_examples(tok),
        processing_class=tok,
    )
    assert trainer.forward_chunk_padding == 0.1
    monkeypatch.setattr(Accelerator, "distributed_type", property(lambda self: DistributedType.MULTI_CPU))
    with caplog.at_level("INFO", logger="clo_utils.train"):
        assert trainer._chunk_padding() is None
    assert "one forward per padded batch under MULTI_CPU" in caplog.text


def test_padding_free_falls_back_to_padded_batches_where_it_is_not_proven(tmp_path, tok, caplog):
    examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(seed_rows(2)), tok, 256)
    examples = [{**ex, "ref_logps": [0.0] * 4} for ex in examples]
    flex = make_model("llama", len(tok))
    flex.config._attn_implementation = "flex_attention"
    for model, why in ((make_model("gpt2", len(tok)), "model type 'gpt2'"), (flex, "'flex_attention'")):
        with caplog.at_level("INFO", logger="clo_utils.train"):
            trainer = CLOTrainer(model, _config(tmp_path, padding_free=True), examples, processing_class=tok)
        assert not trainer.padding_free and why in caplog.text
        assert "attention_mask" in next(iter(trainer.get_train_dataloader()))


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_attention_mode_moves_only_attention_projections(tmp_path, tok):
    model, _ = select_trainable(make_model("qwen2", len(tok)), "attention")
    before = _snapshot(model)
    train_clo(model, tok, build_cross_lingual_pairs(seed_rows(4)), _config(tmp_path))
    for name, p in model.named_parameters():
        if any(f"self_attn.{m}." in name for m in ("q_proj", "k_proj", "v_proj", "o_proj")):
            assert not torch.equal(p, before[name]), f"{name} did not change"
        else:
            assert torch.equal(p, before[name]), f"{name} moved but is frozen"


def test_lora_mode_moves_only_adapters_and_reference_is_the_base(tmp_path, tok):
    model, _ = select_trainable(make_model("mistral", len(tok)), "lora", lora_r=4)
    before = _snapshot(model)
    trainer, summary = train_clo(model, tok, build_cross_lingual_pairs(seed_rows(4)), _config(tmp_path))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)
    # LoRA B starts at zero, so at step 0 policy == reference and the preference loss is log 2.
    assert trainer.state.log_history[0]["cl_loss"] == pytest.approx(math.log(2), abs=1e-4)


def test_second_run_reuses_cached_reference_logps(tmp_path, tok):
    model = make_model("llama", len(tok))
    examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(seed_rows(4)), tok, 256)
    first = CLOTrainer(copy.deepcopy(model), _config(tmp_path), examples, processing_class=tok)
    assert first.reference_forward_batches > 0 and first.reference_cache_path.exists()
    second = CLOTrainer(copy.deepcopy(model), _config(tmp_path), examples, processing_class=tok)
    assert second.reference_forward_batches == 0
    assert second.train_dataset["ref_logps"] == first.train_dataset["ref_logps"]
    with torch.no_grad():  # a different model is a cache miss
        next(model.parameters()).add_(1e-3)
    third = CLOTrainer(model, _config(tmp_path), examples, processing_class=tok)
    assert third.reference_forward_batches > 0


def test_nested_budgets_compute_each_seeds_reference_pass_once(tmp_path, tok):
    model = make_model("llama", len(tok))
    rows = [
        {**r, "prompt_en": f"{r['prompt_en']} {i}", "prompt_tgt": f"{r['prompt_tgt']} {i}"}
        for i, r in enumerate(seed_rows(8))
    ]  # eight distinct seeds (seed_rows repeats four)
    examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(rows), tok, 256)
    small = CLOTrainer(copy.deepcopy(model), _config(tmp_path), examples[:3], processing_class=tok)
    assert small.reference_seeds_computed == 3
    large = CLOTrainer(copy.deepcopy(model), _config(tmp_path), examples, processing_class=tok)
    assert large.reference_seeds_computed == 5  # the 3 of the smaller budget come from the cache
    fresh = CLOTrainer(
        copy.deepcopy(model), _config(tmp_path, ref_cache_dir=str(tmp_path / "empty")), examples, processing_class=tok
    )
    assert fresh.reference_seeds_computed == 8
    # Batches differ (so does padding), hence float noise, nothing more.
    assert torch.allclose(
        torch.tensor(large.train_dataset["ref_logps"]),
        torch.tensor(fresh.train_dataset["ref_logps"]),
        atol=1e-4,
        rtol=0,
    )


def test_loss_falls_when_overfitting_and_runs_reproduce(tmp_path, tok):
    pairs = build_cross_lingual_pairs(seed_rows(2))
    losses = []
    for run in range(2):
        model, _ = select_trainable(make_model("llama", len(tok)), "full")
        trainer, _ = train_clo(model, tok, pairs, _config(tmp_path / str(run), max_steps=20, learning_rate=1e-2))
        losses.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
    assert losses[0] == losses[1]
    assert losses[0][-1] < 0.5 * losses[0][0]


def test_logged_metrics_are_named_like_trl(tmp_path, tok):
    trainer, summary = train_clo(
        make_model("llama", len(tok)), tok, build_cross_lingual_pairs(seed_rows(2)), _config(tmp_path, max_steps=1)
    )
    logged = trainer.state.log_history[0]
    for key in (
        "loss",
        "nll_loss",
        "cl_loss",
        "rewards/margins",
        "rewards_en/chosen",
        "rewards_en/rejected",
        "rewards_en/margins",
        "rewards_en/accuracies",
        "rewards_tgt/margins",
        "rewards_tgt/accuracies",
    ):
        assert key in logged, key
    assert summary["peak_memory_mb"] > 0 and summary["seeds_kept"] == 2


def test_non_finite_loss_stops_before_the_weights_change(tmp_path, tok):
    model, _ = select_trainable(make_model("llama", len(tok)), "attention")
    examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(seed_rows(2)), tok, 256)
    examples[1]["ref_logps"] = [float("nan")] * 4
    examples[0]["ref_logps"] = [float("nan")] * 4
    trainer = CLOTrainer(model, _config(tmp_path), examples, processing_class=tok)
    before = _snapshot(model)
    with pytest.raises(FloatingPointError, match=r"global step 0, seeds \['s"):
        trainer.train()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_bad_config_values_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="beta"):
        _config(tmp_path, beta=0.0)
    with pytest.raises(ValueError, match="lam"):
        _config(tmp_path, lam=2.0)
    with pytest.raises(ValueError, match="nll_on"):
        _config(tmp_path, nll_on="english")
    with pytest.raises(ValueError, match="forward_chunk_padding"):
        _config(tmp_path, forward_chunk_padding=1.5)


def test_lam0_target_triples_equal_trl_dpo_sigmoid_loss(tmp_path, tok):
    """Against another library: CLO with lam = 0 on target-direction triples is DPO's sigmoid loss."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    policy = make_model("llama", len(tok), seed=1)
    reference = make_model("llama", len(tok), seed=2)  # policy != reference, so the loss is not log 2
    pairs = [p for p in build_cross_lingual_pairs(seed_rows(3)) if p["direction"] == "tgt"]
    beta = 0.3

    dpo_args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        beta=beta,
        per_device_train_batch_size=3,
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        max_length=256,
    )
    dpo = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=dpo_args,
        processing_class=tok,
        train_dataset=Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]),
    )
    batch = next(iter(dpo.get_train_dataloader()))
    with torch.no_grad():
        trl_loss = dpo.compute_loss(dpo.model, batch).item()

    def logps(model, pair, side):
        ids, labels = tokenize_prompt_response(tok, pair["prompt"], pair[side])
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]))
        return sequence_logps(out.logits, torch.tensor([labels]))[0]

    from clo_utils.losses import clo_loss

    pc = torch.cat([logps(policy, p, "chosen") for p in pairs])
    pr = torch.cat([logps(policy, p, "rejected") for p in pairs])
    rc = torch.cat([logps(reference, p, "chosen") for p in pairs])
    rr = torch.cat([logps(reference, p, "rejected") for p in pairs])
    ours, _ = clo_loss(pc, pr, rc, rr, torch.tensor(123.0), beta=beta, lam=0.0)
    assert abs(ours.item() - math.log(2)) > 1e-3
    assert ours.item() == pytest.approx(trl_loss, rel=1e-4)


def test_lam0_clo_trainer_compute_loss_equals_trl_dpo_trainer_loss_on_the_same_batch(tmp_path, tok):
    """The kit's DPO stage of SFT+DPO: CLOTrainer.compute_loss with lam = 0, on a collated batch of seeds
    (both directions' triples), equals TRL's DPOTrainer.compute_loss on the same pairs and reference."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    policy = make_model("llama", len(tok), seed=1).eval()
    reference = make_model("llama", len(tok), seed=2).eval()
    pairs = build_cross_lingual_pairs(_distinct_seeds(3))
    beta = 0.3
    examples, _ = tokenize_clo_pairs(pairs, tok, 256)
    for ex in examples:  # the reference's log-probs, as the reference pass would store them
        with torch.no_grad():
            ex["ref_logps"] = [
                sequence_logps(reference(input_ids=torch.tensor([i])).logits, torch.tensor([lab]))[0][0].item()
                for i, lab in zip(ex["input_ids"], ex["labels"])
            ]
    clo = CLOTrainer(
        policy, _config(tmp_path, beta=beta, lam=0.0, per_device_train_batch_size=3), examples, processing_class=tok
    )
    batch = next(iter(clo.get_train_dataloader()))
    assert batch["seed_index"].numel() == 3
    with torch.no_grad():
        ours = clo.compute_loss(policy.eval(), batch).item()

    dpo = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=DPOConfig(
            output_dir=str(tmp_path / "dpo"),
            beta=beta,
            per_device_train_batch_size=len(pairs),
            report_to="none",
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            max_length=256,
        ),
        processing_class=tok,
        train_dataset=Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]),
    )
    with torch.no_grad():
        trl_loss = dpo.compute_loss(policy.eval(), next(iter(dpo.get_train_dataloader()))).item()
    assert abs(ours - math.log(2)) > 1e-3  # policy != reference: not the step-0 value
    assert ours == pytest.approx(trl_loss, rel=1e-4)


@pytest.mark.slow
def test_end_to_end_clo_on_the_embedded_smollm2(tmp_path):
    from clo_utils.models import load_model_and_tokenizer

    torch.set_num_threads(2)
    model, tok = load_model_and_tokenizer("embedded:smollm2-135m-instruct", dtype="float32")
    model, report = select_trainable(model, "attention")
    trainer, summary = train_clo(
        model,
        tok,
        build_cross_lingual_pairs(seed_rows(4)),
        _config(tmp_path, max_steps=2, learning_rate=1e-5, per_device_train_batch_size=2),
    )
    first = trainer.state.log_history[0]
    # SmolLM2 has no dropout: at step 0 policy == reference, so the preference term is exactly log 2.
    assert first["cl_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert math.isfinite(first["loss"]) and summary["steps"] == 2
    assert report["trainable_share"] < 0.25


def test_sft_baseline_uses_trl_completion_only_and_the_same_trainable_subset(tmp_path, tok):
    from clo_utils.data import build_sft_rows
    from clo_utils.train import train_sft

    model, _ = select_trainable(make_model("llama", len(tok)), "attention")
    before = _snapshot(model)
    cfg = _trl_cfg("sft", tmp_path, max_steps=2)
    assert cfg.completion_only_loss and not cfg.bf16 and not cfg.gradient_checkpointing
    trainer, summary = train_sft(model, tok, build_sft_rows(seed_rows(2), "tgt"), cfg)
    assert summary["rows"] == 2
    batch = next(iter(trainer.get_train_dataloader()))
    # completion-only: the prompt's tokens carry no label
    text = tok.decode([t for t, lab in zip(batch["input_ids"][0], batch["labels"][0]) if lab != -100])
    assert "Quina" not in text and "Com" not in text
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved == ("self_attn" in name), name
    # batches of rows of similar length, as CLO's: the sampler reads the rows' token counts
    sampler = trainer._get_train_sampler()
    assert type(sampler).__name__ == "LengthGroupedSampler"
    rows = tokenize_sft_rows(build_sft_rows(seed_rows(2), "tgt"), tok, 256)
    assert sorted(sampler.lengths) == sorted(len(r["input_ids"]) for r in rows)


def test_dpo_baseline_runs_on_the_cross_lingual_pairs(tmp_path, tok):
    from clo_utils.train import train_dpo

    model, _ = select_trainable(make_model("llama", len(tok)), "attention")
    cfg = _trl_cfg("dpo", tmp_path, max_steps=2)
    trainer, summary = train_dpo(model, tok, build_cross_lingual_pairs(seed_rows(2)), cfg)
    assert summary["pairs"] == 4 and summary["steps"] == 2
    assert trainer.state.log_history[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    # batches of pairs of similar length: the `length` column (prompt + longer completion) reaches the sampler
    expected = []
    for pair in build_cross_lingual_pairs(seed_rows(2)):
        expected.append(
            max(len(tokenize_prompt_response(tok, pair["prompt"], pair[side])[0]) for side in ("chosen", "rejected"))
        )
    sampler = trainer._get_train_sampler()
    assert type(sampler).__name__ == "LengthGroupedSampler" and sampler.lengths == expected
    assert "length" in trainer._remove_unused_columns(trainer.train_dataset).column_names


def test_chatml_for_base_models_renders_bos_once_and_only_when_there_is_one():
    from clo_utils.models import CHATML_TEMPLATE

    prompt, response = [{"role": "user", "content": "Hi"}], [{"role": "assistant", "content": "Hello"}]
    tok = make_tokenizer(CHATML_TEMPLATE)
    ids, labels = tokenize_prompt_response(tok, prompt, response)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.eos_token_id in labels  # the model learns to stop
    tok.bos_token = None  # e.g. Qwen2.5 base: no BOS token, nothing rendered in its place
    text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>user")


def _trl_cfg(kind, tmp_path, **overrides):
    from clo_utils.train import dpo_config, sft_config

    make = {"sft": sft_config, "dpo": dpo_config}[kind]
    base = dict(
        max_length=256,
        device="cpu",
        max_steps=1,
        learning_rate=1e-2,
        per_device_train_batch_size=2,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    return make(str(tmp_path / kind), **{**base, **overrides})


def test_sft_dpo_and_clo_responses_end_identically_when_the_turn_end_is_not_eos(tmp_path):
    from clo_utils.data import build_sft_rows
    from clo_utils.train import train_dpo, train_sft

    tok = make_turn_end_tokenizer()
    turn_end, eos = tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id
    assert turn_end != eos
    seeds = seed_rows(1)
    sft, _ = train_sft(make_model("llama", len(tok)), tok, build_sft_rows(seeds, "tgt"), _trl_cfg("sft", tmp_path))
    sft_batch = next(iter(sft.get_train_dataloader()))
    sft_response = [int(t) for t in sft_batch["labels"][0] if t != -100]
    pairs = [p for p in build_cross_lingual_pairs(seeds) if p["direction"] == "tgt"]
    dpo, _ = train_dpo(make_model("llama", len(tok)), tok, pairs, _trl_cfg("dpo", tmp_path))
    dpo_batch = next(iter(dpo.get_train_dataloader()))
    dpo_chosen = [int(t) for t, m in zip(dpo_batch["input_ids"][0], dpo_batch["completion_mask"][0]) if m]
    examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(seeds), tok, 256)
    clo_response = [t for t in examples[0]["labels"][2] if t != -100]  # tgt chosen
    assert sft_response == dpo_chosen == clo_response
    assert tok.decode(clo_response[:-3]) == seeds[0]["response_tgt"]
    assert clo_response[-3:] == [turn_end, tok.convert_tokens_to_ids("Ċ"), eos]


def test_an_overfit_sft_model_stops_at_the_turn_end(tmp_path):
    from clo_utils.data import build_sft_rows
    from clo_utils.evaluation.evaluate import generate_answers
    from clo_utils.models import end_of_turn_token_ids
    from clo_utils.train import train_sft

    tok = make_turn_end_tokenizer()
    model = make_model("llama", len(tok))
    model.config.eos_token_id = model.generation_config.eos_token_id = tok.eos_token_id  # a base model's config
    assert tok.convert_tokens_to_ids("<|im_end|>") in end_of_turn_token_ids(tok, model)
    seed = seed_rows(3)[2]
    train_sft(
        model,
        tok,
        build_sft_rows([seed], "tgt"),
        _trl_cfg("sft", tmp_path, max_steps=40, per_device_train_batch_size=1, lr_scheduler_type="constant"),
    )
    out = generate_answers(model, tok, [seed["prompt_tgt"]], max_new_tokens=40, progress=False)
    assert out == [seed["response_tgt"]]


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_bf16_weights_learn_at_the_paper_lr_and_track_fp32(tmp_path, tok):
    """The GPU profile's dtype (bf16 weights, bf16 autocast) at lr 8e-6: the trainable weights move
    (fp32 master copies) and the loss stays within 2% of an fp32 run from the same weights."""
    pairs = build_cross_lingual_pairs(seed_rows(4))
    bf16_model, _ = select_trainable(make_model("llama", len(tok), dtype=torch.bfloat16), "attention")
    fp32_model, _ = select_trainable(copy.deepcopy(bf16_model).float(), "attention")
    frozen = {n: p.detach().clone() for n, p in bf16_model.named_parameters() if not p.requires_grad}
    start = {n: p.detach().float().clone() for n, p in bf16_model.named_parameters() if p.requires_grad}
    common = dict(max_steps=4, learning_rate=8e-6, lr_scheduler_type="constant")
    bf16_trainer, bf16_summary = train_clo(bf16_model, tok, pairs, _config(tmp_path / "bf16", bf16=True, **common))
    fp32_trainer, fp32_summary = train_clo(fp32_model, tok, pairs, _config(tmp_path / "fp32", **common))
    assert bf16_summary["trainable_changed_fraction"] > 0.9 and fp32_summary["trainable_changed_fraction"] > 0.9
    bf16_record, fp32_record = bf16_summary["precision"], fp32_summary["precision"]  # train.json's precision block
    assert (bf16_record["mode"], bf16_record["trainable_dtype"], bf16_record["frozen_dtype"]) == (
        "bf16",
        ["float32"],
        ["bfloat16"],
    )
    assert bf16_record["reason"].startswith("set by the training arguments (the rule says fp32")  # bf16 on a CPU
    assert (fp32_record["mode"], fp32_record["autocast"], fp32_record["loss_scaling"]) == ("fp32", None, False)
    moved = [n for n, p in bf16_model.named_parameters() if p.requires_grad and not torch.equal(p.float(), start[n])]
    assert sorted(moved) == sorted(start)
    # what a bf16 evaluation of the saved fp32 masters sees move: start and end both rounded to bf16
    trained = {n: p.detach() for n, p in bf16_model.named_parameters() if p.requires_grad}
    visible = sum(int((trained[n].bfloat16() != start[n].bfloat16()).sum()) for n in start)
    share = visible / sum(t.numel() for t in start.values())
    assert bf16_summary["trainable_changed_fraction_bf16"] == pytest.approx(share, abs=1e-12)
    assert 0 < share < bf16_summary["trainable_changed_fraction"]  # some updates are below a bf16 step
    print(f"lr 8e-6, 4 steps: changed {bf16_summary['trainable_changed_fraction']:.4f}, in bf16 {share:.4f}")
    assert all(p.dtype == torch.float32 for p in bf16_model.parameters() if p.requires_grad)
    for n, p in bf16_model.named_parameters():  # frozen weights stay bf16 and untouched
        if not p.requires_grad:
            assert p.dtype == torch.bfloat16 and torch.equal(p, frozen[n]), n
    assert _losses(bf16_trainer) == pytest.approx(_losses(fp32_trainer), rel=2e-2)


def test_bf16_weights_without_mixed_precision_are_a_clear_error(tmp_path, tok):
    model, _ = select_trainable(make_model("llama", len(tok), dtype=torch.bfloat16), "attention")
    with pytest.raises(ValueError, match="half precision.*training_profile"):
        train_clo(model, tok, build_cross_lingual_pairs(seed_rows(2)), _config(tmp_path))


def test_weights_that_never_move_are_reported_and_warned_about(tmp_path, tok, caplog):
    model, _ = select_trainable(make_model("llama", len(tok)), "attention")
    _, summary = train_clo(model, tok, build_cross_lingual_pairs(seed_rows(2)), _config(tmp_path, learning_rate=0.0))
    assert summary["trainable_changed_fraction"] == 0.0
    assert "barely learn" in caplog.text


@pytest.mark.parametrize("bf16", [False, True])
def test_step0_policy_equals_reference_under_each_profile(tmp_path, tok, bf16):
    """fp32 weights: the CPU profile (no autocast) and bf16 autocast (the GPU profile's compute)."""
    model, _ = select_trainable(make_model("llama", len(tok)), "attention")
    trainer, _ = train_clo(
        model,
        tok,
        build_cross_lingual_pairs(seed_rows(2)),
        _config(tmp_path, bf16=bf16, max_steps=1, per_device_train_batch_size=2),
    )
    first = trainer.state.log_history[0]
    # Same weights, tokens and compute dtype: equal up to batch-composition float noise, which is far
    # below the bf16-vs-fp32 gap of a reference computed outside autocast (about 1e-4 here).
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(first[key]) < 1e-6, (key, first[key])
    assert first["cl_loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_reference_cache_key_covers_autocast_and_attention_implementation(tmp_path, tok):
    examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(seed_rows(2)), tok, 256)
    model = make_model("llama", len(tok))
    first = CLOTrainer(copy.deepcopy(model), _config(tmp_path), examples, processing_class=tok)
    assert first.reference_forward_batches > 0
    cached = CLOTrainer(copy.deepcopy(model), _config(tmp_path), examples, processing_class=tok)
    assert cached.reference_forward_batches == 0
    autocast = CLOTrainer(copy.deepcopy(model), _config(tmp_path, bf16=True), examples, processing_class=tok)
    assert autocast.reference_forward_batches > 0
    assert "mixed_precision=bf16" in autocast.reference_conditions() and "device=cpu" in first.reference_conditions()
    sdpa = copy.deepcopy(model)
    sdpa.config._attn_implementation = "sdpa"
    assert CLOTrainer(sdpa, _config(tmp_path), examples, processing_class=tok).reference_forward_batches > 0


def test_dropout_is_disabled_so_step0_policy_equals_reference(tmp_path, tok):
    model, _ = select_trainable(make_model("llama", len(tok), attention_dropout=0.5), "attention")
    trainer, _ = train_clo(model, tok, build_cross_lingual_pairs(seed_rows(2)), _config(tmp_path, max_steps=1))
    assert trainer.state.log_history[0]["cl_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert all(m.attention_dropout == 0.0 for m in model.modules() if hasattr(m, "attention_dropout"))


def _one_sgd_step(tmp_path, tok, rows, batch, ga, lam, **overrides):
    model, _ = select_trainable(make_model("llama", len(tok)), "attention")
    cfg = _config(
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=ga,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        lam=lam,
        max_grad_norm=0.0,
        **overrides,
    )
    trainer, _ = train_clo(model, tok, build_cross_lingual_pairs(rows), cfg)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, trainer


def _assert_same_step(weights, trainer, other_weights, other_trainer):
    """Two one-step runs ended with the same trainable weights and logged the same losses."""
    for name in other_weights:
        assert torch.allclose(weights[name], other_weights[name], atol=1e-6, rtol=1e-4), name
    for key in ("loss", "nll_loss", "cl_loss"):
        logged, other_logged = trainer.state.log_history[0][key], other_trainer.state.log_history[0][key]
        assert logged == pytest.approx(other_logged, rel=1e-5), key


@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_target_nll_is_the_token_mean_over_the_accumulated_batch(tmp_path, tok, lam):
    """1 process x GA 2 x 1 seed == 1 process x GA 1 x 2 seeds, with target responses of very
    different lengths (a mean of per-micro-batch means would weigh the short one's tokens more)."""
    rows = seed_rows(2)
    rows[1]["response_tgt"] = "El mar és blau i ample. " * 4
    accumulated, acc_trainer = _one_sgd_step(tmp_path / "ga2", tok, rows, batch=1, ga=2, lam=lam)
    doubled, dbl_trainer = _one_sgd_step(tmp_path / "ga1", tok, rows, batch=2, ga=1, lam=lam)
    _assert_same_step(accumulated, acc_trainer, doubled, dbl_trainer)


def test_a_packed_training_step_with_accumulation_equals_a_padded_one(tmp_path, tok):
    rows = seed_rows(2)
    rows[1]["response_tgt"] = "El mar és blau i ample. " * 4
    packed, packed_trainer = _one_sgd_step(tmp_path / "packed", tok, rows, batch=1, ga=2, lam=0.5, padding_free=True)
    padded, padded_trainer = _one_sgd_step(tmp_path / "padded", tok, rows, batch=1, ga=2, lam=0.5, padding_free=False)
    assert packed_trainer.padding_free and not padded_trainer.padding_free
    _assert_same_step(packed, packed_trainer, padded, padded_trainer)


def test_a_chunked_training_step_with_accumulation_equals_a_single_forward_one(tmp_path, tok):
    rows = seed_rows(4)
    rows[1]["response_tgt"] = "El mar és blau i ample. " * 4
    rows[2]["response_en"] = "The sea is blue and wide. " * 2
    chunked, chunked_trainer = _one_sgd_step(
        tmp_path / "chunked", tok, rows, batch=2, ga=2, lam=0.5, forward_chunk_padding=0.0
    )
    single, single_trainer = _one_sgd_step(tmp_path / "single", tok, rows, batch=2, ga=2, lam=0.5)
    assert chunked_trainer.forward_chunk_padding == 0.0 and single_trainer.forward_chunk_padding is None
    _assert_same_step(chunked, chunked_trainer, single, single_trainer)


def test_sft_dpo_under_fsdp_takes_the_sft_model_as_reference(tmp_path, tok, monkeypatch):
    """Under FSDP TRL would reload the config's _name_or_path (the base); train_dpo passes the model
    it is given (the SFT model) instead. FSDP itself needs several devices: the switch is forced."""
    import clo_utils.baselines as baselines
    from clo_utils.train import train_dpo

    monkeypatch.setattr(baselines, "_fsdp_enabled", lambda config: True)
    sft_model, _ = select_trainable(make_model("llama", len(tok), seed=3), "attention")
    sft_model.config._name_or_path = str(tmp_path / "the-base-model-that-must-not-be-loaded")
    pairs = build_cross_lingual_pairs(seed_rows(2))
    expected = torch.stack([_logps(sft_model, tok, p, "chosen") for p in pairs]).squeeze(-1)
    trainer, _ = train_dpo(sft_model, tok, pairs, _trl_cfg("dpo", tmp_path, per_device_train_batch_size=4))
    assert trainer.ref_model is None  # released once the reference log-probs are computed
    got = torch.tensor(trainer.train_dataset["ref_chosen_logps"])
    assert torch.allclose(got, expected, atol=1e-4)
    with pytest.raises(ValueError, match="precompute_ref_log_probs"):
        train_dpo(sft_model, tok, pairs, _trl_cfg("dpo", tmp_path, precompute_ref_log_probs=False))


def _logps(model, tok, pair, side):
    ids, labels = tokenize_prompt_response(tok, pair["prompt"], pair[side])
    with torch.no_grad():
        return sequence_logps(model(input_ids=torch.tensor([ids])).logits, torch.tensor([labels]))[0]


def test_resume_passes_over_a_checkpoint_cut_short_by_a_kill(tmp_path):
    from transformers import TrainingArguments

    from clo_utils.train_setup import resume_checkpoint

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert resume_checkpoint(args) is None
    for step, complete in ((5, True), (10, True), (15, False)):  # 15: weights written, the kill came before the state
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"")
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert resume_checkpoint(args) == str(tmp_path / "checkpoint-10")
