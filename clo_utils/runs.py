"""Run-folder glue for the training notebooks: read a data folder, label and save a run.

A run folder is complete when its train.json exists: it is written last, after the weights,
so the batch runner can tell a finished stage from one killed midway (docs/run-layout.md).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from .data import check_seed_rows
from .models import EMBEDDED_MODELS, model_label
from .runfiles import read_jsonl, read_manifest, write_train


def set_threads(num_threads: int) -> None:
    """0 keeps torch's default; the batch runner passes 1 when it runs two stages side by side."""
    if num_threads > 0:
        torch.set_num_threads(num_threads)


def load_train_seeds(data_dir: str | os.PathLike, n_seeds: int) -> list[dict]:
    """The first `n_seeds` translated seeds: budgets are nested because seeds_train is in sampling order."""
    read_manifest(data_dir)
    path = Path(data_dir) / "seeds_train.jsonl"
    rows = check_seed_rows(read_jsonl(path), str(path))
    if n_seeds <= 0:
        raise ValueError(f"n_seeds must be > 0, got {n_seeds}")
    if len(rows) < n_seeds:
        raise ValueError(
            f"{path} holds {len(rows)} seeds but n_seeds={n_seeds} was asked: rerun 01 with "
            f"n_seeds >= {n_seeds} (the largest budget of the recipe)"
        )
    return rows[:n_seeds]


def run_labels(model_id: str, manifest: dict, n_seeds: int) -> list[str]:
    """Caveats every reported number of this run must carry."""
    labels = []
    if model_id in EMBEDDED_MODELS:
        labels.append(f"{model_label(model_id)}")
    translator = manifest.get("translator") or {}
    # A manifest records the translator as Translator.describe() or as a label such as "apertium:eng-cat".
    backend = translator.get("backend", "") if isinstance(translator, dict) else str(translator)
    if backend.startswith("apertium"):
        labels.append("Apertium rule-based MT")
    if 0 < n_seeds < 1000:  # base-0 (0 seeds) is the untouched model: no budget to label
        labels.append(f"tiny budget ({n_seeds} seeds)")
    return labels


def run_info(
    *,
    method: str,
    n_seeds: int,
    model_id: str,
    data_dir: str,
    trainable: str,
    seed: int,
    recipe: str = "",
    nll_on: str | None = None,
    **extra,
) -> dict:
    """The "run" block of train.json / metrics.json."""
    manifest = read_manifest(data_dir)
    translator = manifest.get("translator") or {}
    return {
        "recipe": recipe,
        "lang": manifest.get("lang"),
        "method": method,
        "n_seeds": n_seeds,
        "model_id": model_id,
        "model_label": model_label(model_id),
        "trainable": trainable,
        "nll_on": nll_on,
        "translator": translator.get("label") or translator.get("backend"),
        "seed": seed,
        "system_prompt": manifest.get("system_prompt"),
        "labels": run_labels(model_id, manifest, n_seeds),
        **extra,
    }


def save_run(
    output_dir: str | os.PathLike,
    trainer,
    run: dict,
    histories: dict[str, list],
    summary: dict,
    keep_checkpoints: bool = False,
) -> Path:
    """Save weights (safetensors; a peft adapter for LoRA) and tokenizer under model/, then train.json.

    Through `trainer.save_model`, so under accelerate (DDP, DeepSpeed ZeRO-3, FSDP) the weights are
    gathered and written once, by the main process; train.json too. `histories` maps a stage name
    ("sft", "dpo", "clo") to its Trainer log history.
    """
    out = Path(output_dir)
    trainer.save_model(str(out / "model"))  # collective under ZeRO-3/FSDP: every process calls it
    if not trainer.is_world_process_zero():
        return out / "train.json"
    history = [{**h, "stage": stage} for stage, hist in histories.items() for h in hist]
    write_train(out, {"run": run, "history": history, "summary": summary})
    if not keep_checkpoints:  # checkpoints only serve resuming this run, which is now complete
        for folder in out.glob("checkpoints*"):
            shutil.rmtree(folder, ignore_errors=True)
    return out / "train.json"
