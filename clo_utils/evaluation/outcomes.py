"""One outcome per prompt: the answer is in the prompt's language, in another language, or no answer.

The headline of every evaluation (docs/method.md §6). Each answer gets exactly one outcome, so the
three shares are taken over all prompts and sum to 1; a model cannot gain by echoing the prompt or
stopping early, because those answers stay in the denominator as "no answer":

  target     answered in the prompt's language
  other      answered in another language; `language` says which (the detector's code), and the
             report groups them as English, the target's close neighbours (`NEIGHBOURS`), or other
  no_answer  empty; fewer than `min_words` words once the echoed prefix is removed; or a degenerate
             loop: fewer than `min_words` distinct words ("No, no, no, no, ..."), or at least half of
             the words are one phrase of up to LOOP_MAX_UNIT words said LOOP_MIN_REPEATS times or
             more in a row to the end ("the first technology is the first technology is the ...")

The echoed prefix is a copy of the prompt's opening words (three or more, possibly after a lead-in
of up to three words such as "Question:") at the start of the answer. The language is judged on the
text after it: a model that restates the question and then answers in English answered in English.

Language ID sees every language the detector knows (clo_utils.common.text.identify_languages), so a
Spanish answer to a Catalan prompt is "other (es)", never Catalan.

Everything here takes strings and returns values: no model, no files.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from ..common.text import _TOKEN, UNDETERMINED, count_words, identify_languages

OUTCOMES = ("target", "other", "no_answer")
SCORING_VERSION = 2  # recorded in eval_settings.scoring: saved answers scored by older rules are rescored
NO_ANSWER_REASONS = ("empty", "short", "loop")
ECHO_MIN_WORDS = 3  # an echoed prefix copies at least this many of the prompt's opening words
ECHO_MAX_LEAD_IN = 3  # the copy may start after a short lead-in ("Question:", "Sure!")
LOOP_MAX_UNIT = 10  # a repeated tail's phrase has at most this many words
LOOP_MIN_REPEATS = 3  # and is said at least this many times in a row (the last copy may be cut short)
# The languages a target is known to be confused with (the report's "neighbour" group); English
# prompts of a run use the run's target language and its neighbours.
NEIGHBOURS: dict[str, tuple[str, ...]] = {
    "ca": ("es", "oc", "fr", "pt", "it", "gl"),
    "es": ("ca", "gl", "pt", "it", "oc", "fr"),
    "eo": ("es", "it", "pt", "fr", "ca"),
    "hr": ("bs", "sr", "sl", "sh"),
    "id": ("ms", "tl", "jv", "su"),
    "de": ("nl", "da", "lb", "sv", "no"),
    "sw": ("so", "zu", "lg", "rw"),
    "yo": ("ig", "ha", "ee"),
    "zh": ("ja", "wuu", "yue"),
    "ko": ("ja", "zh"),
}
OTHER_GROUPS = ("en", "near", "rest")  # English, the target's neighbours, any other (or undetermined)


class Outcome(NamedTuple):
    kind: str  # one of OUTCOMES
    language: str | None  # the language found (None for no_answer)
    reason: str | None  # one of NO_ANSWER_REASONS for no_answer, else None
    echoed_words: int  # words of the prompt copied at the start of the answer (0: none)


def _spans(text: str) -> list[tuple[str, int]]:
    """(case-folded token, end offset in `text`) for every word token, as normalized_tokens counts them."""
    return [(match.group().casefold(), match.end()) for match in _TOKEN.finditer(text)]


def echoed_prefix(prompt: str, answer: str) -> tuple[int, int]:
    """(words copied, characters to cut): the longest copy of the prompt's opening words at the start
    of the answer (after a lead-in of at most ECHO_MAX_LEAD_IN words), when it has ECHO_MIN_WORDS
    words or more; (0, 0) otherwise. The characters to cut run to the end of the copy."""
    prompt_tokens = [token for token, _ in _spans(prompt)]
    answer_spans = _spans(answer)
    best = (0, 0)
    for start in range(min(ECHO_MAX_LEAD_IN, len(answer_spans)) + 1):
        length = 0
        while (
            length < len(prompt_tokens)
            and start + length < len(answer_spans)
            and answer_spans[start + length][0] == prompt_tokens[length]
        ):
            length += 1
        if length >= ECHO_MIN_WORDS and length > best[0]:
            best = (length, answer_spans[start + length - 1][1])
    return best


def answer_text(prompt: str, answer: str) -> str:
    """The answer with its echoed prefix (if any) removed: the text whose language is judged."""
    return answer[echoed_prefix(prompt, answer)[1] :]


def distinct_words(text: str) -> int:
    """Distinct case-folded words that carry language evidence (tokens with a letter)."""
    return len({token for token, _ in _spans(text) if any(ch.isalpha() for ch in token)})


def repeated_tail_words(text: str) -> int:
    """Words in the longest tail of `text` that repeats one phrase of at most LOOP_MAX_UNIT words
    LOOP_MIN_REPEATS times or more in a row (the last copy may be cut short by the token limit);
    0 when there is none. Words as count_words counts them, compared case-folded."""
    words = [token for token, _ in _spans(text) if any(ch.isalpha() for ch in token)]
    longest = 0
    for unit in range(1, LOOP_MAX_UNIT + 1):
        start = len(words) - 1  # walk back while each word equals the one a unit earlier
        while start - unit >= 0 and words[start] == words[start - unit]:
            start -= 1
        tail = len(words) - 1 - start + unit  # the periodic stretch, its first copy included
        if tail >= LOOP_MIN_REPEATS * unit and tail <= len(words):
            longest = max(longest, tail)
    return longest


def no_answer_reason(prompt: str, answer: str, min_words: int = 5) -> str | None:
    """Why the answer counts as no answer ("empty", "short", "loop"), or None when it is an answer."""
    if not answer.strip():
        return "empty"
    rest = answer_text(prompt, answer)
    if count_words(rest) < min_words:
        return "short"
    if distinct_words(rest) < min_words or 2 * repeated_tail_words(rest) >= count_words(rest):
        return "loop"
    return None


def answer_outcomes(
    prompts: Sequence[str],
    answers: Sequence[str],
    expected_lang: str,
    language_id: str = "lingua",
    min_words: int = 5,
) -> list[Outcome]:
    """One Outcome per (prompt, answer), in order (see the module docstring)."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if min_words < 1:
        raise ValueError(f"min_words must be >= 1, got {min_words}")
    reasons = [no_answer_reason(p, a, min_words) for p, a in zip(prompts, answers)]
    judged = [answer_text(p, a) for p, a, r in zip(prompts, answers, reasons) if r is None]
    found = iter(identify_languages(judged, language_id))
    outcomes = []
    for prompt, answer, reason in zip(prompts, answers, reasons):
        echoed = echoed_prefix(prompt, answer)[0]
        if reason is not None:
            outcomes.append(Outcome("no_answer", None, reason, echoed))
            continue
        language = next(found)
        outcomes.append(Outcome("target" if language == expected_lang else "other", language, None, echoed))
    return outcomes


