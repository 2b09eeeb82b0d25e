"""Translate English text into a target language: one function, several backends, a disk cache.

    translate(texts, "ca", backend="apertium", cache="~/.cache/clo_utils/translations.sqlite")

Backends (`BACKENDS`):
  apertium  Debian's rule-based Apertium as a subprocess: the offline default. Poor but real MT,
            labelled "rule-based MT" wherever the kit shows it.
  m2m100    facebook/m2m100_1.2B, the paper's translator (GPU recommended).
  nllb      facebook/nllb-200-distilled-600M (FLORES-200 codes from the language registry).
  marian    Helsinki-NLP/opus-mt-en-<x> (one model per pair; not every pair exists on the hub).
  chat      a prompted instruct LLM through its chat template.

Structure survives translation: each text is cut into pieces (`split_for_translation`); list
markers, headings, blank lines, fenced code blocks, inline `code` and URLs are kept verbatim
and only the prose between them goes to the backend. A backend must hand back every protected
span (inline code, URL) that a segment contains; where one did not, that segment is translated
again piece by piece around the spans, so code is never translated.

Each unique segment is translated once. The cache (clo_utils.cache.DiskCache, SQLite) is keyed by
cache_key(backend, model, "en", target, segment) and written in one transaction per batch:
an interrupted run resumes where it stopped, a rerun translates nothing, a kill loses at most
the batch in flight. Several processes may share one cache file, which is how a large job is
sharded (see `translate_shard`).
"""

from __future__ import annotations

import abc
import html
import logging
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .cache import DiskCache, cache_key
from .languages import Language, apertium_languages, get_language

log = logging.getLogger(__name__)

SOURCE_LANG = "en"

# ----------------------------------------------------------------------------------------------
# Structure-preserving segmentation
# ----------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^[ \t]*(```|~~~)")
# Markdown line prefixes kept out of the translation: bullets, numbered items, headings, quotes
# (repeated for nesting, e.g. "> - ").
_LINE_PREFIX = re.compile(r"^[ \t]*(?:(?:[-*+•]|\d{1,3}[.)]|#{1,6}|>)[ \t]+)*")
# Inline code (single or double backticks) and URLs: never translated.
_PROTECTED = re.compile(
    r"``[^`\n]+?``|`[^`\n]+`"
    r"|(?:https?://|www\.)[^\s<>()\[\]`\"']*[^\s<>()\[\]`\"'.,;:!?]"
)
_LETTER = re.compile(r"[^\W\d_]")
# A sentence ends with . ! ? followed by space and an upper-case letter, digit or opening quote.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[ \t]+(?=[\"'“(\[]?[A-Z0-9])")


@dataclass(frozen=True)
class Piece:
    """A slice of a text: `translate` pieces go to the backend, the others are kept verbatim."""

    text: str
    translate: bool


def protected_spans(text: str) -> list[str]:
    """Inline code and URLs in `text`, in order."""
    return [m.group(0) for m in _PROTECTED.finditer(text)]


def _has_prose(text: str) -> bool:
    """True when letters remain outside code and URLs (otherwise there is nothing to translate)."""
    return bool(_LETTER.search(_PROTECTED.sub(" ", text)))


def _sentence_breaks(text: str) -> list[tuple[int, int]]:
    """(start, end) of the whitespace between sentences, never inside a protected span."""
    spans = [m.span() for m in _PROTECTED.finditer(text)]
    return [m.span() for m in _SENTENCE_BREAK.finditer(text)
            if not any(s < m.start() < e for s, e in spans)]


def _text_pieces(text: str, split_sentences: bool) -> list[Piece]:
    """Leading/trailing whitespace verbatim; the core as one segment or one per sentence."""
    core = text.strip()
    if not core or not _has_prose(core):
        return [Piece(text, False)]
    lead = text[: len(text) - len(text.lstrip())]
    trail = text[len(text.rstrip()):]
    pieces = [Piece(lead, False)]
    start = 0
    for s, e in (_sentence_breaks(core) if split_sentences else []):
        sentence = core[start:s]
        pieces += [Piece(sentence, _has_prose(sentence)), Piece(core[s:e], False)]
        start = e
    last = core[start:]
    pieces += [Piece(last, _has_prose(last)), Piece(trail, False)]
    return pieces


