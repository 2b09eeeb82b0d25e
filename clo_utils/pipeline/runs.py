"""Run-folder glue for the training notebooks: read a data folder, label and save a run.

A run folder is complete when its train.json exists: it is written last, after the weights,
so the batch runner can tell a finished stage from one killed midway (docs/run-layout.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from ..common.runfiles import read_jsonl, read_manifest, write_train
from ..data import check_seed_rows
from ..models import model_label, run_labels


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
    merge_lora: bool = False,
) -> Path:
    """Save weights (safetensors; a peft adapter for LoRA) and tokenizer under model/, then train.json.

    Through `trainer.save_model`, so under accelerate (DDP, DeepSpeed ZeRO-3, FSDP) the weights are
    gathered and written once, by the main process; train.json too. `histories` maps a stage name
    ("sft", "dpo", "clo") to its Trainer log history. `merge_lora` saves a LoRA model's merged weights
    instead of its adapter: SFT+DPO's adapter sits on SFT-merged weights, which an adapter alone loses.
    """
    out = Path(output_dir)
    if merge_lora and hasattr(trainer.model, "merge_and_unload"):
        if trainer.accelerator.num_processes > 1:
            raise NotImplementedError(
                "saving merged LoRA weights (SFT+DPO with trainable=lora) runs in one process; "
                "train it without accelerate launch, or with trainable=attention"
            )
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        merged.save_pretrained(str(out / "model"), safe_serialization=True)
        trainer.processing_class.save_pretrained(str(out / "model"))
    else:
        trainer.save_model(str(out / "model"))  # collective under ZeRO-3/FSDP: every process calls it
    if not trainer.is_world_process_zero():
        return out / "train.json"
    history = [{**h, "stage": stage} for stage, hist in histories.items() for h in hist]
    write_train(out, {"run": run, "history": history, "summary": summary})
    if not keep_checkpoints:  # checkpoints only serve resuming this run, which is now complete
        for folder in out.glob("checkpoints*"):
            shutil.rmtree(folder, ignore_errors=True)
    return out / "train.json"


# --------------------------------------------------------------------------- SFT+DPO from a finished SFT run

# The notebook parameters an SFT+DPO run must share with the SFT run whose model starts its DPO stage:
# with them equal (and the same seeds, by id and content: `seeds_digest`), that SFT stage is the one
# SFT+DPO would train itself. The data folder is compared by the seeds it gave, not by its path, so a
# moved runs folder or clone still finds its SFT run.
SFT_SETTINGS = (
    "n_seeds",
    "variant",
    "model_id",
    "trainable",
    "lora_r",
    "learning_rate",
    "num_train_epochs",
    "batch_seeds",
    "gradient_accumulation_steps",
    "warmup",
    "lr_scheduler_type",
    "max_length",
    "device",
    "dtype",
    "chat_template",
    "system_prompt",
    "seed",
)


def sft_settings(params: dict) -> dict:
    """The SFT_SETTINGS of a training notebook's parameters (its globals())."""
    missing = [k for k in SFT_SETTINGS if k not in params]
    if missing:
        raise KeyError(f"sft_settings needs the notebook parameters {missing}")
    return {k: params[k] for k in SFT_SETTINGS}


