"""Kill anywhere, lose nothing: the batch runner is SIGKILLed (with its kernels) inside each stage kind:
translation, training between checkpoints, evaluation mid-generation, analysis. Each rerun skips
every complete stage, redoes only the interrupted one, and the final files equal those of a run
that was never interrupted (exactly, on CPU); the translation and generation caches end up with
the same entries as the uninterrupted run's, none torn or duplicated, and the evaluation rerun
generates only the batches its cache lacks. Tiny random model, the packaged smoke data, Apertium.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from tiny_models import save_tiny_llama

REPO = Path(__file__).resolve().parents[2]
STAGE_LINE = re.compile(r"^\[(?:analysis )?\d+/\d+\] (\S+) (.+?): (done|skipped \(complete\))")
STARTED_LINE = re.compile(r"^\[(?:analysis )?\d+/\d+\] (\S+) (.+?) \(")
TIMING_KEYS = {
    "seconds",
    "train_seconds",
    "seconds_per_step",
    "peak_memory_mb",
    "samples_per_second",
    "steps_per_second",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
}

pytestmark = pytest.mark.slow


def _recipe(model_dir: Path) -> dict:
    return {
        "name": "kill",
        "languages": ["ca"],
        "budgets": [4],
        "methods": ["clo"],
        "seed": 0,
        # batch_size 1: one Apertium call per segment, so translation lasts long enough to be killed in
        "data": {
            "data_source": "smoke",
            "n_eval": 10,
            "tokenizer_id": str(model_dir),
            "apertium_procs": 1,
            "batch_size": 1,
        },
        "train": {
            "model_id": str(model_dir),
            "device": "cpu",
            "batch_seeds": 1,
            "max_length": 512,
            "learning_rate": 1e-3,
            "num_train_epochs": 20,
            "save_steps": 1,
        },  # 80 steps, a checkpoint each
        "evaluate": {"base_model_id": str(model_dir), "max_prompts": 10, "max_new_tokens": 96, "batch_size": 1},
        "analysis": {"formats": ["png"]},
    }


def _command(recipe: Path, runs: Path) -> list[str]:
    return [sys.executable, "-m", "clo_utils.pipeline", str(recipe), "--runs-root", str(runs), "--jobs", "1"]


def _env(cache: Path) -> dict:
    return {
        **os.environ,
        "CLO_CACHE_DIR": str(cache),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _running_cell(notebook: Path) -> str | None:
    """Source of the cell papermill marks as running in an executed notebook (saved at each cell start)."""
    try:
        nb = json.loads(notebook.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for cell in nb.get("cells", []):
        if cell.get("metadata", {}).get("papermill", {}).get("status") == "running":
            return "".join(cell.get("source", ""))
    return None


def _run_until(cmd, env, target: str, inside, timeout: float = 600) -> list[str]:
    """Run the runner until stage `target` has started and `inside()` holds, then SIGKILL its process
    group (the kernels too). Returns the stage lines printed before the kill."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip("\n") for line in proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            started = any((m := STARTED_LINE.match(line)) and m.group(2) == target for line in list(lines))
            if started and inside():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                reader.join(timeout=10)
                return lines
            if proc.poll() is not None:
                reader.join(timeout=10)
                raise AssertionError(
                    f"the runner ended before it could be killed inside {target!r}:\n" + "\n".join(lines[-40:])
                )
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {target!r}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)


def _finished(lines: list[str]) -> list[tuple[str, str, str]]:
    return [m.groups() for m in map(STAGE_LINE.match, lines) if m]


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _results(root: Path) -> dict:
    """Everything a run produces that must not depend on interruptions (timings left out)."""
    out = {}
    for rel in (
        "ca/data/seeds_train.jsonl",
        "ca/data/seeds_eval.jsonl",
        "ca/data/pairs.jsonl",
        "ca/base-0/answers.jsonl",
        "ca/clo-4/answers.jsonl",
    ):
        out[rel] = (root / rel).read_text(encoding="utf-8")
    for rel in ("ca/base-0/metrics.json", "ca/clo-4/metrics.json"):
        out[rel] = _without_timings(json.loads((root / rel).read_text(encoding="utf-8"))["eval"])
    # The optimizer steps' logs (the closing summary entry describes the last session only: a run
    # resumed at its final checkpoint trains 0 steps in it).
    history = json.loads((root / "ca/clo-4/train.json").read_text(encoding="utf-8"))["history"]
    out["history"] = _without_timings([entry for entry in history if "loss" in entry])
    out["weights"] = (root / "ca/clo-4/model/model.safetensors").read_bytes()
    return out