def _line_pieces(line: str, split_sentences: bool) -> list[Piece]:
    if line.lstrip().startswith("|"):  # a Markdown table row: translate cell by cell
        return [p for cell in re.split(r"(\|)", line)
                for p in ([Piece(cell, False)] if cell == "|" else _text_pieces(cell, split_sentences))]
    prefix = _LINE_PREFIX.match(line).group(0)
    return [Piece(prefix, False)] + _text_pieces(line[len(prefix):], split_sentences)


def _merge_literals(pieces: Iterable[Piece]) -> list[Piece]:
    merged: list[Piece] = []
    for p in pieces:
        if not p.text:
            continue
        if merged and not p.translate and not merged[-1].translate:
            merged[-1] = Piece(merged[-1].text + p.text, False)
        else:
            merged.append(p)
    return merged


def split_for_translation(text: str, split_sentences: bool = False) -> list[Piece]:
    """Cut `text` into verbatim and translatable pieces; "".join(p.text for p in pieces) == text.

    Kept verbatim: line breaks and blank lines, list markers ("- ", "* ", "1. "), heading and
    quote markers, fenced code blocks (``` or ~~~, fences included; an unclosed fence protects
    the rest of the text), lines without letters, Markdown table pipes. Inline code and URLs stay
    inside their segment, and the translation engine checks that they come back unchanged.
    `split_sentences` cuts paragraphs into sentences (for neural MT trained on sentences).
    """
    pieces: list[Piece] = []
    in_fence = False
    for line in re.split(r"(?<=\n)", text):
        body, newline = (line[:-1], "\n") if line.endswith("\n") else (line, "")
        if _FENCE.match(body):
            in_fence = not in_fence
            pieces.append(Piece(line, False))
        elif in_fence:
            pieces.append(Piece(line, False))
        else:
            pieces += _line_pieces(body, split_sentences) + [Piece(newline, False)]
    return _merge_literals(pieces)


def _spans_survived(source: str, translation: str) -> bool:
    return Counter(protected_spans(source)) == Counter(protected_spans(translation))


def _around_spans(segment: str) -> list[Piece]:
    """The segment cut at its protected spans: prose pieces to translate, spans verbatim."""
    pieces, pos = [], 0
    for m in _PROTECTED.finditer(segment):
        pieces += _text_pieces(segment[pos:m.start()], False) + [Piece(m.group(0), False)]
        pos = m.end()
    pieces += _text_pieces(segment[pos:], False)
    return _merge_literals(pieces)


def _tidy(text: str) -> str:
    """One line, single spaces: a segment is one line of the source, so its translation is too."""
    return " ".join(text.split())


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------


class TranslatorError(RuntimeError):
    """A backend cannot run (missing program, model or language code)."""


class Translator(abc.ABC):
    """English -> one target language. Subclasses implement `translate_batch`."""

    name: str = "base"
    default_batch_size: int = 32
    split_sentences: bool = False  # neural MT models are trained on sentences

    def __init__(self, target_lang: str):
        self.lang: Language = get_language(target_lang)
        if self.lang.code == SOURCE_LANG:
            raise ValueError("target language is English; the kit translates from English")

    @property
    @abc.abstractmethod
    def model(self) -> str:
        """Identity of the model or mode plus output-affecting options: part of the cache key."""

    @property
    def label(self) -> str:
        return f"{self.name}:{self.model}"

    @abc.abstractmethod
    def translate_batch(self, segments: list[str]) -> list[str | None]:
        """One translation per segment (None: failed; it is not cached and is retried next run)."""

    def batch_order(self, segments: list[str]) -> list[str]:
        """Order in which segments are batched (HF models: longest first, less padding)."""
        return segments

    def describe(self) -> dict:
        """What the manifest records about this translator."""
        return {"backend": self.name, "model": self.model, "label": self.label, "target": self.lang.code}


# ---- Apertium --------------------------------------------------------------------------------

_P_BLOCK = re.compile(r'<p id="s(\d+)">(.*?)</p>', re.DOTALL)
_PLACEHOLDER = re.compile(r"<!--c(\d+)-->")


