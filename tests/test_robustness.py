"""Robustness: bad inputs give clear errors (file / line / parameter named) with nothing already
computed lost; a killed training run resumes to the uninterrupted run's losses; the translation
cache survives SIGKILL mid-write; non-finite values stop training before the weights are touched;
secrets never reach logs, caches, metrics or notebooks.

Kills are real: a subprocess is SIGKILLed / os._exit()s, and the survivors are reopened.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from test_judge import LoopbackServer
from tiny_models import clo_config, make_model, seed_rows

from clo_utils.data import build_cross_lingual_pairs, build_sft_rows
from clo_utils.models import select_trainable
from clo_utils.train import CLOTrainer, tokenize_clo_pairs, train_clo

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def _env() -> dict:
    env = {**os.environ, "CLO_TESTS_DIR": str(TESTS), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _config(tmp_path, **kw):
    return clo_config(tmp_path, **{"per_device_train_batch_size": 1, **kw})


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# =========================================================================== bad inputs: data


GOOD = {"instruction": "Name a fruit.", "input": "", "output": "An apple.", "id": "a"}


def test_malformed_jsonl_names_the_file_and_line(tmp_path):
    from clo_utils.translation.sources import load_english_sft

    lines = [json.dumps(GOOD), json.dumps({**GOOD, "id": "b"}), '{"instruction": "Broken", "output": ']
    path = _write(tmp_path / "sft.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"sft\.jsonl line 3: invalid JSON"):
        load_english_sft(path)
    _write(path, json.dumps(GOOD) + "\n[1, 2]\n")
    with pytest.raises(ValueError, match=r"sft\.jsonl line 2: expected a JSON object"):
        load_english_sft(path)


def test_missing_column_names_the_line_and_field(tmp_path):
    from clo_utils.translation.sources import load_english_sft

    path = _write(
        tmp_path / "sft.jsonl", json.dumps(GOOD) + "\n" + json.dumps({"instruction": "Hi", "id": "b"}) + "\n"
    )
    with pytest.raises(ValueError, match=r"sft\.jsonl line 2: missing field 'output'.*column_map"):
        load_english_sft(path)
    # the same file loads once the column is mapped to one that exists
    _write(path, json.dumps({"instruction": "Hi", "response": "Hello", "id": "b"}) + "\n")
    assert load_english_sft(path, column_map={"output": "response"})[0]["response"] == "Hello"


def test_empty_dataset_after_filtering_is_an_error_naming_why(tmp_path, tok):
    from clo_utils.translation.sources import load_english_sft, prepare_english_rows

    path = _write(
        tmp_path / "sft.jsonl", "\n".join(json.dumps({**GOOD, "id": str(i), "output": " "}) for i in range(3))
    )
    with pytest.raises(ValueError, match=r"sft\.jsonl: no usable records"):
        load_english_sft(path)
    # Every row over the token limits: the error should say which limit emptied the set, here and
    # not later as "n_eval=35 but only 0 rows are available" in select_seeds.
    path = _write(tmp_path / "long.jsonl", "\n".join(json.dumps({**GOOD, "id": str(i)}) for i in range(3)))
    with pytest.raises(ValueError, match=r"max_prompt_tokens"):
        prepare_english_rows(path, tok, max_prompt_tokens=1, max_response_tokens=None)


def test_all_translations_filtered_out_is_an_error_and_keeps_the_translations(tmp_path):
    """Nothing survives the quality filter (here: translations identical to the English): an error
    naming the drop reasons, and the translations stay in the cache for the next attempt."""
    from clo_utils.common.cache import DiskCache
    from clo_utils.translation.seeds import translate_and_filter
    from clo_utils.translation.translate import Translator

    class Identity(Translator):  # a "translator" that returns the English: every seed is dropped
        name = "identity"

        @property
        def model(self):
            return "identity"

        def translate_batch(self, segments):
            return list(segments)

    rows = [
        {
            "id": f"r{i}",
            "prompt": f"Please describe the colour number {i} in detail.",
            "response": f"The colour number {i} is a pleasant shade of blue and green.",
            "source": "t",
        }
        for i in range(4)
    ]
    cache = tmp_path / "t.sqlite"
    with pytest.raises(ValueError, match=r"identical_to_english"):
        translate_and_filter(rows[1:], rows[:1], 3, "ca", Identity("ca"), cache=cache, progress=False)
    with DiskCache(cache) as db:
        assert len(db) == 8  # all 4 rows x (prompt, response) translated and kept


def test_unknown_language_code_lists_the_known_ones():
    from clo_utils.common.languages import get_language

    with pytest.raises(ValueError, match=r"unknown language code 'xx'.*ca \(Catalan\)"):
        get_language("xx")


def test_unknown_translator_backend_and_missing_pair(tmp_path):
    from clo_utils.translation.translate import TranslatorError, get_translator, translate

    with pytest.raises(ValueError, match=r"unknown translation backend 'deepl'; known backends: apertium"):
        translate(["Hello."], "ca", backend="deepl", cache=tmp_path / "c.sqlite", progress=False)
    with pytest.raises(ValueError, match=r"unknown language code 'cat'"):
        translate(["Hello."], "cat", backend="apertium", progress=False)
    with pytest.raises(TranslatorError, match=r"no Apertium pair English -> German \(de\).*m2m100"):
        get_translator("apertium", "de")
    # nothing was created for a call that could not start
    assert (
        not (tmp_path / "c.sqlite").exists()
        or sqlite3.connect(tmp_path / "c.sqlite").execute("SELECT COUNT(*) FROM kv").fetchone()[0] == 0
    )


@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan")])
def test_beta_must_be_positive(tmp_path, beta):
    from clo_utils.losses import clo_loss

    with pytest.raises(ValueError, match=r"CLOConfig\.beta must be > 0"):
        _config(tmp_path, beta=beta)
    z = torch.zeros(2)
    with pytest.raises(ValueError, match=r"beta must be > 0"):
        clo_loss(z, z, z, z, torch.tensor(1.0), beta=beta)


@pytest.mark.parametrize("lam", [-0.1, 1.01, float("nan")])
def test_lam_must_be_in_unit_interval(tmp_path, lam):
    from clo_utils.losses import clo_loss

    with pytest.raises(ValueError, match=r"CLOConfig\.lam must be in \[0, 1\]"):
        _config(tmp_path, lam=lam)
    z = torch.zeros(2)
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\]"):
        clo_loss(z, z, z, z, torch.tensor(1.0), lam=lam)


def test_a_model_without_known_attention_modules(tok):
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    neox = AutoModelForCausalLM.from_config(
        GPTNeoXConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
        )
    )
    with pytest.raises(
        ValueError, match=r"no attention-module mapping for architecture 'gpt_neox'.*attention_modules="
    ):
        select_trainable(neox, "attention")
    # Naming them works; a wrong name is a clear error too, for attention-only and LoRA alike.
    model, report = select_trainable(
        neox, "attention", attention_modules=("attention.query_key_value", "attention.dense")
    )
    assert 0 < report["trainable_share"] < 1
    for mode in ("attention", "lora"):
        with pytest.raises(ValueError, match=r"'llama'.*no Linear module matches \('self_attn\.qkv',\)"):
            select_trainable(make_model("llama", len(tok)), mode, attention_modules=("self_attn.qkv",))


def test_a_missing_chat_template_is_named_at_load_and_at_tokenisation(tmp_path, tok):
    from clo_utils.models import load_tokenizer

    tok.chat_template = None
    tok.save_pretrained(tmp_path / "tok")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "tok")) + r": the tokenizer has no chat template"):
        load_tokenizer(str(tmp_path / "tok"))
    with pytest.raises(ValueError, match=r"no chat template"):
        tokenize_clo_pairs(build_cross_lingual_pairs(seed_rows(1)), tok, 256)


def test_every_trainer_refuses_an_over_long_seed_by_id_and_trl_gets_the_kept_rows_uncut(tmp_path, tok):
    """Over max_length is an error at each trainer's entry (CLO, SFT, DPO), naming the seed, before any
    step; the seeds seeds_within_max_length keeps reach TRL whole (TRL would otherwise truncate
    silently, cutting the response and its EOS). The filter and the tokenisers are tested in test_train."""
    from clo_utils.train import (
        dpo_config,
        seeds_within_max_length,
        sft_config,
        tokenize_prompt_response,
        train_dpo,
        train_sft,
    )

    rows = seed_rows(3)
    rows[1]["response_tgt"] = "molt " * 120
    common = dict(
        max_length=96, device="cpu", max_steps=1, per_device_train_batch_size=2, save_strategy="no", disable_tqdm=True
    )
    model, _ = select_trainable(make_model("llama", len(tok)), "attention")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    pairs = build_cross_lingual_pairs(rows)
    refusals = {
        "clo": lambda: train_clo(model, tok, pairs, _config(tmp_path / "clo", max_length=96)),
        "sft": lambda: train_sft(model, tok, build_sft_rows(rows, "tgt"), sft_config(str(tmp_path / "sft"), **common)),
        "dpo": lambda: train_dpo(model, tok, pairs, dpo_config(str(tmp_path / "dpo"), **common)),
    }
    for train in refusals.values():
        with pytest.raises(ValueError, match=r"longer than max_length=96 tokens \(seeds \['s1'\]\)"):
            train()
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # refused before a step

    kept, dropped = seeds_within_max_length(rows, tok, 96)
    assert dropped == ["s1"]
    sft_rows = build_sft_rows(kept, "both")
    trainer, _ = train_sft(model, tok, sft_rows, sft_config(str(tmp_path / "sft-kept"), **common))
    whole = [tokenize_prompt_response(tok, r["prompt"], r["completion"])[0] for r in sft_rows]
    assert [ex["input_ids"] for ex in trainer.train_dataset] == whole
    assert all(tok.eos_token_id in ids[-2:] for ids in whole)  # the answer's end of turn (+ the template's newline)
    pairs = build_cross_lingual_pairs(kept)
    trainer, _ = train_dpo(model, tok, pairs, dpo_config(str(tmp_path / "dpo-kept"), **common))
    chosen = [tokenize_prompt_response(tok, p["prompt"], p["chosen"])[0] for p in pairs]
    assert [ex["prompt_ids"] + ex["chosen_ids"] for ex in trainer.train_dataset] == chosen


# =========================================================================== NaN guards


def _snapshots(trainer_holder: dict):
    from transformers import TrainerCallback

    class Snap(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            trainer_holder[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters()}

    return Snap()


def test_inf_in_an_input_embedding_stops_with_step_and_seed_before_an_update(tmp_path, tok):
    rows = seed_rows(4)
    model, _ = select_trainable(make_model("llama", len(tok)), "attention")
    examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(rows), tok, 256)
    # A token that occurs in seed s3 only (in its target response): an inf in that token's embedding
    # row poisons exactly that seed. The reference pass ran before the corruption.
    trainer = CLOTrainer(model, _config(tmp_path, max_steps=8), examples, processing_class=tok)
    others = {t for ex in examples if ex["seed_id"] != "s3" for ids in ex["input_ids"] for t in ids}
    s3 = next(ex for ex in examples if ex["seed_id"] == "s3")
    poison = next(t for t, lab in zip(s3["input_ids"][2], s3["labels"][2]) if lab != -100 and t not in others)
    with torch.no_grad():
        model.get_input_embeddings().weight[poison] = float("inf")
    snaps: dict = {}
    trainer.add_callback(_snapshots(snaps))
    with pytest.raises(
        FloatingPointError, match=r"non-finite CLO loss \(nan\) at global step (\d+), seeds \['s3'\]"
    ) as err:
        trainer.train()
    step = int(re.search(r"global step (\d+)", str(err.value)).group(1))
    after = {n: p.detach() for n, p in model.named_parameters()}
    expected = snaps[step] if step else None
    for name, p in after.items():
        if "embed_tokens" in name:
            continue
        assert torch.isfinite(p).all(), name
        if expected is not None:
            assert torch.equal(p, expected[name]), f"{name} changed after the last good step {step}"
    # nothing already computed is lost: the reference log-probs are on disk, a rerun reuses them
    again = CLOTrainer(make_model("llama", len(tok)), _config(tmp_path), examples, processing_class=tok)
    assert again.reference_forward_batches == 0


def test_a_learning_rate_that_blows_up_stops_before_weights_go_non_finite(tmp_path, tok):
    model, _ = select_trainable(make_model("llama", len(tok)), "attention")
    with pytest.raises(FloatingPointError, match=r"at global step [1-9]\d*, seeds \['s\d'\]"):
        train_clo(
            model,
            tok,
            build_cross_lingual_pairs(seed_rows(4)),
            _config(
                tmp_path,
                learning_rate=1e30,
                max_steps=6,
                max_grad_norm=0.0,
                lr_scheduler_type="constant",
                warmup_steps=0,
            ),
        )
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_non_finite_gradient_with_a_finite_loss_skips_the_optimizer_step(tmp_path, tok):
    """An overflow in backward (simulated by a gradient hook at step 2) would, through gradient
    clipping (inf * 0 = nan), write NaN into every trainable weight; the guard stops first."""
    model, _ = select_trainable(make_model("llama", len(tok)), "attention")
    examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(seed_rows(4)), tok, 256)
    trainer = CLOTrainer(model, _config(tmp_path, max_steps=4), examples, processing_class=tok)
    snaps: dict = {}
    trainer.add_callback(_snapshots(snaps))
    target = model.model.layers[0].self_attn.q_proj.weight
    target.register_hook(lambda g: g * float("inf") if trainer.state.global_step == 1 else g)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient at global step 1, seeds \['s\d'\].*q_proj"):
        trainer.train()
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all() and torch.equal(p, snaps[1][name]), name


# =========================================================================== gradient accumulation


def test_gradient_accumulation_gives_the_loss_of_the_whole_batch(tmp_path, tok):
    """Same global batch of 2 seeds as 1 x 2 or 2 micro-batches x 1: equal losses and gradient norms
    (lam = 0: the preference term is a plain mean over triples, exactly additive over micro-batches)."""
    pairs = build_cross_lingual_pairs(seed_rows(4))
    runs = {}
    for ga, bs in ((1, 2), (2, 1)):
        cfg = _config(
            tmp_path / f"ga{ga}", per_device_train_batch_size=bs, gradient_accumulation_steps=ga, lam=0.0, max_steps=3
        )
        trainer, _ = train_clo(make_model("llama", len(tok)), tok, pairs, cfg)
        runs[ga] = [(h["loss"], h["grad_norm"]) for h in trainer.state.log_history if "loss" in h]
    for (l1, g1), (l2, g2) in zip(runs[1], runs[2]):
        assert l2 == pytest.approx(l1, rel=1e-5) and g2 == pytest.approx(g1, rel=1e-4)


# =========================================================================== kill and resume


RESUME_LAUNCHER = r"""
import json, os, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from clo_utils.data import build_cross_lingual_pairs
from clo_utils.models import select_trainable
from clo_utils.train import CLOConfig, train_clo

