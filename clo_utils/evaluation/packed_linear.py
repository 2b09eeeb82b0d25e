"""Inference on a CPU with every linear layer through oneDNN, its weight packed once.

PyTorch computes a CPU linear layer with MKL's sgemm. oneDNN's matmul on a weight reordered once into its
blocked layout (the two ops inductor's CPU weight freezing uses: mkldnn._reorder_linear_weight and
mkldnn._linear_pointwise) is faster on the 2-core AMD EPYC (AVX-512) the kit is measured on: one thread,
fp32, at the shapes of a decode step of SmolLM2-135M, 102 against 74 GFLOP/s (48 x 576 -> 1536) and 92-98
against 51 (the LM head, 48 x 576 -> 49152); the evaluation loop's time on the generation benchmark's
prompts drops by ~20% (benchmarks/generation.py). On other CPUs the gain is unmeasured. The arithmetic is
fp32 either way, summed in another order: outputs agree to ~1e-6 and greedy answers are compared in the
benchmark and the tests.

`packed_linears(model)` packs for the length of a `with` block: one more copy of the linear weights in
memory (537 MB for SmolLM2-135M in fp32), freed on exit. It applies to a model on a CPU whose linear
weights are all fp32 and at most PACK_MAX_BYTES, under no-grad or inference mode; on any other model, or a
PyTorch without the ops, the block runs the model unchanged. `linear_backend(model)` names which one
applies: generation and scoring put it in their cache keys.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)

PACKED = "onednn-packed"
DEFAULT = "aten"
# The packed copy doubles the linear weights' memory while it lives: larger models keep torch's path
# (2 GiB of fp32 linear weights: about 0.5B parameters; SmolLM2-135M has 537 MB).
PACK_MAX_BYTES = 2 * 1024**3


def _linears(model) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


@functools.cache
def _ops_available() -> bool:
    """Whether this PyTorch has the two ops and they compute a small linear layer right on this CPU."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        weight, bias, x = torch.randn(24, 16), torch.randn(24), torch.randn(3, 16)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        out = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        return bool(torch.allclose(out, torch.nn.functional.linear(x, weight, bias), atol=1e-5))
    except (AttributeError, RuntimeError, NotImplementedError) as err:
        log.info("linear layers stay on torch's default path: %s", err)
        return False


def linear_backend(model) -> str:
    """PACKED when `packed_linears` packs this model's linear layers, else DEFAULT."""
    linears = _linears(model)
    eligible = (
        bool(linears)
        and all(m.weight.device.type == "cpu" and m.weight.dtype == torch.float32 for m in linears)
        and sum(m.weight.numel() * m.weight.element_size() for m in linears) <= PACK_MAX_BYTES
        and _ops_available()
    )
    return PACKED if eligible else DEFAULT


def _packed_forward(module: torch.nn.Linear, packed: torch.Tensor):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32:  # the packed op has no backward
            return torch.nn.functional.linear(x, module.weight, module.bias)
        return torch.ops.mkldnn._linear_pointwise(x, packed, module.bias, "none", [], "")

    return forward


@contextlib.contextmanager
def packed_linears(model) -> Iterator[str]:
    """Within the block, `model`'s linear layers compute through oneDNN on weights packed on entry (when
    `linear_backend(model)` is PACKED); yields the backend in use. A layer already packed by an enclosing
    block is left to it."""
    if linear_backend(model) != PACKED:
        yield DEFAULT
        return
    patched = []
    try:
        for module in _linears(model):
            if "forward" in vars(module):  # packed by an enclosing block, or patched by someone else
                continue
            packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach())
            module.forward = _packed_forward(module, packed)
            patched.append(module)
        yield PACKED
    finally:
        for module in patched:
            del module.forward
