"""The numeric precision a run trains in, chosen from the GPU it has and the size of the model.

The rule (`choose_precision`), for `device="auto"` or `"gpu"`:

- a GPU with native bf16 (compute capability 8.0 and up: A100, L4, RTX 30xx/40xx, H100) trains under
  bf16 autocast; frozen weights stay bf16, the trainable ones are kept in fp32 (master weights);
- a GPU without it (T4, V100: capability 7.x) trains in fp32 when the fp32 training state, 4 bytes per
  weight plus 12 per trainable weight (its gradient and AdamW's two moments), takes at most
  FP32_STATE_SHARE of the GPU's memory: no loss scaling, and the rest of the memory is left to
  activations, which fp32 doubles;
- a larger model on such a GPU trains under fp16 autocast with loss scaling (the Trainer's `fp16=True`:
  accelerate's GradScaler), the weights kept in fp32, so every optimizer step updates fp32 weights;
- a CPU trains in fp32.

torch's `is_bf16_supported()` answers True on a T4, where bf16 is emulated (and slow): the check here
asks for native support only (`including_emulation=False`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

# Share of GPU memory the fp32 training state may take for fp32 training on a GPU without bf16: a tenth
# leaves the rest to fp32 activations, twice the size of half-precision ones, and to the CUDA context.
# On a 15 GiB T4 (limit 1.5 GiB): SmolLM2-135M (0.8 GiB) trains in fp32; SmolLM2-360M (2.2 GiB), Qwen2.5-0.5B
# (2.3 GiB) and larger models train under fp16 autocast.
FP32_STATE_SHARE = 0.1


@dataclass(frozen=True)
class Gpu:
    """What the precision rule needs to know about a GPU."""

    name: str
    memory_bytes: int
    bf16: bool  # native bf16 arithmetic (compute capability >= 8.0)
    capability: tuple[int, int] | None = None


@dataclass(frozen=True)
class Precision:
    """The precision a run trains in and why."""

    mode: str  # bf16 | fp16 | fp32
    device: str  # gpu | cpu
    reason: str
    gpu: str | None = None

    def trainer_flags(self) -> dict:
        """TrainingArguments keywords: autocast (and, for fp16, the gradient scaler)."""
        return {"bf16": self.mode == "bf16", "fp16": self.mode == "fp16"}

    def record(self) -> dict:
        return asdict(self)


def local_gpu() -> Gpu | None:
    """This machine's first CUDA GPU, or None without one."""
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return Gpu(
        name=props.name,
        memory_bytes=int(props.total_memory),
        bf16=bool(torch.cuda.is_bf16_supported(including_emulation=False)),
        capability=(props.major, props.minor),
    )


def fp32_state_bytes(n_params: int, n_trainable: int) -> int:
    """fp32 weights (4 bytes each) plus, per trainable weight, its fp32 gradient (4) and AdamW's two
    fp32 moments (8)."""
    return 4 * n_params + 12 * n_trainable


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def choose_precision(
    device: str = "auto",
    n_params: int | None = None,
    n_trainable: int | None = None,
    gpu: Gpu | None = None,
) -> Precision:
    """The precision rule (module docstring). `gpu`: the GPU to decide for (default: this machine's); `n_params` / `n_trainable`: the model's weights, all and trainable (None: unknown,
    which rules out fp32 on a GPU without bf16)."""
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
    if gpu is None and device != "cpu":
        gpu = local_gpu()
    if device == "cpu" or (device == "auto" and gpu is None):
        return Precision("fp32", "cpu", "no GPU: fp32 on the CPU" if device == "auto" else "device=cpu")
    if gpu is None:
        raise ValueError("device='gpu' but torch finds no CUDA GPU here; use device='auto' or 'cpu'")
    if gpu.bf16:
        return Precision("bf16", "gpu", f"{gpu.name} has native bf16: bf16 autocast, fp32 trainable weights", gpu.name)
    no_bf16 = f"{gpu.name} has no native bf16" + (
        f" (compute capability {gpu.capability[0]}.{gpu.capability[1]})" if gpu.capability else ""
    )
    if n_params is None or n_trainable is None:
        return Precision("fp16", "gpu", f"{no_bf16}; model size unknown: fp16 autocast with loss scaling", gpu.name)
    state, limit = fp32_state_bytes(n_params, n_trainable), FP32_STATE_SHARE * gpu.memory_bytes
    sizes = f"fp32 weights + gradients + AdamW state {_gb(state)}"
    share = f"{FP32_STATE_SHARE:.0%} of its {_gb(gpu.memory_bytes)}"
    if state <= limit:
        return Precision("fp32", "gpu", f"{no_bf16}; {sizes} <= {share}: fp32", gpu.name)
    return Precision("fp16", "gpu", f"{no_bf16}; {sizes} > {share}: fp16 autocast with loss scaling", gpu.name)


def parameter_counts(model) -> tuple[int, int]:
    """(all weights, trainable weights) of a model."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def args_mode(args) -> str:
    """The precision mode set in TrainingArguments."""
    return "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else "fp32"


def precision_record(model, args) -> dict:
    """train.json's `precision` block: the mode the run trained in, the dtypes of its weights, and why
    (the rule's reason when the arguments follow it; otherwise that the arguments set it)."""
    n_params, n_trainable = parameter_counts(model)
    if not torch.cuda.is_available():
        device = "auto"  # the rule's reason: no GPU
    else:
        device = "cpu" if getattr(args, "use_cpu", False) else "gpu"
    rule = choose_precision(device, n_params, n_trainable)
    mode = args_mode(args)
    trainable = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad})
    frozen = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if not p.requires_grad})
    return {
        "mode": mode,
        "autocast": mode if mode != "fp32" else None,
        "loss_scaling": mode == "fp16",
        "trainable_dtype": trainable,
        "frozen_dtype": frozen,
        "device": rule.device,
        "gpu": rule.gpu,
        "reason": rule.reason
        if rule.mode == mode
        else f"set by the training arguments (the rule says {rule.mode}: {rule.reason})",
    }