def _apertium_html(segments: Sequence[str]) -> str:
    """One <p id="sN"> block per segment. Block tags are sentence boundaries for Apertium's HTML
    deformatter, so words never move between segments (plain text and `-f line` both moved words
    across line breaks in a check), and the ids let the output be split back with certainty.
    Protected spans become HTML comments, which Apertium treats as blanks: they keep their place
    and do not disturb agreement or capitalisation (<span> placeholders did, in eng-spa)."""
    blocks = []
    for i, seg in enumerate(segments):
        parts, pos = [], 0
        for j, m in enumerate(_PROTECTED.finditer(seg)):
            parts += [html.escape(seg[pos:m.start()], quote=False), f"<!--c{j}-->"]
            pos = m.end()
        parts.append(html.escape(seg[pos:], quote=False))
        blocks.append(f'<p id="s{i}">{"".join(parts)}</p>\n')
    return "".join(blocks)


def _restore_spans(translated: str, source: str) -> str:
    """Unescape Apertium's HTML and put the protected spans back in place of their comments.
    Spans go in last, so code such as `<div>` or `&amp;` is never unescaped or stripped."""
    spans = protected_spans(source)
    text = re.sub(r"<(?!!--c\d+-->)[^>]*>", "", translated)  # any tag but our placeholders
    out = []
    for i, part in enumerate(_PLACEHOLDER.split(text)):  # text, index, text, index, ..., text
        if i % 2 == 0:
            out.append(html.unescape(part))
        elif int(part) < len(spans):  # an unknown index cannot come from us; drop it
            out.append(spans[int(part)])
    return _tidy("".join(out))


def parse_apertium_html(output: str, segments: Sequence[str]) -> list[str] | None:
    """The translations from Apertium's HTML output, or None unless it splits into exactly one block
    per segment, in order, with nothing outside the blocks."""
    blocks = _P_BLOCK.findall(output)
    if [int(i) for i, _ in blocks] != list(range(len(segments))) or _P_BLOCK.sub("", output).strip():
        return None
    return [_restore_spans(text, seg) for (_, text), seg in zip(blocks, segments)]


def apertium_install_hint(lang: Language, mode: str) -> str:
    package = lang.apertium_package or f"apertium-{mode.split('_')[0]}"
    return f"sudo apt-get install apertium {package}"