sys.path.insert(0, os.environ["CLO_TESTS_DIR"])
from tiny_models import seed_rows

model_dir, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)


class Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == kill_at:  # after checkpoint-2 was written, before step 3 is logged
            assert os.path.isdir(os.path.join(out, "checkpoint-2")), os.listdir(out)
            os._exit(17)


tok = AutoTokenizer.from_pretrained(model_dir)
model, _ = select_trainable(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), "attention")
config = CLOConfig(output_dir=out, per_device_train_batch_size=2, max_steps=6, learning_rate=5e-3, logging_steps=1,
                   save_strategy="steps", save_steps=2, use_cpu=True, seed=0, report_to="none", disable_tqdm=True,
                   ref_cache_dir=os.path.join(out, "..", "ref"), warmup_steps=1)
trainer, summary = train_clo(model, tok, build_cross_lingual_pairs(seed_rows(6)), config, callbacks=[Kill()])
with open(os.path.join(out, "history.json"), "w") as f:
    json.dump(trainer.state.log_history, f)
"""


def test_killed_after_a_checkpoint_and_resumed_reproduces_the_uninterrupted_losses(tmp_path, tok):
    make_model("llama", len(tok)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    script = _write(tmp_path / "train.py", RESUME_LAUNCHER)

    def launch(out: str, kill_at: int):
        return subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "model"), str(tmp_path / out), str(kill_at)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    straight, killed = launch("straight", -1), launch("killed", 3)
    out_killed = killed.communicate(timeout=240)[0]
    assert killed.returncode == 17, out_killed[-3000:]
    assert not (tmp_path / "killed" / "history.json").exists()
    assert sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*")) == ["checkpoint-2"]
    resumed = launch("killed", -1)  # same command, same output folder: train_clo resumes from checkpoint-2
    out_resumed = resumed.communicate(timeout=240)[0]
    out_straight = straight.communicate(timeout=240)[0]
    assert resumed.returncode == 0, out_resumed[-3000:]
    assert straight.returncode == 0, out_straight[-3000:]

    def per_step(out):
        history = json.loads((tmp_path / out / "history.json").read_text())
        return {h["step"]: h for h in history if "loss" in h}

    a, b = per_step("straight"), per_step("killed")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        for key in ("loss", "nll_loss", "cl_loss", "grad_norm", "learning_rate"):
            assert abs(a[step][key] - b[step][key]) <= 1e-6, f"step {step} {key}: {a[step][key]} vs {b[step][key]}"
    assert a[6]["loss"] != a[1]["loss"]  # it trained


# =========================================================================== cache survives SIGKILL


CACHE_WRITER = r"""
import sys, time
from clo_utils.common.cache import DiskCache

