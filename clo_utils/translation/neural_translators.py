"""Neural translation backends: Hugging Face encoder-decoder MT models and a prompted chat LLM.

  M2M100Translator  facebook/m2m100_1.2B, the paper's translator (GPU recommended)
  NllbTranslator    facebook/nllb-200-distilled-600M (FLORES-200 codes from the language registry)
  MarianTranslator  Helsinki-NLP/opus-mt-en-<x> (one model per pair; not every pair exists on the hub)
  ChatTranslator    a prompted instruct LLM through its chat template

Models load on the first batch; by default on CUDA in bf16/fp16 when available, else CPU fp32.
"""

from __future__ import annotations

import logging

from ..common.cache import cache_key
from ..common.languages import Language
from ..common.text import chat_messages
from .segments import tidy
from .translators import SOURCE_LANG, Translator, TranslatorError

log = logging.getLogger(__name__)


def _default_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _default_dtype(device: str, dtype):
    """bf16 on GPUs that have it, else fp16 on GPU; fp32 on CPU."""
    import torch

    from ..models import resolve_dtype

    if dtype is not None and dtype != "auto":
        return resolve_dtype(dtype)
    if device.startswith("cuda"):
        return resolve_dtype("auto", inference=True)  # native bf16 only: emulated bf16 on a T4 is slow
    return torch.float32


class LocalModelTranslator(Translator):
    """A model run in this process: `model` (None: the default for the language), `device` and `dtype`
    (None: CUDA in bf16/fp16 when available, else CPU fp32); the weights load on the first batch."""

    default_model: str = ""

    def __init__(self, target_lang: str, model: str | None = None, device: str | None = None, dtype=None):
        super().__init__(target_lang)
        self.model_id = model or self.default_model_for(self.lang)
        self.device = _default_device(device)
        self.dtype = _default_dtype(self.device, dtype)
        self._loaded = None  # what _load() builds, on the first batch

    def default_model_for(self, lang: Language) -> str:
        return self.default_model


class HFSeq2SeqTranslator(LocalModelTranslator):
    """A transformers encoder-decoder MT model; subclasses set the language codes."""

    default_batch_size = 16
    split_sentences = True
    code_field: str = ""  # the Language field holding this model's target code ("": none needed)
    no_code_hint: str = ""  # appended to the error when the registry has no such code

    def __init__(
        self,
        target_lang: str,
        num_beams: int = 4,
        max_input_tokens: int = 256,
        max_new_tokens_factor: float = 2.0,
        min_new_tokens: int = 16,
        **model_options,
    ):
        """model_options: `model`, `device`, `dtype`, as LocalModelTranslator takes them."""
        super().__init__(target_lang, **model_options)
        if self.code_field and not getattr(self.lang, self.code_field):
            raise TranslatorError(
                f"{self.name.upper()} has no code for {self.lang.name} ({self.lang.code}){self.no_code_hint}"
            )
        self.num_beams = num_beams
        self.max_input_tokens = max_input_tokens
        self.max_new_tokens_factor = max_new_tokens_factor
        self.min_new_tokens = min_new_tokens

    @property
    def model(self) -> str:
        return f"{self.model_id}|beams={self.num_beams}|max_in={self.max_input_tokens}"

    def _language_setup(self, tokenizer) -> dict:
        """Set the tokenizer's source language; return generate() kwargs for the target."""
        return {}

    def _load(self):
        if self._loaded is None:
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.model_id)
            generate_kwargs = self._language_setup(tokenizer)
            model = AutoModelForSeq2SeqLM.from_pretrained(self.model_id, dtype=self.dtype).to(self.device).eval()
            self._loaded = (model, tokenizer, generate_kwargs)
        return self._loaded

    def _prepare_inputs(self, segments: list[str]) -> list[str]:
        return segments

    def batch_order(self, segments: list[str]) -> list[str]:
        return sorted(segments, key=len, reverse=True)

    def translate_batch(self, segments: list[str]) -> list[str | None]:
        import torch

        model, tokenizer, generate_kwargs = self._load()
        texts = self._prepare_inputs(segments)
        too_long = sum(len(ids) > self.max_input_tokens for ids in tokenizer(texts)["input_ids"])
        if too_long:  # sentences this long are rare; say so rather than lose their end silently
            log.warning(
                "%s: %d segment(s) longer than max_input_tokens=%d are truncated",
                self.label,
                too_long,
                self.max_input_tokens,
            )
        inputs = tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_input_tokens
        ).to(self.device)
        # Output length follows the input: a fixed cap either truncates long segments or lets
        # short ones ramble on for hundreds of tokens.
        max_new = max(self.min_new_tokens, int(inputs["input_ids"].shape[1] * self.max_new_tokens_factor))
        with torch.inference_mode():
            out = model.generate(
                **inputs, **generate_kwargs, num_beams=self.num_beams, do_sample=False, max_new_tokens=max_new
            )
        return [
            tidy(t)
            for t in tokenizer.batch_decode(self._drop_language_tokens(out, tokenizer), skip_special_tokens=True)
        ]

    def _language_token_ids(self, tokenizer) -> set[int]:
        """Ids of the language-code tokens (M2M100's __ca__, NLLB's cat_Latn)."""
        return set()

    def _drop_language_tokens(self, sequences, tokenizer) -> list[list[int]]:
        # transformers 5 does not mark M2M100's language tokens as special, so
        # skip_special_tokens leaves the forced "__ca__" at the start of every output.
        drop = self._language_token_ids(tokenizer)
        return [[i for i in seq if i not in drop] for seq in sequences.tolist()]

    def describe(self) -> dict:
        import transformers

        return {
            **super().describe(),
            "model_id": self.model_id,
            "num_beams": self.num_beams,
            "device": self.device,
            "dtype": str(self.dtype).replace("torch.", ""),
            "transformers": transformers.__version__,
        }