class ApertiumTranslator(Translator):
    """Debian's Apertium (`apertium -u -f html <mode>`), many segments per process call.

    One call costs a fixed start-up (~0.1-0.5 s: the pipeline loads its transducers), so a batch
    of segments goes through one call; `n_procs` calls run in parallel. A batch whose output does
    not split back into exactly one block per segment is redone one segment per call.

    Known limit: Apertium's part-of-speech tagger keeps some state across sentences within one
    process call (null-flush mode does not reset it), so a segment's translation can depend on
    earlier segments in its batch. Measured on 200 seeds (748 segments): eng-cat 0 differences
    between 200-segment batches and one call per segment, eng-spa 12 (1.6%; e.g. an earlier
    "known" turns "House" into a verb). Words never move between segments (the block ids check
    that), translations are deterministic for a given batch, and the cache freezes them; pass
    batch_size=1 for strictly independent segments (about 50-100x slower).
    """

    name = "apertium"
    default_batch_size = 200

    def __init__(self, target_lang: str, model: str | None = None, n_procs: int = 1,
                 timeout: float = 600.0, executable: str = "apertium"):
        super().__init__(target_lang)
        self.mode = model or self.lang.apertium
        if not self.mode:
            known = ", ".join(f"{c} ({l.apertium})" for c, l in apertium_languages().items())
            raise TranslatorError(f"no Apertium pair English -> {self.lang.name} ({self.lang.code}) in the "
                                  f"registry; languages with one: {known}. Use backend='m2m100' or 'nllb'.")
        if n_procs < 1:
            raise ValueError(f"n_procs must be >= 1, got {n_procs}")
        self.n_procs = n_procs
        self.timeout = timeout
        self.executable = executable
        self._check_installed()
        self.calls = 0  # process calls made, for benchmarks

    @property
    def model(self) -> str:
        return self.mode

    @property
    def label(self) -> str:
        return f"apertium:{self.mode} (Apertium rule-based MT)"

    def _check_installed(self) -> None:
        hint = apertium_install_hint(self.lang, self.mode)
        if shutil.which(self.executable) is None:
            raise TranslatorError(f"Apertium is not installed (no {self.executable!r} on PATH). "
                                  f"Install it with: {hint}")
        listed = subprocess.run([self.executable, "-l"], capture_output=True, text=True, timeout=60)
        if self.mode not in listed.stdout.split():
            raise TranslatorError(f"the Apertium mode {self.mode!r} (English -> {self.lang.name}) is not "
                                  f"installed. Install it with: {hint}")

    def _run(self, document: str) -> str:
        self.calls += 1
        done = subprocess.run([self.executable, "-u", "-f", "html", self.mode], input=document,
                              capture_output=True, text=True, timeout=self.timeout)
        if done.returncode != 0:
            raise TranslatorError(f"apertium {self.mode} failed (exit {done.returncode}): {done.stderr.strip()[:500]}")
        return done.stdout

    def _translate_chunk(self, segments: list[str]) -> list[str | None]:
        parsed = parse_apertium_html(self._run(_apertium_html(segments)), segments)
        if parsed is not None:
            return parsed
        log.warning("apertium: a batch of %d segments did not split back one-to-one; "
                    "redoing it one segment per call", len(segments))
        return [self._translate_one(seg) for seg in segments]

    def _translate_one(self, segment: str) -> str | None:
        parsed = parse_apertium_html(self._run(_apertium_html([segment])), [segment])
        if parsed is None:
            log.warning("apertium: could not read back the translation of %r", segment[:80])
            return None
        return parsed[0]

    def translate_batch(self, segments: list[str]) -> list[str | None]:
        if self.n_procs == 1 or len(segments) < 2 * self.n_procs:
            return self._translate_chunk(segments)
        size = -(-len(segments) // self.n_procs)
        chunks = [segments[i:i + size] for i in range(0, len(segments), size)]
        with ThreadPoolExecutor(len(chunks)) as pool:  # the work happens in the subprocesses
            return [t for part in pool.map(self._translate_chunk, chunks) for t in part]

    def describe(self) -> dict:
        return {**super().describe(), "apertium_version": apertium_version(self.executable),
                "package": self.lang.apertium_package,
                "package_version": debian_package_version(self.lang.apertium_package)}


def apertium_version(executable: str = "apertium") -> str | None:
    try:
        return subprocess.run([executable, "-V"], capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def debian_package_version(package: str | None) -> str | None:
    if not package or shutil.which("dpkg-query") is None:
        return None
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return done.stdout.strip() or None


# ---- Hugging Face seq2seq (M2M100, NLLB, Marian) ------------------------------------------------


def _default_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _default_dtype(device: str, dtype):
    """bf16 on GPUs that have it, else fp16 on GPU; fp32 on CPU."""
    import torch

    from .models import resolve_dtype

    if dtype is not None and dtype != "auto":
        return resolve_dtype(dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class HFSeq2SeqTranslator(Translator):
    """A transformers encoder-decoder MT model; subclasses set the language codes."""

    default_batch_size = 16
    split_sentences = True
    default_model: str = ""

    def __init__(self, target_lang: str, model: str | None = None, device: str | None = None, dtype=None,
                 num_beams: int = 4, max_input_tokens: int = 256, max_new_tokens_factor: float = 2.0,
                 min_new_tokens: int = 16):
        super().__init__(target_lang)
        self.model_id = model or self.default_model_for(self.lang)
        self.device = _default_device(device)
        self.dtype = _default_dtype(self.device, dtype)
        self.num_beams = num_beams
        self.max_input_tokens = max_input_tokens
        self.max_new_tokens_factor = max_new_tokens_factor
        self.min_new_tokens = min_new_tokens
        self._loaded = None  # (model, tokenizer, generate kwargs), loaded on the first batch

    def default_model_for(self, lang: Language) -> str:
        return self.default_model

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
            log.warning("%s: %d segment(s) longer than max_input_tokens=%d are truncated",
                        self.label, too_long, self.max_input_tokens)
        inputs = tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                           max_length=self.max_input_tokens).to(self.device)
        # Output length follows the input: a fixed cap either truncates long segments or lets
        # short ones ramble on for hundreds of tokens.
        max_new = max(self.min_new_tokens, int(inputs["input_ids"].shape[1] * self.max_new_tokens_factor))
        with torch.inference_mode():
            out = model.generate(**inputs, **generate_kwargs, num_beams=self.num_beams, do_sample=False,
                                 max_new_tokens=max_new)
        return [_tidy(t) for t in tokenizer.batch_decode(self._drop_language_tokens(out, tokenizer),
                                                         skip_special_tokens=True)]

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

        return {**super().describe(), "model_id": self.model_id, "num_beams": self.num_beams,
                "device": self.device, "dtype": str(self.dtype).replace("torch.", ""),
                "transformers": transformers.__version__}


class M2M100Translator(HFSeq2SeqTranslator):
    """M2M100 (default facebook/m2m100_1.2B, the paper's): target forced as the first token."""

    name = "m2m100"
    default_model = "facebook/m2m100_1.2B"

    def __init__(self, target_lang: str, **kwargs):
        super().__init__(target_lang, **kwargs)
        if not self.lang.m2m100:
            raise TranslatorError(f"M2M100 has no code for {self.lang.name} ({self.lang.code}); use backend='nllb'")

    def _language_setup(self, tokenizer) -> dict:
        tokenizer.src_lang = SOURCE_LANG
        try:
            return {"forced_bos_token_id": tokenizer.get_lang_id(self.lang.m2m100)}
        except (KeyError, AttributeError) as e:
            raise TranslatorError(f"{self.model_id}: tokenizer has no M2M100 language code "
                                  f"{self.lang.m2m100!r} ({type(tokenizer).__name__})") from e

    def _language_token_ids(self, tokenizer) -> set[int]:
        return set(getattr(tokenizer, "lang_code_to_id", {}).values())


class NllbTranslator(HFSeq2SeqTranslator):
    """NLLB-200 (default facebook/nllb-200-distilled-600M), FLORES-200 codes from the registry."""

    name = "nllb"
    default_model = "facebook/nllb-200-distilled-600M"
    source_code = "eng_Latn"

    def __init__(self, target_lang: str, **kwargs):
        super().__init__(target_lang, **kwargs)
        if not self.lang.nllb:
            raise TranslatorError(f"no NLLB code for {self.lang.name} ({self.lang.code}) in the registry")

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


# ---- Chat LLM -----------------------------------------------------------------------------------

CHAT_INSTRUCTION = (
    "Translate the following text from English to {language}. Keep anything inside backticks and "
    "every URL exactly as it is. Reply with the translation only.\n\n{text}"
)


class ChatTranslator(Translator):
    """A prompted instruct model (any causal LM with a chat template; clo_utils.models loads it,
    so `embedded:` ids work too). Greedy decoding, left-padded batches."""

    name = "chat"
    default_batch_size = 8
    split_sentences = False
    default_model = "Qwen/Qwen2.5-7B-Instruct"

    def __init__(self, target_lang: str, model: str | None = None, device: str | None = None, dtype=None,
                 instruction: str = CHAT_INSTRUCTION, max_new_tokens_factor: float = 2.5,
                 min_new_tokens: int = 32, system_prompt: str | None = None):
        super().__init__(target_lang)
        self.model_id = model or self.default_model
        self.device = _default_device(device)
        self.dtype = _default_dtype(self.device, dtype)
        self.instruction = instruction
        self.max_new_tokens_factor = max_new_tokens_factor
        self.min_new_tokens = min_new_tokens
        self.system_prompt = system_prompt
        self._loaded = None

    @property
    def model(self) -> str:
        return f"{self.model_id}|{cache_key(self.instruction, self.system_prompt)[:12]}"

    def _load(self):
        if self._loaded is None:
            from .models import load_model_and_tokenizer

            model, tokenizer = load_model_and_tokenizer(self.model_id, dtype=self.dtype, device=self.device)
            tokenizer.padding_side = "left"  # generation continues the right end of every row
            self._loaded = (model.eval(), tokenizer)
        return self._loaded

    def chat_prompt(self, tokenizer, segment: str) -> str:
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        messages.append({"role": "user", "content": self.instruction.format(language=self.lang.name, text=segment)})
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
            out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new,
                                 pad_token_id=tokenizer.pad_token_id)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        return [_tidy(t) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def describe(self) -> dict:
        return {**super().describe(), "model_id": self.model_id, "instruction": self.instruction,
                "system_prompt": self.system_prompt}


BACKENDS: dict[str, type[Translator]] = {
    "apertium": ApertiumTranslator,
    "m2m100": M2M100Translator,
    "nllb": NllbTranslator,
    "marian": MarianTranslator,
    "chat": ChatTranslator,
}


def get_translator(backend: str, target_lang: str, model: str | None = None, device: str | None = None,
                   dtype=None, **options) -> Translator:
    """Build a backend once (models load on first use) to reuse it over several translate() calls."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown translation backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    if backend == "apertium":
        if device is not None or dtype is not None:
            raise ValueError("the apertium backend runs on CPU; device/dtype do not apply")
        return ApertiumTranslator(target_lang, model=model or None, **options)
    return BACKENDS[backend](target_lang, model=model or None, device=device, dtype=dtype, **options)


# ----------------------------------------------------------------------------------------------
# The engine: unique segments, cache, batches, reassembly
# ----------------------------------------------------------------------------------------------


@dataclass
class TranslateStats:
    texts: int = 0
    segments: int = 0            # unique segments in the texts
    cached: int = 0              # found in the cache before this call
    translated: int = 0          # translated and cached by this call
    skipped_other_shards: int = 0
    failed: int = 0              # segments the backend could not translate (not cached)
    spans_repaired: int = 0      # segments redone piece by piece because code/URLs did not survive
    batches: int = 0
    seconds: float = 0.0
    translator: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def open_cache(cache: DiskCache | str | os.PathLike | None) -> tuple[DiskCache | None, bool]:
    """(cache, opened_here). A path to an existing folder means <folder>/translations.sqlite."""
    if cache is None or isinstance(cache, DiskCache):
        return cache, False
    path = Path(cache).expanduser()
    if path.is_dir():
        path = path / "translations.sqlite"
    return DiskCache(path), True


def _in_shard(key: str, shard: tuple[int, int] | None) -> bool:
    if shard is None:
        return True
    index, count = shard
    return int(key[:15], 16) % count == index


def _check_shard(shard) -> None:
    if shard is None:
        return
    if (not isinstance(shard, tuple) or len(shard) != 2 or not all(isinstance(v, int) for v in shard)
            or not 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")


def _repair_spans(translator: Translator, segments: list[str]) -> dict[str, str | None]:
    """Translate segments piece by piece around their code/URL spans (one backend call)."""
    plans = {seg: _around_spans(seg) for seg in segments}
    prose = list(dict.fromkeys(p.text for pieces in plans.values() for p in pieces if p.translate))
    done = dict(zip(prose, translator.translate_batch(prose))) if prose else {}
    repaired: dict[str, str | None] = {}
    for seg, pieces in plans.items():
        parts = [done.get(p.text) if p.translate else p.text for p in pieces]
        repaired[seg] = None if any(x is None for x in parts) else "".join(parts)
    return repaired


def _translate_batch_checked(translator: Translator, batch: list[str], stats: TranslateStats) -> dict[str, str | None]:
    outputs = translator.translate_batch(batch)
    if len(outputs) != len(batch):
        raise TranslatorError(f"{translator.label} returned {len(outputs)} translations for {len(batch)} segments")
    result = dict(zip(batch, outputs))
    broken = [s for s, t in result.items() if t is not None and not _spans_survived(s, t)]
    if broken:
        stats.spans_repaired += len(broken)
        result.update(_repair_spans(translator, broken))
    return result


def _assemble(pieces: list[Piece], translations: dict[str, str | None]) -> str | None:
    parts = [translations.get(p.text) if p.translate else p.text for p in pieces]
    return None if any(x is None for x in parts) else "".join(parts)


def _run(texts: Sequence[str], target_lang: str, backend, model, batch_size, cache, device, dtype,
         progress: bool, shard, options) -> tuple[list[str | None], TranslateStats]:
    start = time.perf_counter()
    _check_shard(shard)
    if isinstance(backend, Translator):
        if model is not None or options or device is not None or dtype is not None:
            raise ValueError("pass model/device/dtype/options to get_translator(), not with a Translator instance")
        if backend.lang.code != get_language(target_lang).code:
            raise ValueError(f"translator is for {backend.lang.code!r}, not {target_lang!r}")
        translator = backend
    else:
        translator = get_translator(backend, target_lang, model=model, device=device, dtype=dtype, **options)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = batch_size or translator.default_batch_size
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")

    plans = [split_for_translation(t, translator.split_sentences) for t in texts]
    segments = list(dict.fromkeys(p.text for pieces in plans for p in pieces if p.translate))
    keys = {s: cache_key(translator.name, translator.model, SOURCE_LANG, translator.lang.code, s) for s in segments}
    stats = TranslateStats(texts=len(texts), segments=len(segments), translator=translator.describe())

    db, opened_here = open_cache(cache)
    try:
        found = db.get_many(keys.values()) if db is not None else {}
        translations: dict[str, str | None] = {s: found[k] for s, k in keys.items() if k in found}
        stats.cached = len(translations)
        todo = [s for s in segments if s not in translations and _in_shard(keys[s], shard)]
        stats.skipped_other_shards = len(segments) - stats.cached - len(todo)
        todo = translator.batch_order(todo)
        from tqdm import tqdm  # plain bar: tqdm.auto warns without ipywidgets

        with tqdm(total=len(todo), unit="seg", disable=not progress or not todo,
                  desc=f"translate en->{translator.lang.code} [{translator.label}]") as bar:
            for i in range(0, len(todo), batch_size):
                batch = todo[i:i + batch_size]
                result = _translate_batch_checked(translator, batch, stats)
                good = {keys[s]: t for s, t in result.items() if t is not None}
                if db is not None:
                    db.put_many(good)  # one transaction: a kill loses at most this batch
                translations.update(result)
                stats.batches += 1
                stats.translated += len(good)
                stats.failed += len(result) - len(good)
                bar.update(len(batch))
    finally:
        if opened_here:
            db.close()
    outputs = [_assemble(pieces, translations) for pieces in plans]
    stats.seconds = time.perf_counter() - start
    return outputs, stats


def translate_with_stats(texts: Sequence[str], target_lang: str, backend: str | Translator = "apertium",
                         model: str | None = None, batch_size: int | None = None,
                         cache: DiskCache | str | os.PathLike | None = None, device: str | None = None,
                         dtype=None, progress: bool = True, **options) -> tuple[list[str], TranslateStats]:
    """`translate` plus counts (segments cached / translated / failed, batches, seconds)."""
    outputs, stats = _run(texts, target_lang, backend, model, batch_size, cache, device, dtype,
                          progress, None, options)
    if stats.failed:
        log.warning("%d segments could not be translated; %d texts come back empty (not cached: a rerun retries)",
                    stats.failed, sum(o is None for o in outputs))
    return ["" if o is None else o for o in outputs], stats


def translate(texts: Sequence[str], target_lang: str, backend: str | Translator = "apertium",
              model: str | None = None, batch_size: int | None = None,
              cache: DiskCache | str | os.PathLike | None = None, device: str | None = None, dtype=None,
              progress: bool = True, **options) -> list[str]:
    """Translate English `texts` into `target_lang`; one output per text, in order.

    backend: a name in BACKENDS or a Translator from get_translator() (reuse a loaded model).
    model: Apertium mode or model id/folder (None: the backend's default for the language).
    batch_size: segments per backend call (None: the backend's default).
    cache: DiskCache, a path (file, or folder -> translations.sqlite), or None for no disk cache.
    device/dtype: HF backends (default: CUDA + bf16/fp16 when available, else CPU fp32).
    options: backend options, e.g. n_procs for apertium, num_beams for the HF models.
    A text whose translation failed comes back as "" (the quality filter drops it as empty);
    nothing is cached for it, so a rerun retries.
    """
    return translate_with_stats(texts, target_lang, backend=backend, model=model, batch_size=batch_size,
                                cache=cache, device=device, dtype=dtype, progress=progress, **options)[0]


def translate_shard(texts: Sequence[str], target_lang: str, shard: tuple[int, int],
                    cache: DiskCache | str | os.PathLike, backend: str | Translator = "apertium",
                    model: str | None = None, batch_size: int | None = None, device: str | None = None,
                    dtype=None, progress: bool = True, **options) -> TranslateStats:
    """Translate one slice of the unique segments into the shared cache; returns counts only.

    Recipe for N processes or machines (the cache is the merge point):
        # process i of N, all pointing at the same cache file
        translate_shard(texts, "ca", shard=(i, N), cache=path, backend="m2m100")
        # afterwards, once: everything is cached, nothing is translated again
        outputs = translate(texts, "ca", cache=path, backend="m2m100")
    Segments go to shards by their cache key, so the split does not depend on the order of texts.
    """
    if cache is None:
        raise ValueError("translate_shard needs a cache: it is where the shards meet")
    return _run(texts, target_lang, backend, model, batch_size, cache, device, dtype, progress, shard, options)[1]