path, batch, pause_in = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
db = DiskCache(path)


def inside_transaction():
    # sqlite's progress handler runs while the INSERTs of the open transaction execute: say so and
    # wait there to be killed (deterministic kill point mid-write).
    print("inside", flush=True)
    time.sleep(60)
    return 0


for b in range(100000):
    if b == pause_in:
        db._db.set_progress_handler(inside_transaction, 20000)
    db.put_many({f"{b:06d}:{i:05d}": {"batch": b, "i": i, "text": "x" * 300} for i in range(batch)})
    print(b, flush=True)
"""


def test_disk_cache_survives_sigkill_mid_transaction(tmp_path):
    from clo_utils.common.cache import DiskCache

    script = _write(tmp_path / "writer.py", CACHE_WRITER)
    batch = 4000  # ~1.3 MB per transaction
    # attempt 0 is killed at a known point inside the 4th transaction; the others at whatever point
    # the writer has reached a few milliseconds after its 3rd commit.
    for attempt, pause_in in enumerate([3, -1, -1]):
        path = tmp_path / f"c{attempt}.sqlite"
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), str(batch), str(pause_in)],
            env=_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        printed = -1
        while True:
            line = proc.stdout.readline().strip()
            if line == "inside":
                assert Path(str(path) + "-journal").exists()  # a transaction is open and has written
                break
            printed = int(line)
            if pause_in < 0 and printed >= 2:
                time.sleep(0.005 * attempt)
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with DiskCache(path) as db:  # reopening rolls the torn transaction back (hot journal)
            assert db._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            n = len(db)
            assert n % batch == 0 and n // batch >= printed + 1, (n, printed)
            if pause_in >= 0:
                assert n == pause_in * batch
            per_batch = dict(db._db.execute("SELECT substr(key, 1, 6), COUNT(*) FROM kv GROUP BY 1").fetchall())
            assert set(per_batch.values()) == {batch} and sorted(per_batch) == [f"{b:06d}" for b in range(n // batch)]
            sample = db.get_many([f"{b:06d}:{i:05d}" for b in range(n // batch) for i in (0, batch - 1)])
            assert all(v["text"] == "x" * 300 for v in sample.values()) and len(sample) == 2 * (n // batch)
            # resuming rewrites the last committed batch and adds the next: no duplicate, no loss
            last = n // batch - 1
            db.put_many(
                {
                    f"{b:06d}:{i:05d}": {"batch": b, "i": i, "text": "x" * 300}
                    for b in (last, last + 1)
                    for i in range(batch)
                }
            )
            assert len(db) == n + batch
        assert not Path(str(path) + "-journal").exists()


TRANSLATE_WRITER = r"""
import json, sys
from clo_utils.translation.translate import translate
texts = json.load(open(sys.argv[1]))
translate(texts, "ca", backend="apertium", batch_size=8, cache=sys.argv[2], progress=False)
"""


@pytest.mark.skipif(
    subprocess.run(["sh", "-c", "apertium -l | grep -qw eng-cat"]).returncode != 0,
    reason="Apertium eng-cat not installed",
)
def test_translation_killed_mid_run_resumes_without_duplicates(tmp_path):
    from clo_utils.common.cache import DiskCache
    from clo_utils.translation.translate import translate_with_stats

    colours = ["red", "blue", "green", "yellow", "black", "white", "brown", "grey"]
    things = ["house", "car", "tree", "river", "book", "table", "garden", "city", "dog", "window"]
    texts = [f"The {c} {t} is near the old station." for c in colours for t in things]  # 80 unique sentences
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    cache = tmp_path / "translations.sqlite"
    script = _write(tmp_path / "tr.py", TRANSLATE_WRITER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "texts.json"), str(cache)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 120
    committed = 0
    while committed < 16 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if cache.exists():
            try:
                with sqlite3.connect(f"file:{cache}?mode=ro", uri=True, timeout=1) as db:
                    committed = db.execute("SELECT COUNT(*) FROM kv").fetchone()[0]
            except sqlite3.OperationalError:  # table not created yet, or the writer holds the lock
                pass
    assert proc.poll() is None, (
        "translation finished before it could be killed: " + proc.stdout.read().decode()[-2000:]
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with DiskCache(cache) as db:
        before = len(db)
        assert before % 8 == 0 and 16 <= before < len(texts)
    outputs, stats = translate_with_stats(texts, "ca", backend="apertium", batch_size=8, cache=cache, progress=False)
    assert stats.cached == before and stats.translated == len(texts) - before and stats.failed == 0
    with DiskCache(cache) as db:
        assert len(db) == len(texts)
        assert db._db.execute("SELECT COUNT(DISTINCT key) FROM kv").fetchone()[0] == len(texts)
    assert all(outputs) and outputs[0] != texts[0]
    # a warm rerun calls the translator 0 times
    again, stats = translate_with_stats(texts, "ca", backend="apertium", batch_size=8, cache=cache, progress=False)
    assert again == outputs and stats.translated == 0 and stats.batches == 0


def test_a_backend_failing_mid_run_keeps_the_batches_already_translated(tmp_path):
    from clo_utils.common.cache import DiskCache
    from clo_utils.translation.translate import Translator, TranslatorError, translate_with_stats

    class Flaky(Translator):
        name = "flaky"
        calls = 0

        @property
        def model(self):
            return "v1"

        def translate_batch(self, segments):
            Flaky.calls += 1
            if Flaky.calls == 3:
                raise TranslatorError("backend died")
            return [f"[ca] {s}" for s in segments]

    texts = [f"Sentence number {i} is here." for i in range(10)]
    cache = tmp_path / "t.sqlite"
    with pytest.raises(TranslatorError, match="backend died"):
        translate_with_stats(texts, "ca", backend=Flaky("ca"), batch_size=2, cache=cache, progress=False)
    with DiskCache(cache) as db:
        assert len(db) == 4  # the two batches done before the failure
    out, stats = translate_with_stats(texts, "ca", backend=Flaky("ca"), batch_size=2, cache=cache, progress=False)
    assert stats.cached == 4 and stats.translated == 6 and out == [f"[ca] {t}" for t in texts]


# =========================================================================== secrets


SECRET = "sk-test-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
HF_SECRET = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"


class EchoingServer(LoopbackServer):
    """A chat-completions endpoint that checks the key and, like some debugging proxies, reflects the
    request's Authorization header inside the completion text it returns."""

    def __init__(self, reflect: bool):
        handler_reflect = reflect

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                auth = self.headers.get("Authorization", "")
                ok = auth == f"Bearer {SECRET}"
                text = ("[[A]]" + (f" (request had {auth})" if handler_reflect else "")) if ok else f"bad key {auth}"
                body = json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": text}}]}
                    if ok
                    else {"error": {"message": text}}
                ).encode()
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


