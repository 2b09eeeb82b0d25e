"""Tiny random models built from the real architectures' configs, with a locally trained tokenizer.

No weights are fetched: these exercise the full-scale code paths (Llama, Qwen2, Mistral, Gemma3)
on CPU in milliseconds. Quality is meaningless; shapes, masks, names and gradients are real.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A Llama-3-style template that renders BOS itself (the case where BOS could be doubled).
BOS_TEMPLATE = "{{ bos_token }}" + CHATML

CORPUS = [
    "Hello, how are you? I am fine, thank you.",
    "What is the capital of France? The capital of France is Paris.",
    "Hola, com estàs? Estic bé, gràcies. La capital de França és París.",
    "Hola, ¿cómo estás? Estoy bien, gracias. La capital de Francia es París.",
    "Write a short poem about the sea. The sea is blue and wide.",
    "Escriu un poema curt sobre el mar. El mar és blau i ample.",
    "List three fruits: apple, banana, cherry. 1. 2. 3. - * ``` code print('hi')",
    "system user assistant You are a helpful assistant.",
]
SPECIALS = ["<pad>", "<s>", "<|im_start|>", "<|im_end|>", "<unk>"]


def make_tokenizer(template: str = CHATML) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.chat_template = template
    return fast


def make_turn_end_tokenizer() -> PreTrainedTokenizerFast:
    """ChatML whose turn end `<|im_end|>` is a special token other than EOS (`<|endoftext|>`), as in
    Qwen2.5 base: stopping at EOS alone runs past the end of the answer."""
    tok = make_tokenizer()
    tok.add_special_tokens({"eos_token": "<|endoftext|>"})
    return tok


def make_model(
    arch: str = "llama", vocab_size: int = 512, seed: int = 0, dtype: torch.dtype = torch.float32, **config_overrides
):
    """A 2-layer random model of the named architecture (real config class, real modules)."""
    from transformers import Gemma3TextConfig, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=3,
    )
    configs = {
        "llama": lambda: LlamaConfig(**common),
        "qwen2": lambda: Qwen2Config(**common),
        "mistral": lambda: MistralConfig(**common, sliding_window=None),
        "gemma3": lambda: Gemma3TextConfig(**common, head_dim=8, sliding_window=64),
        "gpt2": lambda: GPT2Config(
            vocab_size=vocab_size,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=256,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=3,
        ),
    }
    torch.manual_seed(seed)
    config = configs[arch]()
    for key, value in config_overrides.items():
        setattr(config, key, value)
    config._attn_implementation = "eager"
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def make_gemma3_multimodal(vocab_size: int = 512, seed: int = 0):
    """A tiny Gemma 3 image-text model: a SigLIP vision tower and a Gemma 3 text tower, both with
    self_attn.q/k/v/o projections."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=64,
        max_position_embeddings=256,
    )
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=8
    )
    torch.manual_seed(seed)
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        image_token_index=vocab_size - 1,
        boi_token_index=vocab_size - 2,
        eoi_token_index=vocab_size - 3,
    )
    return Gemma3ForConditionalGeneration(config)


def seed_rows(n: int = 4, lang: str = "ca") -> list[dict]:
    base = [
        (
            "What is the capital of France?",
            "The capital of France is Paris.",
            "Quina és la capital de França?",
            "La capital de França és París.",
        ),
        (
            "Write a short poem about the sea.",
            "The sea is blue and wide.",
            "Escriu un poema curt sobre el mar.",
            "El mar és blau i ample.",
        ),
        ("How are you?", "I am fine, thank you.", "Com estàs?", "Estic bé, gràcies."),
        ("List three fruits.", "1. apple 2. banana 3. cherry", "Llista tres fruites.", "1. poma 2. plàtan 3. cirera"),
    ]
    rows = []
    for i in range(n):
        pe, re_, pt, rt = base[i % len(base)]
        rows.append(
            {"id": f"s{i}", "lang": lang, "prompt_en": pe, "response_en": re_, "prompt_tgt": pt, "response_tgt": rt}
        )
    return rows


def save_tiny_llama(model_dir):
    """A tiny random Llama and its tokenizer saved in `model_dir` (a local model id for recipes)."""
    tok = make_tokenizer()
    make_model("llama", vocab_size=len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir


def tiny_recipe(model_dir, **top) -> dict:
    """A recipe training and evaluating the tiny model of `model_dir` on the smoke data in seconds; `top`
    sets or replaces top-level keys (name, languages, budgets, methods, ...)."""
    model = str(model_dir)
    return {
        "name": "tiny",
        "seed": 0,
        "data": {"data_source": "smoke", "n_eval": 3, "tokenizer_id": model, "apertium_procs": 1},
        "train": {"model_id": model, "device": "cpu", "batch_seeds": 2, "max_length": 512, "learning_rate": 1e-3},
        "evaluate": {"base_model_id": model, "max_prompts": 3, "max_new_tokens": 8, "batch_size": 3},
        "analysis": {"formats": ["png"]},
        **top,
    }


def clo_config(tmp_path, **overrides):
    """A CLOConfig for a few CPU steps of a tiny model, writing under tmp_path."""
    from clo_utils.train import CLOConfig

    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=3,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        seed=0,
        ref_cache_dir=str(tmp_path / "ref"),
        report_to="none",
        disable_tqdm=True,
    )
    return CLOConfig(**{**base, **overrides})
