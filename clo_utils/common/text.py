"""Text helpers shared by the translation quality filter and the evaluation metrics.

One word counter and one language-ID helper, so a translated seed is judged for language by the
same rule as a model's answer; one chat-message builder, so training pairs and evaluation prompts
are rendered from the same messages.

Language ID uses lingua restricted to two languages, {expected, other}: with all 75 languages
loaded lingua confuses close pairs (Indonesian/Malay, Catalan/Spanish/Occitan), and the question
asked is only "English or the target?". lingua may decline to decide (None).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

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


def language_detector(expected_lang: str, other_lang: str | None = None):
    """The lingua detector restricted to {expected, other} (cached: the same object on every call)."""
    pair = language_pair(expected_lang, other_lang)
    return _detector(frozenset(get_language(code).lingua for code in pair))


def detect_languages(texts: Sequence[str], expected_lang: str, other_lang: str | None = None) -> list[str | None]:
    """The language code lingua picks for each text among {expected, other}; None when it cannot tell."""
    pair = language_pair(expected_lang, other_lang)
    by_lingua = {get_language(code).lingua: code for code in pair}
    found = language_detector(*pair).detect_languages_in_parallel_of(list(texts)) if texts else []
    return [None if lang is None else by_lingua[lang.name] for lang in found]


def chat_messages(prompt: str, system_prompt: str | None = None) -> list[dict]:
    """One user turn. None keeps the chat template's own default system prompt (SmolLM2's inserts an
    English one); the choice is recorded in every run's manifest and metrics."""
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return messages + [{"role": "user", "content": prompt}]