def _assert_no_secret(root: Path, *texts: str) -> None:
    for text in texts:
        assert SECRET not in text and HF_SECRET not in text
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data and HF_SECRET.encode() not in data, f"secret written to {path}"


@pytest.mark.parametrize("reflect", [False, True], ids=["plain-server", "server-reflects-the-key"])
def test_judge_key_and_tokens_never_reach_logs_metrics_or_caches(tmp_path, monkeypatch, caplog, capfd, reflect):
    from clo_utils.evaluation import judge as jd
    from clo_utils.evaluation.evaluate import write_answers

    monkeypatch.setenv("CLO_JUDGE_API_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    caplog.set_level(logging.DEBUG)
    questions = ["Quina és la capital de França?", "Com estàs?"]
    for name in ("clo-2", "sft-2"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        write_answers(
            tmp_path / "runs" / name,
            [
                {"direction": d, "id": f"s{i}", "prompt": q, "answer": f"{name} {q}", "reference": ""}
                for d in ("tgt", "en")
                for i, q in enumerate(questions)
            ],
        )
    with EchoingServer(reflect) as server:
        judge = jd.make_judge("openai", "judge-model", base_url=server.base_url)
        block = jd.judge_run(
            tmp_path / "runs" / "clo-2",
            tmp_path / "runs" / "sft-2",
            judge,
            "ca",
            cache=tmp_path / "cache" / "judge.sqlite",
        )
        assert block["tgt"]["n"] == 2
        monkeypatch.setenv("CLO_JUDGE_API_KEY", SECRET + "-revoked")  # now the server rejects us
        with pytest.raises(jd.JudgeError) as failure:
            jd.win_rate(judge, ["new?"], ["a"], ["b"], "ca", cache=tmp_path / "cache" / "judge.sqlite")
    assert "401" in str(failure.value)
    out, err = capfd.readouterr()
    _assert_no_secret(tmp_path, caplog.text, out, err, str(failure.value), repr(block), repr(vars(judge)))


def test_committed_notebooks_and_recipes_hold_no_secrets():
    """Notebook parameters name environment variables (never hold keys), and no committed notebook
    output or recipe carries anything shaped like a key or an Authorization header."""
    patterns = re.compile(
        r"sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{30,}|Bearer\s+[A-Za-z0-9._-]{12,}|"
        r"api[_-]?key\s*[:=]\s*['\"][^'\"]{8,}['\"]",
        re.I,
    )
    checked = 0
    for path in list((REPO / "notebooks").glob("*.ipynb")) + list((REPO / "params").rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        assert not patterns.search(text), f"{path}: {patterns.search(text).group(0)[:20]}..."
        checked += 1
        if path.suffix == ".ipynb":
            nb = json.loads(text)
            for cell in nb["cells"]:
                if "parameters" in cell.get("metadata", {}).get("tags", []):
                    for line in "".join(cell["source"]).splitlines():
                        name = line.split("=")[0].split(":")[0].strip()
                        if re.search(r"api_?key|secret|password|(^|_)(hf|auth|access|api|bearer)_?token", name, re.I):
                            assert name.endswith("_env"), (
                                f"{path.name}: parameter {name!r} should name an env variable"
                            )
    assert checked >= 5
