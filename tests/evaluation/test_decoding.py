"""clo_utils.evaluation.decoding and .continuous: greedy decoding in one continuously refilled batch (full-attention
models) or the shrinking loop (Gemma-3's sliding-window layers) gives transformers' generate's tokens, token for
token, on tiny models of the real architectures, and counts the positions it computes."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from clo_utils.evaluation import continuous, decoding, packed_linear
from clo_utils.evaluation.decoding import DecodeStats, greedy_answers
from clo_utils.evaluation.generation import _generate_batch, generate_answers
from tests.tiny_models import make_model, make_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Prompts of 3 to 29 tokens: several prefill chunks, rows that stop at different steps.
PROMPT_LENGTHS = [3, 29, 5, 17, 9, 28, 4, 12, 21, 6]


def _model(arch: str, **overrides):
    tok = make_tokenizer()
    # initializer_range 0.3: peaked logits, so greedy answers vary from token to token
    model = make_model(arch, vocab_size=len(tok), **{"initializer_range": 0.3, **overrides}).eval()
    return model, tok


def _prompts(vocab: int, lengths=PROMPT_LENGTHS, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, vocab, (n,), generator=g).tolist() for n in lengths]


def _reference(model, tok, prompts, eos, max_new_tokens) -> list[list[int]]:
    """transformers' generate on the whole batch, left-padded (the earlier path), cut before each EOS."""
    config = _config(tok, eos, max_new_tokens)
    saved, tok.padding_side = tok.padding_side, "left"
    try:
        with torch.inference_mode():
            return _generate_batch(model, tok, prompts, config, eos, None)
    finally:
        tok.padding_side = saved


def _frequent_tokens(model, tok, prompts, max_new_tokens, n=2) -> list[int]:
    """Tokens the model emits mid-answer, first at different steps in different rows: declared EOS, the
    rows stop apart."""
    free = _reference(model, tok, prompts, [tok.pad_token_id], max_new_tokens)
    first: dict[int, set[int]] = {}
    for row in free:
        for step, token in enumerate(row):
            if step and token not in row[:step]:
                first.setdefault(token, set()).add(step)
    return sorted(first, key=lambda t: (-len(first[t]), t))[:n]


@pytest.mark.parametrize(
    "arch, overrides, continuous_batch",
    [
        ("llama", {}, True),
        ("llama", {"attn_implementation": "sdpa"}, True),
        ("qwen2", {}, True),
        # the window holds every prompt: the shrinking loop joins its chunks
        ("gemma3", {"sliding_window": 64, "initializer_range": 0.02}, False),
        # prompts and answers pass the window: the shrinking loop decodes its chunks apart
        ("gemma3", {"sliding_window": 16, "initializer_range": 0.02}, False),
    ],
)
def test_greedy_answers_equal_generate_token_for_token(arch, overrides, continuous_batch, monkeypatch):
    overrides = dict(overrides)
    attention = overrides.pop("attn_implementation", None)
    model, tok = _model(arch, **overrides)
    if attention:
        model.set_attn_implementation(attention)
    assert continuous.supported(model) is continuous_batch  # sliding-window layers take the shrinking loop
    prompts = _prompts(len(tok))
    eos = _frequent_tokens(model, tok, prompts, 12)
    expected = _reference(model, tok, prompts, eos, 12)
    lengths = {len(a) for a in expected}
    assert len(lengths) > 2 and 12 in lengths and min(lengths) < 12  # rows stop at different steps, some run out
    joins = []
    join = decoding._join_caches
    monkeypatch.setattr(decoding, "_join_caches", lambda *a: joins.append(1) or join(*a))
    stats = DecodeStats()
    got = greedy_answers(model, prompts, eos, tok.pad_token_id, 12, stats=stats)
    assert got == expected
    window = overrides.get("sliding_window")
    assert joins == ([] if continuous_batch or window <= max(PROMPT_LENGTHS) else [1])
    # each prompt alone (no neighbours, no padding) gives the same tokens too
    assert [greedy_answers(model, [p], eos, tok.pad_token_id, 12)[0] for p in prompts[:3]] == expected[:3]
    # a decode batch of 3 rows, refilled as rows finish (with 1 row: one prompt after the other, the cache
    # widened for the longer prompts that come later), gives them as well
    for rows in (3, 1):
        assert greedy_answers(model, prompts, eos, tok.pad_token_id, 12, max_rows=rows) == expected


def _decode_forwards(model) -> list[int]:
    """Rows of each decode forward (one new token per row) the model runs from now on."""
    rows: list[int] = []
    model.register_forward_pre_hook(
        lambda _, args, kwargs: rows.append(len(kwargs["input_ids"])) if kwargs["input_ids"].shape[1] == 1 else None,
        with_kwargs=True,
    )
    return rows