class M2M100Translator(HFSeq2SeqTranslator):
    """M2M100 (default facebook/m2m100_1.2B, the paper's): target forced as the first token."""

    name = "m2m100"
    default_model = "facebook/m2m100_1.2B"
    code_field = "m2m100"
    no_code_hint = "; use backend='nllb'"

    def _language_setup(self, tokenizer) -> dict:
        tokenizer.src_lang = SOURCE_LANG
        try:
            return {"forced_bos_token_id": tokenizer.get_lang_id(self.lang.m2m100)}
        except (KeyError, AttributeError) as e:
            raise TranslatorError(
                f"{self.model_id}: tokenizer has no M2M100 language code "
                f"{self.lang.m2m100!r} ({type(tokenizer).__name__})"
            ) from e

    def _language_token_ids(self, tokenizer) -> set[int]:
        return set(getattr(tokenizer, "lang_code_to_id", {}).values())


class NllbTranslator(HFSeq2SeqTranslator):
    """NLLB-200 (default facebook/nllb-200-distilled-600M), FLORES-200 codes from the registry."""

    name = "nllb"
    default_model = "facebook/nllb-200-distilled-600M"
    source_code = "eng_Latn"
    code_field = "nllb"
    no_code_hint = " in the registry"

    def _language_setup(self, tokenizer) -> dict:
        tokenizer.src_lang = self.source_code
        target_id = tokenizer.convert_tokens_to_ids(self.lang.nllb)
        if target_id is None or target_id == tokenizer.unk_token_id:
            raise TranslatorError(f"{self.model_id}: tokenizer has no NLLB language token {self.lang.nllb!r}")
        return {"forced_bos_token_id": target_id}

    def _language_token_ids(self, tokenizer) -> set[int]:
        from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

        ids = tokenizer.convert_tokens_to_ids(FAIRSEQ_LANGUAGE_CODES)
        return {i for i in ids if i is not None and i != tokenizer.unk_token_id}


class MarianTranslator(HFSeq2SeqTranslator):
    """Marian/OPUS-MT (default Helsinki-NLP/opus-mt-en-<code>; not every pair exists: pass model=).
    Multi-target models need a target token, e.g. target_token=">>cat<<" for opus-mt-en-ROMANCE."""

    name = "marian"

    def __init__(self, target_lang: str, target_token: str | None = None, **kwargs):
        super().__init__(target_lang, **kwargs)
        self.target_token = target_token

    def default_model_for(self, lang: Language) -> str:
        return f"Helsinki-NLP/opus-mt-en-{lang.code}"

    @property
    def model(self) -> str:
        return super().model + (f"|{self.target_token}" if self.target_token else "")

    def _prepare_inputs(self, segments: list[str]) -> list[str]:
        return [f"{self.target_token} {s}" for s in segments] if self.target_token else segments


CHAT_INSTRUCTION = (
    "Translate the following text from English to {language}. Keep anything inside backticks and "
    "every URL exactly as it is. Reply with the translation only.\n\n{text}"
)


class ChatTranslator(LocalModelTranslator):
    """A prompted instruct model (any causal LM with a chat template; clo_utils.models loads it,
    so `embedded:` ids work too). Greedy decoding, left-padded batches."""

    name = "chat"
    default_batch_size = 8
    split_sentences = False
    default_model = "Qwen/Qwen2.5-7B-Instruct"

    def __init__(
        self,
        target_lang: str,
        instruction: str = CHAT_INSTRUCTION,
        max_new_tokens_factor: float = 2.5,
        min_new_tokens: int = 32,
        system_prompt: str | None = None,
        **model_options,
    ):
        """model_options: `model`, `device`, `dtype`, as LocalModelTranslator takes them."""
        super().__init__(target_lang, **model_options)
        self.instruction = instruction
        self.max_new_tokens_factor = max_new_tokens_factor
        self.min_new_tokens = min_new_tokens
        self.system_prompt = system_prompt

    @property
    def model(self) -> str:
        return f"{self.model_id}|{cache_key(self.instruction, self.system_prompt)[:12]}"

    def _load(self):
        if self._loaded is None:
            from ..models import load_model_and_tokenizer

            model, tokenizer = load_model_and_tokenizer(self.model_id, dtype=self.dtype, device=self.device)
            tokenizer.padding_side = "left"  # generation continues the right end of every row
            self._loaded = (model.eval(), tokenizer)
        return self._loaded

    def chat_prompt(self, tokenizer, segment: str) -> str:
        messages = chat_messages(self.instruction.format(language=self.lang.name, text=segment), self.system_prompt)
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def batch_order(self, segments: list[str]) -> list[str]:
        return sorted(segments, key=len, reverse=True)

    def translate_batch(self, segments: list[str]) -> list[str | None]:
        import torch

        model, tokenizer = self._load()
        prompts = [self.chat_prompt(tokenizer, s) for s in segments]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        longest = max(len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in segments)
        max_new = max(self.min_new_tokens, int(longest * self.max_new_tokens_factor))
        with torch.inference_mode():
            out = model.generate(
                **inputs, do_sample=False, max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id
            )
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return [tidy(t) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def describe(self) -> dict:
        return {
            **super().describe(),
            "model_id": self.model_id,
            "instruction": self.instruction,
            "system_prompt": self.system_prompt,
        }
