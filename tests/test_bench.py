"""The benchmark runs (README: `make bench`) and measures what it says: translation calls, FLOP counts,
padding, a run folder's stage breakdown; and the length-grouped batches CLO trains on."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.end_to_end import breakdown, cell_category  # noqa: E402
from benchmarks.mfu import FlopCosts, flop_costs  # noqa: E402
from benchmarks.padding import counts_of, mask_counts, share  # noqa: E402
from clo_utils.batching import (  # noqa: E402
    LengthGroupedSeedSampler,
    length_chunks,
    length_grouped_batches,
    seed_lengths,
)


def test_translation_section_counts_backend_calls_and_decoder_positions(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench.py"),
            str(out),
            "--only",
            "translate",
            "--translate-texts",
            "4",
            "--m2m100-batch",
            "4",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())
    ratios = results["ratios"]
    assert ratios["translate_warm_cache_calls"]["value"] == 0  # a warm cache never calls a backend
    for name in ("m2m100", "m2m100_greedy"):
        runs = results["sections"]["translation"][name]
        assert runs["one_per_call"]["backend_calls"] == 4 and runs["batched"]["backend_calls"] == 1
        assert runs["warm_cache"]["same_output"] and runs["warm_cache"]["cached"] == 4
        # a random model runs every row to the cap: one batch computes at least what 4 calls do
        assert runs["batched"]["decoder_tokens"] >= runs["one_per_call"]["decoder_tokens"] > 0
        assert ratios[f"translate_{name}_speedup"]["value"] > 0
    assert "USDT" not in proc.stdout + proc.stderr  # profiler chatter stays out of the table


# --------------------------------------------------------------------------- length-grouped batches


def _lengths(n=203, seed=1):
    rng = random.Random(seed)
    return [rng.randint(20, 400) for _ in range(n)]


def test_grouped_batches_cover_every_seed_once_and_are_reproducible():
    lengths = _lengths()
    batches = length_grouped_batches(lengths, batch_size=4, seed=7)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [len(b) for b in batches[:-1]] == [4] * (len(batches) - 1) and len(batches[-1]) == 203 % 4
    assert length_grouped_batches(lengths, 4, seed=7) == batches
    assert length_grouped_batches(lengths, 4, seed=8) != batches


def test_grouped_batches_waste_less_than_random_ones():
    lengths = _lengths()
    items = [[n] for n in lengths]
    grouped = share(*counts_of(items, length_grouped_batches(lengths, 4, seed=0)))
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = share(*counts_of(items, [order[i : i + 4] for i in range(0, len(order), 4)]))
    assert grouped < 0.05 < shuffled


def test_sampler_yields_the_batches_a_dataloader_cuts_back_out_and_changes_each_epoch():
    lengths = _lengths(50)
    sampler = LengthGroupedSeedSampler(lengths, batch_size=4, seed=3)
    loader = torch.utils.data.DataLoader(list(range(50)), batch_size=4, sampler=sampler)
    assert [b.tolist() for b in loader] == sampler.batches()
    first = list(sampler)
    sampler.set_epoch(1)
    assert sorted(sampler) == sorted(first) and list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first  # a resumed run sees the same order


def test_seed_lengths_is_the_longest_of_the_four_sequences():
    assert seed_lengths([[[1] * 3, [1] * 5, [1] * 2, [1]], [[1]] * 4]) == [5, 1]


def _chunk_share(lengths, chunk):
    width = max(lengths[i] for i in chunk)
    return 1 - sum(lengths[i] for i in chunk) / (len(chunk) * width)


@pytest.mark.parametrize("max_padding", [0.0, 0.05, 0.1, 0.3, 1.0])
def test_length_chunks_cover_every_row_once_within_the_padding_bound(max_padding):
    rng = random.Random(int(max_padding * 100))
    for n_rows in (1, 2, 7, 16, 33):
        lengths = [rng.choice([rng.randint(20, 60), rng.randint(100, 400)]) for _ in range(n_rows)]
        chunks = length_chunks(lengths, max_padding)
        flat = [i for c in chunks for i in c]
        assert sorted(flat) == list(range(n_rows))  # every row exactly once
        assert flat == sorted(range(n_rows), key=lambda i: (-lengths[i], i))  # contiguous, longest first
        for chunk, following in zip(chunks, chunks[1:] + [None]):
            assert _chunk_share(lengths, chunk) <= max_padding + 1e-12
            if following:  # greedy: the next row would have broken the bound
                assert _chunk_share(lengths, chunk + following[:1]) > max_padding
        computed = sum(len(c) * max(lengths[i] for i in c) for c in chunks)
        assert 1 - sum(lengths) / computed <= max_padding + 1e-12  # so does the whole batch
        assert length_chunks(lengths, max_padding) == chunks
    assert len(length_chunks([5, 9, 7, 3], 1.0)) == 1
    assert length_chunks([4, 6, 4, 6, 5], 0.0) == [[1, 3], [4], [0, 2]]


def test_padding_counts_the_positions_of_each_chunk_at_its_own_width():
    lengths = [10, 4, 9, 3]
    mask = torch.tensor([[1] * n + [0] * (10 - n) for n in lengths])
    batch = {"input_ids": torch.zeros_like(mask), "attention_mask": mask}
    assert mask_counts([batch]) == (40, 26)  # one forward: 4 rows x 10
    assert mask_counts([batch], chunk_padding=0.2) == (2 * 10 + 2 * 4, 26)  # chunks [10, 9] and [4, 3]
    assert mask_counts([batch], chunk_padding=0.1) == (2 * 10 + 4 + 3, 26)  # [4, 3] holds 1/8 padding
    packed = {"input_ids": torch.zeros(1, 26)}
    assert mask_counts([packed], chunk_padding=0.1) == (26, 26)


def test_length_chunks_refuse_a_bound_outside_0_1_and_empty_rows():
    with pytest.raises(ValueError, match="max_padding must be in"):
        length_chunks([3, 4], 1.5)
    with pytest.raises(ValueError, match="row length must be >= 1"):
        length_chunks([3, 0], 0.1)


def _tiny_clo_trainer(tmp_path, n_seeds=8, **overrides):
    from tiny_models import clo_config, make_model, make_tokenizer, seed_rows

    from clo_utils.data import build_cross_lingual_pairs
    from clo_utils.models import select_trainable
    from clo_utils.train import CLOTrainer, tokenize_clo_pairs

    tok = make_tokenizer()
    model, _ = select_trainable(make_model("llama"), "attention")
    rows = seed_rows(n_seeds)
    for i, row in enumerate(rows):  # lengths that differ from seed to seed
        row["response_tgt"] = row["response_tgt"] + " més" * (i * 3)
        row["response_en"] = row["response_en"] + " more" * (i * 3)
    examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(rows), tok, 512)
    return CLOTrainer(model, clo_config(tmp_path, **overrides), examples, processing_class=tok)


def test_clo_trainer_groups_seeds_by_length_by_default_and_keeps_each_seed_whole(tmp_path):
    trainer = _tiny_clo_trainer(tmp_path, padding_free=False)  # padded: the grouping is what saves positions
    assert trainer.args.train_sampling_strategy == "group_by_length"
    batches = list(trainer.get_train_dataloader())
    seen = [int(i) for b in batches for i in b["seed_index"]]
    assert sorted(seen) == list(range(8))  # every seed once per epoch
    for b in batches:  # four rows (both triples) per seed, every one in this batch
        assert b["input_ids"].shape[0] == 4 * len(b["seed_index"])
    again = [b["seed_index"].tolist() for b in _tiny_clo_trainer(tmp_path, padding_free=False).get_train_dataloader()]
    assert again == [b["seed_index"].tolist() for b in batches]  # reproducible from the seed
    packed = list(_tiny_clo_trainer(tmp_path, padding_free=True).get_train_dataloader())  # the same seeds, packed
    assert [b["seed_index"].tolist() for b in packed] == again
    for b in packed:  # one row, no padding, the seeds' four sequences each
        assert b["input_ids"].shape[0] == 1 and int(b["segment_ids"].max()) + 1 == 4 * len(b["seed_index"])
    width = sum(b["input_ids"].numel() for b in batches)
    trainer.args.train_sampling_strategy = "random"
    assert isinstance(trainer._get_train_sampler(), torch.utils.data.RandomSampler)
    assert width <= sum(b["input_ids"].numel() for b in trainer.get_train_dataloader())


def test_loss_and_log_probs_do_not_depend_on_the_batch_a_seed_lands_in(tmp_path):
    trainer = _tiny_clo_trainer(tmp_path)
    model = trainer.model
    model.eval()

    def logps(batches):
        out = {}
        with torch.no_grad():
            for b in batches:
                (lp, _), _ = trainer._response_logps(model, b)
                for k, i in enumerate(b["seed_index"].tolist()):
                    out[i] = lp.view(-1, 4)[k]
        return out

    grouped = logps(list(trainer.get_train_dataloader()))
    trainer.args.train_sampling_strategy = "random"
    shuffled = logps(list(trainer.get_train_dataloader()))
    for i in range(8):
        torch.testing.assert_close(grouped[i], shuffled[i], rtol=1e-5, atol=1e-5)
    # a batch's loss is the same whatever the order of its seeds
    rows = [trainer.train_dataset[i] for i in (0, 5, 2)]
    with torch.no_grad():
        a = trainer.compute_loss(model, trainer.data_collator(rows))
        b = trainer.compute_loss(model, trainer.data_collator(rows[::-1]))
    torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- FLOP counting


def test_flop_costs_match_a_hand_count_for_full_and_attention_only_training():
    from tiny_models import make_model

    from clo_utils.models import select_trainable

    # tiny llama: hidden 32, MLP 64, 4 heads of 8, 2 kv heads, 2 layers, vocab 512, untied head
    per_layer = 32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 64
    attention_params = 32 * 32 + 2 * 32 * 16 + 32 * 32
    qkv = 32 * 32 + 2 * 32 * 16
    full, _ = select_trainable(make_model("llama"), "full")
    costs = flop_costs(full)
    assert costs.stack_forward == 2 * 2 * per_layer and costs.head_forward == 2 * 32 * 512
    assert costs.stack_backward == 2 * costs.stack_forward  # input and weight gradients everywhere
    assert costs.head_backward == 2 * costs.head_forward
    assert costs.attention_width == costs.attention_backward_width == 2 * 32
    attn, _ = select_trainable(make_model("llama"), "attention")
    costs = flop_costs(attn)
    # weight gradients: q/k/v/o only; input gradients: everything above layer 0's q/k/v (the embedding is frozen)
    assert costs.stack_backward == 2 * 2 * attention_params + (2 * 2 * per_layer - 2 * qkv)
    assert costs.head_backward == 2 * 32 * 512  # the frozen head still passes the gradient down
    assert costs.attention_backward_width == 2 * 32


def test_sequence_flops_count_causal_pairs_and_head_positions():
    c = FlopCosts(
        stack_forward=10,
        stack_backward=20,
        head_forward=100,
        head_backward=100,
        attention_width=2,
        attention_backward_width=2,
    )
    # n=3: 6 causal pairs; forward 3*10 + 2*100 + 4*6*2; backward 3*20 + 2*100 + 8*6*2
    assert c.sequence(3, 2, train=False) == 30 + 200 + 48
    assert c.sequence(3, 2, train=True) == 30 + 200 + 48 + 60 + 200 + 96


def test_generate_batches_count_prompt_padding_and_positions_after_eos():
    from clo_utils.evaluation.decoding import DecodeStats

    stats = DecodeStats()
    # prompts of 2 and 3 tokens in 3 columns; row 0 stops after 2 new tokens (EOS 3), then pads
    stats.add_padded_batch([2, 3], 3, [[7, 3, 0], [8, 9, 3]], [3])
    assert stats.rows == [(2, 2), (3, 3)]
    assert stats.computed == 2 * (3 + 2) and stats.real == (2 + 1) + (3 + 2)
    assert stats.padding_share == pytest.approx(1 - 8 / 10)


# --------------------------------------------------------------------------- end to end


def _notebook(cells):
    return {
        "cells": [
            {"cell_type": "code", "source": src, "metadata": {"papermill": {"duration": d}}} for src, d in cells
        ],
        "metadata": {"papermill": {"duration": sum(d for _, d in cells)}},
    }


def _run_folder(root: Path) -> Path:
    (root / "ca" / "data").mkdir(parents=True)
    (root / "ca" / "clo-2").mkdir(parents=True)
    (root / "ca" / "data" / "01_translate_data.ipynb").write_text(
        json.dumps(
            _notebook(
                [
                    ("import pandas as pd\nfrom clo_utils.data import x", 3.0),
                    ("prepared = translate_and_filter(a, b)", 20.0),
                    ("manifest = write_data_folder(out_dir, prepared)", 1.0),
                ]
            )
        )
    )
    (root / "ca" / "clo-2" / "03_clo_training.ipynb").write_text(
        json.dumps(
            _notebook(
                [
                    ('if "google.colab" in sys.modules:\n    subprocess.run(["pip", "install", "x"])', 0.0),
                    ("model, tok = load_model_and_tokenizer(model_id)", 5.0),
                    ("trainer, summary = train_clo(model, tok, p, c)", 40.0),
                    ("runs.save_run(output_dir, trainer)", 2.0),
                    ("display(df)", 1.0),
                ]
            )
        )
    )
    (root / "timings.json").write_text(
        json.dumps(
            {
                "stages": [
                    {"lang": "ca", "stage": "data", "status": "done", "seconds": 30.0},
                    {"lang": "ca", "stage": "clo-2 train", "status": "done", "seconds": 50.0},
                    {"lang": "ca", "stage": "clo-2 eval", "status": "done", "seconds": 10.0},
                ],
                "wall_seconds": 95.0,
                "stage_seconds": 90.0,
                "invocations": [{"started": "t", "wall_seconds": 95.0}],
            }
        )
    )
    return root


def test_end_to_end_splits_each_stage_into_compute_and_waiting(tmp_path):
    data = breakdown(_run_folder(tmp_path / "demo"))
    data_stage, train, evaluation = data["stages"]
    assert data_stage["compute_seconds"] == 20.0 and data_stage["categories"]["process and kernel start"] == 6.0
    assert train["categories"] == {
        "install": 0.0,
        "model load": 5.0,
        "train": 40.0,
        "writing": 2.0,
        "other (display, tables)": 1.0,
        "process and kernel start": 2.0,
    }
    assert evaluation["notebook"] is None and evaluation["compute_seconds"] == 0.0  # no executed notebook
    assert data["compute_seconds"] == 60.0 and data["stage_seconds"] == 90.0


def test_end_to_end_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="timings.json"):
        breakdown(tmp_path)
    root = _run_folder(tmp_path / "demo")
    (root / "ca" / "data" / "01_translate_data.ipynb").write_text("{not json")
    with pytest.raises(ValueError, match="01_translate_data.ipynb"):
        breakdown(root)


def test_cells_are_categorised_by_the_first_matching_call():
    assert cell_category("metrics = evaluate.evaluate_run(run, data)")[0] == "evaluate"
    assert cell_category("from x import y\ntrainer, s = train_sft(m, t, rows, cfg)") == ("train", True)
    assert cell_category("print('hello')") == ("other (display, tables)", False)


# --------------------------------------------------------------------------- the harness on a tiny model


def test_sections_run_on_a_tiny_model(tmp_path):
    model_dir = tmp_path / "tiny"
    from tiny_models import make_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=3,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    out = tmp_path / "bench.json"
    run_dir = _run_folder(tmp_path / "run")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench.py"),
            str(out),
            "--only",
            "train,generate,mfu,padding,end_to_end",
            "--model",
            str(model_dir),
            "--max-length",
            "4000",
            "--threads",
            "1",
            "--steps",
            "1",
            "--seeds",
            "4",
            "--gen-prompts",
            "6",
            "--gen-batch",
            "3",
            "--gen-tokens",
            "4",
            "--padding-seeds",
            "12",
            "--gemm-size",
            "128",
            "--run-dir",
            str(run_dir),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    ratios = results["ratios"]
    names = ["mfu_clo_step", "mfu_sft_step", "mfu_dpo_step", "mfu_reference_pass", "mfu_generation"]
    chunks = results["sections"]["padding"]["forward_chunk_padding"]  # the CPU profile's: CLO batches in chunks
    assert (chunks is None) == torch.cuda.is_available()
    for name in names + (["mfu_clo_step_one_forward"] if chunks is not None else []):
        assert 0 < ratios[name]["value"] < 2, (name, ratios[name])
    assert ratios["padding_clo_training"]["value"] <= ratios["padding_clo_training_random"]["value"]
    if chunks is not None:  # every chunk within the bound, so the whole epoch too
        assert ratios["padding_clo_training"]["value"] <= min(
            chunks, ratios["padding_clo_training_one_forward"]["value"]
        )
    positions = results["sections"]["padding"]["positions"]
    real = {positions[k]["real"] for k in ("clo_training", "clo_random", "clo_group_by_length", "reference_pass")}
    assert len(real) == 1  # the same tokens, batched differently
    # padded, length-grouped batches by default; packed into one row every computed position is a token
    assert not results["sections"]["padding"]["padding_free"]
    assert ratios["padding_clo_training_packed"]["value"] == 0
    assert ratios["padding_reference_pass"]["value"] <= ratios["padding_reference_by_seed"]["value"]
    assert ratios["end_to_end_compute_share"]["value"] == pytest.approx(60 / 90)
    for name in ("clo_vs_dpo_live_step", "clo_vs_sft_per_seed", "generate_batched_speedup"):
        assert ratios[name]["value"] > 0
    # the shrinking loop against generate: the same greedy answers, fewer positions computed
    assert ratios["generate_answers_differing"]["value"] == 0 and ratios["generate_speedup_vs_generate"]["value"] > 0
    generation = results["sections"]["generation"]
    assert generation["shrinking"]["real_positions"] == generation["generate"]["real_positions"]
    assert generation["shrinking"]["computed_positions"] <= generation["generate"]["computed_positions"]
    # the loop with torch's own linear layers computes the same positions; its answers are in the comparison
    assert generation["unpacked"]["computed_positions"] == generation["shrinking"]["computed_positions"]
    assert ratios["generate_speedup_packed_linear"]["value"] > 0
    # answers + reference NLL: the earlier two passes and the kit's one give the same answers and scores
    direction = generation["with_reference_nll"]
    assert direction["answers_differing"] == 0 and ratios["evaluate_nll_differing"]["value"] == 0
    assert direction["reference_tokens"] > 0 and direction["kit"]["nll"] == pytest.approx(direction["earlier"]["nll"])
    assert ratios["evaluate_speedup_vs_earlier"]["value"] > 0
    assert "useful FLOPs" in proc.stdout and "load average" in proc.stdout


def test_sequence_batches_sort_single_sequences_and_cover_each_once():
    from clo_utils.batching import sequence_batches

    lengths = [[5, 9, 7, 3], [8, 2, 6, 4]]
    batches = sequence_batches(lengths, 3)
    assert sorted(rc for b in batches for rc in b) == [(i, c) for i in range(2) for c in range(4)]
    flat = [lengths[i][c] for b in batches for i, c in b]
    assert flat == sorted(flat, reverse=True) and [len(b) for b in batches] == [3, 3, 2]