def _cache_rows(cache: Path, file: str = "translations.sqlite") -> tuple[int, int, int]:
    """(rows, distinct keys, empty values) of a cache file (translations, generations)."""
    if not (cache / file).exists():
        return 0, 0, 0
    db = sqlite3.connect(f"file:{cache / file}?mode=ro", uri=True, timeout=30)
    try:
        rows, keys = db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM kv").fetchone()
        empty = db.execute("SELECT COUNT(*) FROM kv WHERE value IN ('', '\"\"', 'null')").fetchone()[0]
    finally:
        db.close()
    return rows, keys, empty


def _evaluation_cache(cache: Path) -> tuple[dict[str, list[list[int]]], dict[str, list]]:
    """The generation cache split by kind: (key -> a batch's answer token ids, key -> a reference's
    [summed NLL, tokens]); every value must parse as one of the two."""
    db = sqlite3.connect(f"file:{cache / 'generations.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        entries = {key: json.loads(value) for key, value in db.execute("SELECT key, value FROM kv")}
    finally:
        db.close()
    answers, scores = {}, {}
    for key, value in entries.items():
        if len(value) == 2 and isinstance(value[0], float) and isinstance(value[1], int):
            scores[key] = value
        else:  # batch_size 1: one answer's token ids per entry
            assert len(value) == 1 and all(isinstance(t, int) for t in value[0]), (key, value)
            answers[key] = value
    return answers, scores


def _generations(cache: Path) -> dict[str, list[list[int]]]:
    return _evaluation_cache(cache)[0]


def _generation_batches(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))["eval_settings"]["generation_batches"]


