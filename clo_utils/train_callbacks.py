"""Trainer callbacks that record what a training run cost and did: wall time, peak memory, and the
share of trainable weights that moved (for train.json's summary block)."""

from __future__ import annotations

import logging
import resource
import sys
import time

import torch
from transformers import TrainerCallback

log = logging.getLogger(__name__)


def peak_memory_mb() -> float:
    """Peak GPU memory allocated (CUDA) or peak resident memory of this process (CPU), in MB."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


class PeakMemoryCallback(TrainerCallback):
    """Records wall time and peak memory of training into `summary` (read by train.json writers)."""

    def __init__(self):
        self.summary: dict[str, float] = {}
        self._start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()

    def on_train_end(self, args, state, control, **kwargs):
        seconds = time.perf_counter() - self._start
        self.summary.update(
            train_seconds=seconds,
            peak_memory_mb=peak_memory_mb(),
            seconds_per_step=seconds / max(state.global_step, 1),
            steps=state.global_step,
        )


class TrainableChangeCallback(TrainerCallback):
    """Records `trainable_changed_fraction` into `summary`: the share of trainable elements whose value
    differs from the start of training, and warns when it is near zero (weights that never move, as
    with bf16 weights stepped in place). `trainable_changed_fraction_bf16` is the share that still
    differs once start and end are rounded to bf16: what an evaluation loading the saved fp32 master
    weights in bf16 (dtype "auto" on a GPU) sees move. The snapshot costs one copy of the trainable
    parameters in host memory."""

    def __init__(self, warn_below: float = 0.01):
        self.summary: dict[str, float | None] = {}
        self.warn_below = warn_below
        self._start: dict[str, torch.Tensor] = {}
        self._from_step = 0

    @staticmethod
    def _trainable(model):
        for name, p in model.named_parameters():
            if p.requires_grad:
                t = p.detach()
                yield name, (t.to_local() if hasattr(t, "to_local") else t)  # FSDP2: this process's shard

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # A resumed run starts from its checkpoint: the fraction then counts from that step (recorded).
        self._from_step = state.global_step
        self._start = {name: t.to("cpu", copy=True) for name, t in self._trainable(model)}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        changed = changed_bf16 = total = 0
        for name, t in self._trainable(model):
            if name in self._start and self._start[name].shape == t.shape:
                t, start = t.cpu(), self._start[name]
                changed += int((t != start).sum())
                if t.is_floating_point():
                    changed_bf16 += int((t.to(torch.bfloat16) != start.to(torch.bfloat16)).sum())
                total += t.numel()
        self._start = {}
        fraction = changed / total if total else None  # None: no local elements (ZeRO-3 partitions)
        self.summary["trainable_changed_fraction"] = fraction
        self.summary["trainable_changed_fraction_bf16"] = changed_bf16 / total if total else None
        self.summary["trainable_changed_from_step"] = self._from_step
        if fraction is not None and state.global_step > self._from_step and fraction < self.warn_below:
            log.warning(
                "after %d optimizer steps only %.4f%% of the trainable elements differ from the start: the "
                "weights barely learn (bf16 weights without fp32 master copies? a learning rate of 0?)",
                state.global_step,
                100 * fraction,
            )


def summary_callbacks() -> tuple[PeakMemoryCallback, TrainableChangeCallback]:
    """A fresh pair of recording callbacks for one training run."""
    return PeakMemoryCallback(), TrainableChangeCallback()