def near_languages(expected_lang: str, run_lang: str) -> tuple[str, ...]:
    """The "neighbour" group for a direction: the target's neighbours on target prompts; on English
    prompts (expected "en"), the run's target language and its neighbours."""
    if expected_lang == "en":
        return (run_lang, *NEIGHBOURS.get(run_lang, ()))
    return NEIGHBOURS.get(expected_lang, ())


def other_group(language: str | None, expected_lang: str, run_lang: str) -> str:
    """Which OTHER_GROUPS an other-language answer falls in."""
    if language == "en":
        return "en"
    if language in near_languages(expected_lang, run_lang):
        return "near"
    return "rest"


def outcome_shares(outcomes: Sequence[Outcome], expected_lang: str, run_lang: str) -> dict:
    """Shares over all prompts (None with no prompt): target, other_language, no_answer (summing to
    1), other_en / other_near / other_rest (summing to other_language); counts per other language
    (`other_languages`, undetermined as "und") and per no-answer reason; the neighbour group used."""
    n = len(outcomes)
    kinds = Counter(outcome.kind for outcome in outcomes)
    groups = Counter(other_group(o.language, expected_lang, run_lang) for o in outcomes if o.kind == "other")

    def of_all(count: int) -> float | None:
        return count / n if n else None

    return {
        "n_prompts": n,
        "target": of_all(kinds["target"]),
        "other_language": of_all(kinds["other"]),
        "no_answer": of_all(kinds["no_answer"]),
        **{f"other_{group}": of_all(groups[group]) for group in OTHER_GROUPS},
        "other_languages": dict(
            Counter(o.language or UNDETERMINED for o in outcomes if o.kind == "other").most_common()
        ),
        "no_answer_reasons": {reason: sum(o.reason == reason for o in outcomes) for reason in NO_ANSWER_REASONS},
        "near_languages": list(near_languages(expected_lang, run_lang)),
    }


def detector_accuracy(
    texts_by_lang: Mapping[str, Sequence[str]], language_id: str = "lingua", min_words: int = 5
) -> dict[str, dict]:
    """How often the detector names the right language on texts whose language is known: per
    language, {"n", "accuracy", "confused_with": {code: count}} over its texts of at least
    `min_words` words (accuracy None when there are none). The ceiling of every share above."""
    result = {}
    for lang, texts in texts_by_lang.items():
        judged = [text for text in texts if count_words(text) >= min_words]
        found = identify_languages(judged, language_id)
        wrong = Counter(code for code in found if code != lang)
        result[lang] = {
            "n": len(judged),
            "accuracy": (len(judged) - sum(wrong.values())) / len(judged) if judged else None,
            "confused_with": dict(wrong.most_common()),
        }
    return result