def test_continuous_batching_decodes_every_row_in_one_batch_and_refills_it(monkeypatch):
    model, tok = _model("llama")
    prompts = _prompts(len(tok), lengths=PROMPT_LENGTHS * 3, seed=2)
    eos = _frequent_tokens(model, tok, prompts, 10)
    expected = _reference(model, tok, prompts, eos, 10)
    steps = [min(len(a) + 1, 10) for a in expected]  # tokens generated per row, EOS included
    forwards = _decode_forwards(model)
    stats = DecodeStats()
    assert greedy_answers(model, prompts, eos, tok.pad_token_id, 10, stats=stats) == expected
    # one batch: as many decode steps as the longest answer needs, each over the rows still running
    assert forwards == [sum(n > step for n in steps) for step in range(1, max(steps))]
    assert stats.computed - sum(forwards) == sum(
        len(c) * max(len(prompts[i]) for i in c)
        for c in decoding.length_chunks([len(p) for p in prompts], decoding.PREFILL_MAX_PADDING)
    )
    # 8 rows refilled as answers finish: every row still decoded once per fed token, in fewer steps than
    # decoding the same prompts 8 at a time
    forwards.clear()
    assert greedy_answers(model, prompts, eos, tok.pad_token_id, 10, max_rows=8) == expected
    assert max(forwards) <= 8 and sum(forwards) == sum(n - 1 for n in steps)
    batchwise = sum(max(steps[i : i + 8]) - 1 for i in range(0, len(prompts), 8))
    assert len(forwards) < batchwise
    # prefill forwards cut to 40 padded positions: the same answers, each piece padded to its own longest row
    shapes: list[tuple[int, int]] = []
    model.register_forward_pre_hook(lambda _, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    monkeypatch.setattr(continuous, "PREFILL_POSITIONS_CPU", 40)
    stats = DecodeStats()
    assert greedy_answers(model, prompts, eos, tok.pad_token_id, 10, stats=stats) == expected
    prefill = [rows * width for rows, width in shapes if width > 1]
    assert max(prefill) <= 40 and len(prefill) > 2 * len(decoding.length_chunks([len(p) for p in prompts], 0.1))
    assert stats.computed == sum(prefill) + sum(n - 1 for n in steps)


def test_the_shrinking_loop_computes_fewer_positions_and_counts_them():
    model, tok = _model("llama")
    prompts = _prompts(len(tok))
    eos = _frequent_tokens(model, tok, prompts, 10)
    old, new = DecodeStats(), DecodeStats()
    saved, tok.padding_side = tok.padding_side, "left"
    with torch.inference_mode():
        _generate_batch(model, tok, prompts, _config(tok, eos, 10), eos, old)
    tok.padding_side = saved
    answers = greedy_answers(model, prompts, eos, tok.pad_token_id, 10, stats=new)
    assert sorted(new.rows) == sorted(old.rows) and new.real == old.real  # the same tokens, the same real positions
    steps = [n for _, n in new.rows]
    # EOS counted, max_new_tokens caps
    assert sorted(new.rows) == sorted((len(p), min(len(a) + 1, 10)) for p, a in zip(prompts, answers))
    # prefill: chunks of <= 10% padding, each row x width; decode: one position per row per fed token
    chunks = decoding.length_chunks(PROMPT_LENGTHS, decoding.PREFILL_MAX_PADDING)
    prefill = sum(len(c) * max(PROMPT_LENGTHS[i] for i in c) for c in chunks)
    assert new.computed == prefill + sum(n - 1 for n in steps)
    assert new.padding_share <= decoding.PREFILL_MAX_PADDING < old.padding_share


def _config(tok, eos, max_new_tokens):
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=eos
    )


def test_generate_answers_gives_the_same_text_on_both_paths_and_the_same_linear_path_shares_the_cache(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("CLO_CACHE_DIR", str(tmp_path / "kit-cache"))
    model, tok = _model("llama")
    words = ["Hola", "What is the capital of France?", "Escriu un poema curt sobre el mar. El mar és blau i ample."]
    prompts = [" ".join(words[: 1 + i % 3]) * (1 + i % 4) for i in range(9)]
    model.generation_config.eos_token_id = _frequent_tokens(
        model, tok, [tok(p)["input_ids"] for p in prompts], 10, n=1
    )
    kwargs = dict(max_new_tokens=10, batch_size=4, progress=False)
    old = generate_answers(model, tok, prompts, shrinking=False, **kwargs)
    new = generate_answers(model, tok, prompts, **kwargs)
    assert new == old and len(set(new)) > 3
    from clo_utils.evaluation.generation import open_generation_cache

    with open_generation_cache(tmp_path, model) as cache:
        generate_answers(model, tok, prompts, shrinking=False, cache=cache, **kwargs)
        assert (cache.hits, cache.misses) == (0, 3)
    # On a CPU the loop's linear layers run packed (clo_utils.evaluation.packed_linear): keyed apart from generate's
    monkeypatch.setattr(packed_linear, "_ops_available", lambda: False)
    with open_generation_cache(tmp_path, model) as cache:  # the same arithmetic path: generate's entries serve
        assert generate_answers(model, tok, prompts, cache=cache, **kwargs) == old
        assert (cache.hits, cache.misses) == (3, 0)


def test_bad_arguments_are_named():
    model, tok = _model("llama")
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_answers(model, [[5, 6]], [3], 0, 0)
    with pytest.raises(ValueError, match="at least one token"):
        greedy_answers(model, [[5, 6], []], [3], 0, 4)