def seeds_digest(seeds: list[dict]) -> str:
    """sha256 of the seed rows a run trains on: the data compared by content, wherever its folder lies."""
    return hashlib.sha256(json.dumps(seeds, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def dpo_stage_settings(params: dict) -> dict:
    """The DPO stage's learning rate, epochs and beta from a training notebook's parameters (its
    globals()): dpo_learning_rate and dpo_epochs at 0 take the SFT stage's learning_rate and
    num_train_epochs."""
    return {
        "learning_rate": params["dpo_learning_rate"] or params["learning_rate"],
        "num_train_epochs": params["dpo_epochs"] or params["num_train_epochs"],
        "beta": params["dpo_beta"],
    }


def run_relative(path: str | os.PathLike, run_dir: str | os.PathLike) -> str:
    """`path` as seen from the folder holding `run_dir` ("sft-4" for a sibling run): recorded instead of
    an absolute path, so a record stays true after its runs folder moves."""
    return Path(os.path.relpath(Path(path).resolve(), Path(run_dir).resolve().parent)).as_posix()


def check_sft_run(
    sft_run_dir: str | os.PathLike, settings: dict, seed_ids: list[str], seeds_sha256: str | None = None
) -> dict:
    """train.json of a finished SFT run, after checking that it is the SFT stage this SFT+DPO run would
    train itself: plain SFT (no DPO stage), the same settings (SFT_SETTINGS) and the same seeds (ids, and
    with `seeds_sha256` their content: `seeds_digest`). Paths are not compared: runs folders move."""
    from ..common.runfiles import read_train

    path = Path(sft_run_dir) / "train.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: sft_run_dir holds no finished SFT run; train it first (02_sft_baseline), or set "
            'sft_run_dir="" to train the SFT stage in this run'
        )
    record = read_train(sft_run_dir)
    run = record.get("run") or {}
    if run.get("then_dpo") or run.get("variant") is None:
        raise ValueError(
            f"{path}: not a plain SFT run of 02_sft_baseline (variant {run.get('variant')!r}, "
            f"then_dpo {run.get('then_dpo')!r})"
        )
    recorded = run.get("sft_settings")
    if recorded is None:
        raise ValueError(f"{path}: trained before SFT settings were recorded; retrain that SFT run")
    differ = {k: (recorded.get(k), v) for k, v in settings.items() if recorded.get(k) != v}
    if differ:
        listed = "; ".join(f"{k}: {found!r} there, {want!r} here" for k, (found, want) in differ.items())
        raise ValueError(
            f"{path}: the SFT run differs from this run's settings ({listed}); SFT+DPO starts only "
            "from the SFT run it would train itself"
        )
    if run.get("seed_ids") != list(seed_ids):
        raise ValueError(
            f"{path}: the SFT run trained on other seeds than this run's {len(seed_ids)}; "
            "rerun the data stage and both runs"
        )
    if seeds_sha256 is not None and run.get("seeds_sha256") != seeds_sha256:
        raise ValueError(
            f"{path}: the SFT run's seeds differ in content from this run's (seeds_sha256 "
            f"{run.get('seeds_sha256')!r} there, {seeds_sha256!r} here): rerun the data stage and both runs"
        )
    return record


def keep_fp32_masters(model, model_dir: str | os.PathLike) -> int:
    """Put back the fp32 values of the weights a run saved in fp32 (its trainable weights: the fp32
    master copies of a bf16 run, `train_setup.prepare_mixed_precision`) into a model loaded in half
    precision, which rounded them. The DPO stage of SFT+DPO then starts from the SFT stage's exact
    weights, as it does when it follows SFT in one run. Returns the number of tensors put back."""
    from safetensors import safe_open

    params = dict(model.named_parameters())
    restored = 0
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as saved:
            for name in saved.keys():
                p = params.get(name)
                if p is not None and p.dtype in (torch.bfloat16, torch.float16):
                    if saved.get_slice(name).get_dtype() == "F32":
                        p.data = saved.get_tensor(name).to(p.device)
                        restored += 1
    return restored


def load_sft_run_model(sft_run_dir: str | os.PathLike, dtype: str = "auto"):
    """(model, tokenizer) of a finished SFT run, as its DPO stage starts from it: full weights with the
    fp32 master copies kept (`keep_fp32_masters`), or a LoRA run's adapter merged into its base."""
    from ..models import load_model_and_tokenizer, load_tokenizer, resolve_dtype

    model_dir = Path(sft_run_dir) / "model"
    if (model_dir / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype))
        return model.merge_and_unload(), load_tokenizer(str(model_dir))
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: the SFT run saved no model; train it first (02_sft_baseline)")
    model, tokenizer = load_model_and_tokenizer(str(model_dir), dtype=dtype)
    keep_fp32_masters(model, model_dir)
    return model, tokenizer


def sft_model_for_dpo(model, trainable: str, lora_r: int):
    """The SFT model as the DPO stage's start and reference. With LoRA the SFT adapter is merged and a
    fresh adapter trains, so that adapters off (the reference, in either trainer) is the SFT model, not the
    untouched one; the other trainable sets continue on the same parameters."""
    from ..models import select_trainable

    if trainable != "lora":
        return model
    return select_trainable(model.merge_and_unload(), "lora", lora_r=lora_r)[0]
