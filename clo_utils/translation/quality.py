"""Quality filter for translated seeds: drop a seed whose translation cannot make a fair pair.

A seed is dropped, and counted under the FIRST reason that applies (in this order), when:
  empty                 a translated side (prompt_tgt or response_tgt) is empty;
  identical_to_english  a translated side equals its English text: an identical response makes
                        chosen == rejected (no preference signal), an identical prompt gives the two
                        triples the same prompt with opposite preferences;
  not_target_language   lingua, restricted to {English, target}, does not say "target" for a
                        translated side. Only texts of at least `min_words` words (after removing
                        code and URLs; counted by clo_utils.common.text.count_words, one word per Han or
                        kana character) are judged: lingua labels very short texts badly ("2019",
                        "No"), so short sides are never dropped for language;
  length_ratio          len(translation) / len(English) in characters is outside the language's
                        registry `char_ratio` bounds, judged only when the English side has at least
                        `min_chars_for_ratio` characters (short texts have noisy ratios).

Words and language ID are those of the evaluation's fidelity metric (clo_utils.common.text), so a
translated seed and a model's answer are judged by the same rule.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from ..common.languages import get_language
from ..common.text import count_words, detect_languages

DROP_REASONS = ("empty", "identical_to_english", "not_target_language", "length_ratio")
MIN_WORDS_FOR_LANGUAGE_ID = 5
MIN_CHARS_FOR_RATIO = 20
SIDES = (("prompt_en", "prompt_tgt"), ("response_en", "response_tgt"))

_FENCED_BLOCK = re.compile(r"^[ \t]*(```|~~~).*?(^[ \t]*\1[^\n]*$|\Z)", re.DOTALL | re.MULTILINE)
_INLINE_CODE_OR_URL = re.compile(r"``[^`\n]+?``|`[^`\n]+`|(?:https?://|www\.)\S+")


def prose(text: str) -> str:
    """The text without fenced code blocks, inline code and URLs (they read as English)."""
    return _INLINE_CODE_OR_URL.sub(" ", _FENCED_BLOCK.sub(" ", text))


def word_count(text: str) -> int:
    """Words of the prose of `text` (code and URLs removed), as clo_utils.common.text.count_words counts them."""
    return count_words(prose(text))


def identify_language(text: str, lang_code: str) -> str | None:
    """ "en", the target code, or None (lingua undecided) for the prose of `text`."""
    return detect_languages([prose(text)], lang_code)[0]


def drop_reason(
    row: dict,
    lang_code: str,
    min_words: int = MIN_WORDS_FOR_LANGUAGE_ID,
    char_ratio: tuple[float, float] | None = None,
    min_chars_for_ratio: int = MIN_CHARS_FOR_RATIO,
) -> str | None:
    """The first reason in DROP_REASONS that applies to a translated seed row, or None to keep it."""
    low, high = char_ratio or get_language(lang_code).char_ratio
    pairs = [(row[en].strip(), row[tgt].strip()) for en, tgt in SIDES]
    if any(not tgt for _, tgt in pairs):
        return "empty"
    if any(en == tgt for en, tgt in pairs):
        return "identical_to_english"
    if any(word_count(tgt) >= min_words and identify_language(tgt, lang_code) != lang_code for _, tgt in pairs):
        return "not_target_language"
    if any(len(en) >= min_chars_for_ratio and not low <= len(tgt) / len(en) <= high for en, tgt in pairs):
        return "length_ratio"
    return None


def filter_translated_seeds(
    rows: Iterable[dict],
    lang: str,
    min_words: int = MIN_WORDS_FOR_LANGUAGE_ID,
    char_ratio: tuple[float, float] | None = None,
    min_chars_for_ratio: int = MIN_CHARS_FOR_RATIO,
) -> tuple[list[dict], dict[str, int]]:
    """(kept rows in their order, {reason: number dropped} for every reason in DROP_REASONS)."""
    if get_language(lang).code == "en":  # an unknown code fails here too, before any work
        raise ValueError("the target language must not be English")
    kept, drops = [], Counter(dict.fromkeys(DROP_REASONS, 0))
    for row in rows:
        reason = drop_reason(row, lang, min_words, char_ratio, min_chars_for_ratio)
        if reason is None:
            kept.append(row)
        else:
            drops[reason] += 1
    return kept, dict(drops)


def language_id_coverage(rows: Iterable[dict], min_words: int = MIN_WORDS_FOR_LANGUAGE_ID) -> dict[str, int]:
    """How many translated sides were long enough for language ID, and how many were not."""
    lengths = [word_count(row[tgt]) for row in rows for _, tgt in SIDES]
    judged = sum(n >= min_words for n in lengths)
    return {"min_words": min_words, "judged": judged, "too_short_to_judge": len(lengths) - judged}