def test_killed_in_every_stage_kind_resumes_the_interrupted_stage_and_matches_an_uninterrupted_run(tmp_path):
    if subprocess.run(["sh", "-c", "command -v apertium"], capture_output=True).returncode:
        pytest.skip("Debian's apertium is not installed (make test installs it when apt is available)")
    model_dir = save_tiny_llama(tmp_path / "tiny-llama")
    recipe = tmp_path / "kill.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(model_dir), sort_keys=False))

    # The uninterrupted run.
    start = time.perf_counter()
    ref = subprocess.run(
        _command(recipe, tmp_path / "ref"),
        cwd=REPO,
        env=_env(tmp_path / "cache-ref"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    n_batches = 2 * 10  # two directions x max_prompts, batch_size 1
    for run in ("base-0", "clo-4"):
        assert _generation_batches(tmp_path / "ref" / "kill" / "ca" / run) == {"total": n_batches, "from_cache": 0}
    print(f"uninterrupted run: {time.perf_counter() - start:.0f} s")

    runs, cache = tmp_path / "runs", tmp_path / "cache"
    root = runs / "kill"
    cmd, env = _command(recipe, runs), _env(cache)
    ca = root / "ca"

    def cell_running(notebook: Path, marker: str, after: float):
        seen = {}

        def inside() -> bool:
            running = _running_cell(notebook)
            if running is not None and marker in running:
                seen.setdefault("at", time.monotonic())
            return "at" in seen and time.monotonic() - seen["at"] >= after

        return inside

    translating = cell_running(ca / "data" / "01_translate_data.ipynb", "prepared = translate_and_filter(", 1.0)
    evaluating = cell_running(ca / "clo-4" / "04_evaluate.ipynb", "evaluate_run", 0.0)
    kills = [
        # (stage, condition inside it, what is complete when it is killed)
        ("data", lambda: translating() and _cache_rows(cache)[0] > 0, []),
        (
            "clo-4 train",
            lambda: 2 <= len(list((ca / "clo-4" / "checkpoints").glob("checkpoint-*"))) < 60,
            ["data", "base-0 eval"],
        ),
        # mid-generation: base-0's batches and a few of clo-4's are in the generation cache
        (
            "clo-4 eval",
            lambda: evaluating() and len(_generations(cache)) >= n_batches + 3,
            ["data", "base-0 eval", "clo-4 train"],
        ),
        (
            "analysis",
            cell_running(root / "05_analysis.ipynb", "", 0.0),
            ["data", "base-0 eval", "clo-4 train", "clo-4 eval"],
        ),
    ]
    previous_kill = None
    for target, inside, complete_before in kills:
        start = time.perf_counter()
        lines = _run_until(cmd, env, target, inside)
        finished = _finished(lines)
        skipped = [name for _, name, status in finished if status.startswith("skipped")]
        done = [name for _, name, status in finished if status == "done"]
        # Every stage complete before is skipped; the stage killed last time is the first one redone.
        assert skipped == [s for s in complete_before if s not in done], (target, lines[-30:])
        if previous_kill:
            assert done[:1] == [previous_kill] or (not done and target == previous_kill), (target, lines[-30:])
        assert target not in skipped + done
        print(f"killed inside {target} after {time.perf_counter() - start:.0f} s")
        if target == "data":
            rows, keys, empty = _cache_rows(cache)
            assert rows > 0 and rows == keys and empty == 0, (rows, keys, empty)
            assert not (ca / "data" / "manifest.json").exists()
        if target == "clo-4 train":  # killed between checkpoints, before the last
            assert not (ca / "clo-4" / "train.json").exists()
            assert not (ca / "clo-4" / "checkpoints" / "checkpoint-80").exists()
        if target == "clo-4 eval":  # nothing half-written where the next stages read
            assert not (ca / "clo-4" / "metrics.json").exists()
            answers = ca / "clo-4" / "answers.jsonl"
            assert not answers.exists() or all(json.loads(line) for line in answers.read_text().splitlines())
            generated_before_kill = _generations(cache)  # base-0's batches and the part of clo-4's done
            assert n_batches < len(generated_before_kill) < 2 * n_batches, len(generated_before_kill)
        previous_kill = target

    start = time.perf_counter()
    final = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    finished = _finished(final.stdout.splitlines())
    assert [name for _, name, status in finished if status == "done"] == ["analysis"]
    print(f"final rerun: {time.perf_counter() - start:.0f} s")

    rows, keys, empty = _cache_rows(cache)
    assert rows == keys and empty == 0 and (rows, keys) == _cache_rows(tmp_path / "cache-ref")[:2]
    # The generation cache: the uninterrupted run's entries exactly (no torn or duplicated one), the
    # entries written before the kill unchanged, and the evaluation rerun generated only the rest.
    rows, keys, _ = _cache_rows(cache, "generations.sqlite")
    assert rows == keys == 2 * n_batches + 2 * n_batches  # each prompt's answer batch and its reference score
    generated, scored = _evaluation_cache(cache)
    assert (generated, scored) == _evaluation_cache(tmp_path / "cache-ref")
    assert all(generated[key] == answers for key, answers in generated_before_kill.items())
    cached_for_clo = len(generated_before_kill) - n_batches
    assert _generation_batches(ca / "clo-4") == {"total": n_batches, "from_cache": cached_for_clo}
    assert _generation_batches(ca / "base-0") == {"total": n_batches, "from_cache": 0}
    assert _results(root) == _results(tmp_path / "ref" / "kill")
    assert (root / "REPORT.md").exists() and list((root / "figures").glob("*.png"))
    for record in root.rglob("stage-*.json"):
        assert json.loads(record.read_text())["complete"] is True, record
    assert not list(root.rglob("*.stale")) and not list(root.rglob(".stale-eval"))
    timings = json.loads((root / "timings.json").read_text())
    assert len(timings["invocations"]) == 5
