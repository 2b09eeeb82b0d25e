"""The pre-flight memory estimate: GPU memory per training process for a recipe that names its GPU.

A recipe's `gpu:` key names the card each training process runs on: `{type: t4}` (a type of GPU_TYPES)
or `{memory_gb: 24, bf16: true}`. For every trained method the estimate, in bytes, is

    weights      frozen weights x 2 (loaded in bf16/fp16) or x 4 (fp32)
  + master       4 x trainable weights (kept in fp32: train_setup.prepare_mixed_precision)
  + gradients    4 x trainable weights (fp32)
  + optimizer    8 x trainable weights (AdamW's two fp32 moments)
  + casts        2 x the linear weights held in fp32, under autocast (the half copies autocast keeps
                 for the backward pass: every layer's with fp32-loaded weights, the trainable ones otherwise)
  + activations  sequences per step x max_length x (layers x A + 8 x vocab)

A is what autograd keeps per token and layer, in bytes, fitted on CPU to saved-tensor measurements
of Llama-shaped models (h: hidden size, kv: key/value width = kv heads x head dim, I: intermediate):

    attention-only or LoRA:  fp32 20h + 8kv + 12I;  autocast, fp32 weights 18h + 4kv + 6I;
                             autocast, half weights 14h + 4kv + 6I
    full:                    fp32 35h + 8kv + 16I;  autocast 32h + 4kv + 8I

and 8 x vocab per token is the fp32 log-softmax kept for backward plus the fp32 copy of the logits
(an upper bound: CLO keeps logits on response positions only). The sequences per step are CLO's 4 per
seed, SFT's 2 per seed (1 for the en / tgt variants) and the DPO stage's 4 per seed. A run fits when the
estimate is at most USABLE_SHARE of the GPU's memory (the rest: CUDA context, allocator slack, the
transient buffers of the backward pass). The precision is the one the run would choose on that GPU
(clo_utils.precision). It is an estimate: no run on these GPUs has measured it.

Shapes come from the model's own config when it is a local or embedded model, else from the kit's table
of published configs (assets/model_shapes.json), so the estimate works offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..common.methods import NB_CLO, split_method
from ..precision import Gpu, choose_precision
from .recipe import RecipeError

GiB = 2**30
USABLE_SHARE = 0.9
# GPU types a recipe may name: (name, memory in GiB as the driver reports it, native bf16).
GPU_TYPES = {
    "t4": ("Tesla T4", 15.0, False),
    "v100-16gb": ("Tesla V100 16GB", 16.0, False),
    "v100-32gb": ("Tesla V100 32GB", 32.0, False),
    "a10g": ("NVIDIA A10G", 22.5, True),
    "l4": ("NVIDIA L4", 22.5, True),
    "rtx3090": ("NVIDIA GeForce RTX 3090", 24.0, True),
    "rtx4090": ("NVIDIA GeForce RTX 4090", 24.0, True),
    "a6000": ("NVIDIA RTX A6000", 48.0, True),
    "l40s": ("NVIDIA L40S", 45.0, True),
    "a100-40gb": ("NVIDIA A100 40GB", 40.0, True),
    "a100-80gb": ("NVIDIA A100 80GB", 80.0, True),
    "h100-80gb": ("NVIDIA H100 80GB", 80.0, True),
}
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
# Activation bytes per token and layer: (h, kv, I) coefficients by trainable set and precision case.
ACTIVATION_COEFFICIENTS = {
    ("attention", "fp32"): (20, 8, 12),
    ("attention", "autocast-fp32-weights"): (18, 4, 6),
    ("attention", "autocast-half-weights"): (14, 4, 6),
    ("full", "fp32"): (35, 8, 16),
    ("full", "autocast-fp32-weights"): (32, 4, 8),
    ("full", "autocast-half-weights"): (32, 4, 8),
}
LOGIT_BYTES = 8


def published_shapes() -> dict[str, dict]:
    text = resources.files("clo_utils").joinpath("assets/model_shapes.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def model_shape(model_id: str) -> tuple[dict | None, str]:
    """(shape, where it came from): a local or embedded model's config.json, else the kit's table."""
    from ..common.runfiles import run_path

    folder = None
    if str(model_id).startswith("embedded:"):
        from ..models import EMBEDDED_MODELS, embedded_model_dir

        if model_id in EMBEDDED_MODELS:
            folder = embedded_model_dir(model_id)
    elif run_path(model_id).is_dir() or Path(model_id).expanduser().is_dir():
        folder = run_path(model_id) if run_path(model_id).is_dir() else Path(model_id).expanduser()
    if folder is not None and (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text(encoding="utf-8")), f"{folder}/config.json"
    shape = published_shapes().get(model_id)
    return (shape, "the kit's table of published configs") if shape else (None, "")


@dataclass
class Counts:
    weights: int  # every weight
    trainable: int
    linear: int  # weights of the decoder layers' linear modules (what autocast copies)
    trainable_linear: int


def parameter_counts(shape: dict, trainable: str, lora_r: int = 16) -> Counts:
    """Weights of a decoder-only model from its config: embeddings (twice when untied), per layer the
    attention projections (with biases when attention_bias) and the gated MLP, the norms."""
    h, layers, v = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]
    heads = shape["num_attention_heads"]
    head_dim = shape.get("head_dim") or h // heads
    q, kv = heads * head_dim, shape.get("num_key_value_heads", heads) * head_dim
    bias = bool(shape.get("attention_bias"))
    attention = h * q + 2 * h * kv + q * h + (q + 2 * kv if bias else 0)
    mlp = 3 * h * shape["intermediate_size"]
    layer = attention + mlp + 2 * h
    weights = v * h * (1 if shape.get("tie_word_embeddings", True) else 2) + layers * layer + h
    if trainable == "attention":
        train = layers * attention
    elif trainable == "lora":
        train = layers * lora_r * ((h + q) + 2 * (h + kv) + (q + h))
    elif trainable == "full":
        train = weights
    else:
        raise ValueError(f"trainable must be attention, full or lora, got {trainable!r}")
    trainable_linear = layers * (attention + (mlp if trainable == "full" else 0)) if trainable != "lora" else train
    return Counts(weights, train, layers * (attention + mlp), trainable_linear)


def _millions(n: int) -> str:
    return f"{n / 1e6:,.0f}M" if n >= 1e7 else f"{n / 1e6:.2g}M"


@dataclass
class Estimate:
    model_id: str
    method: str
    trainable: str
    precision: str
    reason: str
    sequences: int
    max_length: int
    gpu: Gpu
    counts: Counts
    parts: dict[str, float] = field(default_factory=dict)  # bytes

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def usable(self) -> float:
        return USABLE_SHARE * self.gpu.memory_bytes

    @property
    def fits(self) -> bool:
        return self.total <= self.usable

    def line(self) -> str:
        parts = " + ".join(f"{name} {value / GiB:.2f}" for name, value in self.parts.items())
        return (
            f"{self.method}: {self.model_id}, {self.trainable} ({_millions(self.counts.weights)} weights, "
            f"{_millions(self.counts.trainable)} trainable), {self.sequences} sequences x {self.max_length} "
            f"tokens per step, {self.precision} on {self.gpu.name}: {parts} = {self.total / GiB:.1f} GiB of "
            f"{self.usable / GiB:.1f} GiB usable ({USABLE_SHARE:.0%} of {self.gpu.memory_bytes / GiB:.1f} GiB): "
            + ("fits" if self.fits else "DOES NOT FIT")
        )


def estimate(
    model_id: str,
    shape: dict,
    gpu: Gpu,
    *,
    method: str = "clo",
    trainable: str = "attention",
    lora_r: int = 16,
    dtype: str = "auto",
    sequences: int = 4,
    max_length: int = 512,
) -> Estimate:
    """The memory estimate of one training run on `gpu` (module docstring)."""
    counts = parameter_counts(shape, trainable, lora_r)
    choice = choose_precision("gpu", counts.weights, counts.trainable, gpu=gpu)
    if dtype == "auto":
        weight_bytes = 2 if gpu.bf16 else 4  # models.resolve_dtype for training
    elif dtype in DTYPE_BYTES:
        weight_bytes = DTYPE_BYTES[dtype]
    else:
        raise ValueError(f"dtype must be auto or one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    t = counts.trainable
    casts = 0
    if choice.mode != "fp32":
        casts = 2 * (counts.linear if weight_bytes == 4 else counts.trainable_linear)
    case = "fp32" if choice.mode == "fp32" else f"autocast-{'fp32' if weight_bytes == 4 else 'half'}-weights"
    ch, ckv, ci = ACTIVATION_COEFFICIENTS[("full" if trainable == "full" else "attention", case)]
    heads = shape["num_attention_heads"]
    head_dim = shape.get("head_dim") or shape["hidden_size"] // heads
    kv = shape.get("num_key_value_heads", heads) * head_dim
    per_token = (
        shape["num_hidden_layers"] * (ch * shape["hidden_size"] + ckv * kv + ci * shape["intermediate_size"])
        + LOGIT_BYTES * shape["vocab_size"]
    )
    parts = {
        "weights": (counts.weights - t) * weight_bytes,
        "fp32 trainable": 4 * t,
        "gradients": 4 * t,
        "AdamW": 8 * t,
        "autocast copies": casts,
        "activations": sequences * max_length * per_token,
    }
    return Estimate(model_id, method, trainable, choice.mode, choice.reason, sequences, max_length, gpu, counts, parts)


def recipe_gpu(recipe: dict) -> Gpu | None:
    """The GPU the recipe names (its `gpu:` key), or None."""
    spec = recipe.get("gpu")
    if not spec:
        return None
    name, memory, bf16 = GPU_TYPES[spec["type"]] if spec.get("type") else ("the recipe's GPU", None, None)
    memory = spec.get("memory_gb") or memory
    bf16 = spec["bf16"] if spec.get("bf16") is not None else bf16
    return Gpu(name=name, memory_bytes=int(memory * GiB), bf16=bool(bf16))


def sequences_per_step(notebook: str, batch_seeds: int, variant: str, then_dpo: bool) -> int:
    """Sequences one training step forwards per process: CLO and the DPO stage 4 per seed (chosen and
    rejected in both directions), SFT 2 per seed (both) or 1 (en / tgt)."""
    if notebook == NB_CLO or then_dpo:
        return 4 * batch_seeds
    return (2 if variant == "both" else 1) * batch_seeds


def memory_check(recipe: dict) -> list[str]:
    """One line per trained method with its estimate on the recipe's GPU; RecipeError, with the numbers,
    for a method that does not fit. No `gpu:` key: no lines."""
    from .preflight import _line_of, _value

    gpu = recipe_gpu(recipe)
    if gpu is None or not (recipe.get("budgets") and recipe.get("methods")):
        return []
    lines, too_big = [], []
    for method in recipe["methods"]:
        _, notebook, fixed = split_method(method)

        def value(param, notebook=notebook, method=method, fixed=fixed):
            return fixed[param] if param in fixed else _value(recipe, "train", param, notebook, method)

        if value("device") == "cpu":
            lines.append(f"{method}: device=cpu, no GPU estimate")
            continue
        model_id = value("model_id")
        shape, source = model_shape(model_id)
        if shape is None or "hidden_size" not in shape:
            lines.append(f"{method}: {model_id}: shape unknown offline (not in the kit's table), no estimate")
            continue
        variant = value("variant") if notebook != NB_CLO else "both"
        then_dpo = bool(value("then_dpo")) if notebook != NB_CLO else False
        est = estimate(
            model_id,
            shape,
            gpu,
            method=method,
            trainable=value("trainable"),
            lora_r=value("lora_r"),
            dtype=value("dtype"),
            sequences=sequences_per_step(notebook, value("batch_seeds"), variant, then_dpo),
            max_length=value("max_length"),
        )
        lines.append(f"{est.line()} [shapes: {source}]")
        if not est.fits:
            too_big.append(est)
    if too_big:
        raise RecipeError(
            "\n".join(
                f"{_line_of(recipe, 'gpu')}: {est.line()}; lower train.batch_seeds (raise "
                "gradient_accumulation_steps to keep the batch) or max_length, train fewer weights "
                "(trainable: lora), or name a larger GPU"
                for est in too_big
            )
        )
    return lines
