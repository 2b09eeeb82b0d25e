"""Training set-up shared by CLO and the TRL baselines: the Trainer arguments per hardware profile,
fp32 master weights for half-precision models, dropout off, and resuming from the last checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import TrainingArguments

from .precision import choose_precision, parameter_counts

log = logging.getLogger(__name__)

# Padding share allowed per forwarded chunk of a CLO batch on CPU (clo_utils.batching.length_chunks).
CPU_FORWARD_CHUNK_PADDING = 0.1


def training_profile(device: str = "auto", clo: bool = True, model=None) -> dict:
    """Trainer keyword arguments per hardware profile; with `clo`, CLOConfig's own ones too (TRL's
    configs take `clo=False`).

    CPU: fp32 without gradient checkpointing (TRL's defaults, bf16 and checkpointing, are slow on a
    CPU without bf16 arithmetic), and CLO's padded batches forwarded in chunks of rows of similar
    length (CLOConfig.forward_chunk_padding): the time of a CPU step follows the positions computed,
    padding included. GPU: the precision of `clo_utils.precision.choose_precision` (bf16 autocast where
    the GPU has native bf16; otherwise fp32 for a `model` whose fp32 training state is small against
    the GPU's memory, else fp16 autocast with loss scaling); `prepare_mixed_precision` keeps the
    trainable parameters in fp32; one forward per batch, as a large batch keeps the GPU busier than
    several smaller ones. `model` (its trainable set chosen) sizes the fp32 check; without it a GPU
    without bf16 gets fp16.
    """
    counts = parameter_counts(model) if model is not None else (None, None)
    choice = choose_precision(device, *counts)
    if choice.device == "cpu":
        profile = {
            "use_cpu": True,
            "bf16": False,
            "fp16": False,
            "gradient_checkpointing": False,
            "dataloader_num_workers": 0,
        }
        return {**profile, "forward_chunk_padding": CPU_FORWARD_CHUNK_PADDING} if clo else profile
    log.info("precision: %s (%s)", choice.mode, choice.reason)
    profile = {"use_cpu": False, **choice.trainer_flags(), "gradient_checkpointing": False}
    return {**profile, "forward_chunk_padding": None} if clo else profile


def prepare_mixed_precision(model, args: TrainingArguments) -> None:
    """Trainable parameters in fp32 (master weights) when the model is loaded in bf16 or fp16.

    An AdamW update at the paper's lr (8e-6) is smaller than half a bf16 step for every weight above
    about 4e-3, so bf16 weights stepped in place never move. In fp32 the updates accumulate; the
    forward still computes in bf16 under the trainer's autocast (`bf16=True`). Frozen weights stay
    as loaded. Without autocast, fp32 and bf16 weights would meet in one matmul: a clear error.
    """
    half = [n for n, p in model.named_parameters() if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)]
    if not half:
        return
    if not (args.bf16 or args.fp16):
        raise ValueError(
            f"{len(half)} trainable parameter tensors are in half precision (first: {half[0]}) but "
            "the training arguments set no mixed precision: bf16 weights do not take small AdamW "
            "updates. Pass training_profile('gpu', model=model) (bf16 or fp16 autocast), or load the model with "
            "dtype='float32'"
        )
    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
            p.data = p.data.float()
    log.info(
        "mixed precision: %d trainable parameter tensors in fp32, compute in %s",
        len(half),
        "bf16" if args.bf16 else "fp16",
    )


def disable_dropout(model) -> None:
    """Every dropout probability to 0: the nn.Dropout modules (what TRL's disable_dropout_in_model
    does) and the attention-probability dropout that attention modules read as a float."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def resume_checkpoint(config: TrainingArguments) -> str | None:
    """The checkpoint to resume from: the last complete one in the output folder, so a killed run picks up
    where it was; None when the folder holds none. The Trainer writes trainer_state.json after the weights,
    optimizer and RNG state, so a checkpoint without it was cut short by the kill and is passed over (the
    run rewrites it when it gets there again)."""
    out = Path(config.output_dir)
    steps = []
    for folder in out.glob("checkpoint-*") if out.is_dir() else ():
        step = folder.name.removeprefix("checkpoint-")
        if step.isdigit() and (folder / "trainer_state.json").is_file():
            steps.append((int(step), folder))
    return str(max(steps)[1]) if steps else None
