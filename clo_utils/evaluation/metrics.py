"""Pure evaluation metrics: language fidelity and the shares that explain it, chrF++, the
language-confusion line pass rate, and paired bootstraps (shares, corpus chrF++) for differences
between runs.

What CLO optimises is *which language* a model answers in, so the headline metric is language
fidelity: the share of answers written in the prompt's language (docs/method.md §6; the paper
reports no such metric). Language ID is unreliable on short or degenerate answers, so every
fidelity number comes with the shares that explain it (`fidelity_report`):

  fidelity        share of countable answers (>= min_words words) identified as the expected language
  wrong_language  share of countable answers identified as the other language of the pair
  too_short       share of all answers with fewer than min_words words (not countable)
  echo            share of all answers that start by copying the prompt (see `is_echo`)
  repetition      share of answers with >= 3 word trigrams whose distinct-trigram ratio is < 0.5
  fidelity_clean  the headline: fidelity over the answers that are neither too short nor echoed
                  (n_clean of them), so copying the prompt cannot pass for answering in its language
  line_pass       the language-confusion benchmark's line-level pass rate (`line_pass_flags`),
                  over the n_line_judged answers with a line of at least five words

Words and language come from clo_utils.common.text (lingua restricted to {English, target}, the same rule
the translation quality filter uses). lingua may decline to decide; such answers count in neither
fidelity nor wrong_language, so the two can sum to less than 1.

Everything here takes strings and returns numbers: no model, no files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..common.text import count_words, detect_languages, normalized_tokens

DIRECTIONS = ("tgt", "en")  # target prompts -> target references; English prompts -> English references
ECHO_PREFIX_WORDS = 8  # how many opening prompt words an echo must copy (fewer if the prompt is shorter)
ECHO_MIN_PROMPT_WORDS = 3  # shorter prompts are never called echoed: restating "Hi" is not copying
ECHO_MAX_LEAD_IN = 3  # the copy may start after a short lead-in ("Question:", "Sure!")
REPETITION_THRESHOLD = 0.5  # distinct/total word trigrams below this = degenerate, looping text
LINE_MIN_WORDS = 5  # the language-confusion benchmark judges lines of at least this many words
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CHRF_RESAMPLES = 1_000  # sacrebleu's paired-bootstrap default: each resample rescores every run's corpus


# --------------------------------------------------------------------------- language fidelity


def language_fidelity(
    texts: Sequence[str], expected_lang: str, min_words: int = 5, other_lang: str | None = None
) -> float:
    """Share of countable texts (>= min_words words) identified as `expected_lang`.

    The detector is restricted to {expected_lang, other_lang}; other_lang defaults to English for a
    target language and must be given (the run's target) when expected_lang is "en".
    NaN when no text is countable.
    """
    countable = [t for t in texts if count_words(t) >= min_words]
    if not countable:
        return math.nan
    found = detect_languages(countable, expected_lang, other_lang)
    return sum(code == expected_lang for code in found) / len(countable)


# --------------------------------------------------------------------------- degenerate answers


def is_echo(prompt: str, answer: str) -> bool:
    """The answer starts by copying the prompt.

    Precisely: with P the prompt's normalised tokens and k = min(len(P), 8), the answer's
    normalised tokens contain P[:k] as a contiguous run starting at one of its first four
    positions (a lead-in of up to three words, such as "Question:" or "Sure!", is allowed).
    Prompts of fewer than three tokens are never called echoed.
    """
    prompt_tokens, answer_tokens = normalized_tokens(prompt), normalized_tokens(answer)
    k = min(len(prompt_tokens), ECHO_PREFIX_WORDS)
    if k < ECHO_MIN_PROMPT_WORDS:
        return False
    head = prompt_tokens[:k]
    return any(answer_tokens[start : start + k] == head for start in range(ECHO_MAX_LEAD_IN + 1))


def distinct_trigram_ratio(text: str) -> float | None:
    """Distinct / total word trigrams; None when the text has fewer than three trigrams."""
    tokens = normalized_tokens(text)
    trigrams = list(zip(tokens, tokens[1:], tokens[2:]))
    if len(trigrams) < 3:
        return None
    return len(set(trigrams)) / len(trigrams)


# --------------------------------------------------------------------------- per-answer flags and shares

FLAG_NAMES = ("fidelity", "too_short", "wrong_language", "echo", "repetition", "fidelity_clean", "line_pass")


def answer_flags(
    prompts: Sequence[str],
    answers: Sequence[str],
    expected_lang: str,
    min_words: int = 5,
    other_lang: str | None = None,
) -> dict[str, list[bool | None]]:
    """Per answer, in order, whether it counts for each share of `fidelity_report`; None where the
    answer is outside that share's denominator (too short for fidelity and wrong_language, fewer
    than three trigrams for repetition). The shares are the means of the non-None flags, so a
    paired bootstrap over prompts can resample these lists."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    countable = [count_words(a) >= min_words for a in answers]
    found = iter(detect_languages([a for a, c in zip(answers, countable) if c], expected_lang, other_lang))
    languages = [next(found) if c else None for c in countable]
    ratios = [distinct_trigram_ratio(a) for a in answers]
    fidelity = [code == expected_lang if c else None for code, c in zip(languages, countable)]
    echo = [is_echo(p, a) for p, a in zip(prompts, answers)]
    return {
        "fidelity": fidelity,
        "too_short": [not c for c in countable],
        "wrong_language": [code not in (expected_lang, None) if c else None for code, c in zip(languages, countable)],
        "echo": echo,
        "repetition": [None if r is None else r < REPETITION_THRESHOLD for r in ratios],
        "fidelity_clean": [None if echoed else flag for flag, echoed in zip(fidelity, echo)],
        "line_pass": line_pass_flags(answers, expected_lang, other_lang),
    }


def counted(flags: Sequence[bool | None]) -> int:
    """How many answers are inside the share's denominator (the non-None flags)."""
    return sum(f is not None for f in flags)


def share(flags: Sequence[bool | None]) -> float | None:
    """Mean of the non-None flags; None (JSON null) when there are none, never NaN."""
    counted = [f for f in flags if f is not None]
    return sum(counted) / len(counted) if counted else None


def fidelity_report(
    prompts: Sequence[str],
    answers: Sequence[str],
    expected_lang: str,
    min_words: int = 5,
    other_lang: str | None = None,
) -> dict:
    """Fidelity with the shares that explain it (see the module docstring for each definition).

    Keys: n_prompts, the FLAG_NAMES shares, n_clean (the answers fidelity_clean counts) and
    n_line_judged (the answers line_pass counts). A share whose denominator is empty is None (JSON
    null), never NaN.
    """
    flags = answer_flags(prompts, answers, expected_lang, min_words=min_words, other_lang=other_lang)
    return {
        "n_prompts": len(prompts),
        **{name: share(flags[name]) for name in FLAG_NAMES},
        "n_clean": counted(flags["fidelity_clean"]),
        "n_line_judged": counted(flags["line_pass"]),
    }


# --------------------------------------------------------------------------- language confusion


def line_pass_flags(
    answers: Sequence[str], expected_lang: str, other_lang: str | None = None, min_words: int = LINE_MIN_WORDS
) -> list[bool | None]:
    """Per answer: every line of at least `min_words` words is identified as `expected_lang`;
    None when the answer has no such line (it is not judged, like a too-short answer).

    The language-confusion benchmark's line-level test (Marchisio et al., EMNLP 2024), with the
    kit's language ID (lingua restricted to {expected, other}) in place of the benchmark's fastText
    model, which is not available here: comparable in kind with that literature, not digit for digit.
    """
    lines = [[line for line in answer.splitlines() if count_words(line) >= min_words] for answer in answers]
    found = iter(detect_languages([line for judged in lines for line in judged], expected_lang, other_lang))
    flags: list[bool | None] = []
    for judged in lines:
        codes = [next(found) for _ in judged]
        flags.append(all(code == expected_lang for code in codes) if judged else None)
    return flags


def line_pass_rate(
    answers: Sequence[str], expected_lang: str, other_lang: str | None = None, min_words: int = LINE_MIN_WORDS
) -> float | None:
    """Share of judged answers (those with a line of >= min_words words) whose every such line is in
    `expected_lang` (see `line_pass_flags`); None when no answer is judged."""
    return share(line_pass_flags(answers, expected_lang, other_lang, min_words))


# --------------------------------------------------------------------------- paired bootstrap


def paired_bootstrap(
    flags_a: Sequence[bool | None],
    flags_b: Sequence[bool | None],
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = 0.95,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """The difference share(a) - share(b) of two runs that answered the same prompts (flags aligned
    by prompt, None outside the share's denominator), with a percentile bootstrap interval.

    Each resample draws prompts with replacement and takes both runs' answers to the drawn prompts,
    so what the prompts have in common cancels out. Resamples in which either share has an empty
    denominator are left out. Returns {"difference", "low", "high", "n_prompts", "n_resamples"}
    (`n_resamples` counts the resamples kept); low and high are None when none is kept.
    """
    return pooled_bootstrap([flags_a], [flags_b], n_resamples=n_resamples, confidence=confidence, seed=seed)


def pooled_bootstrap(
    runs_a: Sequence[Sequence[bool | None]],
    runs_b: Sequence[Sequence[bool | None]] | None = None,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = 0.95,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """The mean share over the runs of `runs_a` (training seeds of one method), minus the mean share
    over `runs_b` when given, with a percentile bootstrap interval over prompts.

    Every run's flags are aligned by prompt. Each resample draws prompts with replacement and takes
    every run's answers to the drawn prompts (the paired bootstrap, pooled over seeds); the interval
    covers the prompt sample, not the choice of training seeds (`across_seeds` gives that spread).
    Returns {"difference", "low", "high", "n_prompts", "n_resamples"}: "difference" is the statistic
    itself (a plain mean share when runs_b is None); low and high are None when no resample has a
    non-empty denominator in every run.
    """
    import numpy as np

    groups, n = _paired_groups(runs_a, runs_b, confidence)

    def statistic(shares_per_group):
        means = [None if any(s is None for s in shares) else sum(shares) / len(shares) for shares in shares_per_group]
        if any(m is None for m in means):
            return None
        return means[0] - means[1] if len(means) == 2 else means[0]

    value = statistic([[share(flags) for flags in runs] for runs in groups])
    result = {"difference": value, "low": None, "high": None, "n_prompts": n, "n_resamples": 0}
    if value is None or n == 0:
        return result
    draws = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    kept = np.ones(n_resamples, dtype=bool)
    group_means = []
    for runs in groups:
        shares = []
        for flags in runs:
            counted_ = np.array([f is not None for f in flags], dtype=float)[draws].sum(axis=1)
            hits = np.array([bool(f) for f in flags], dtype=float)[draws].sum(axis=1)
            kept &= counted_ > 0
            shares.append(hits / np.maximum(counted_, 1))
        group_means.append(np.mean(shares, axis=0))
    statistics = (group_means[0] - group_means[1] if len(group_means) == 2 else group_means[0])[kept]
    return result | _percentile_interval(statistics, confidence)


def _paired_groups(runs_a: Sequence[Any], runs_b: Sequence[Any] | None, confidence: float) -> tuple[list[list], int]:
    """[runs_a] or [runs_a, runs_b] and the number of prompts every run is aligned on."""
    groups = [list(runs_a)] + ([list(runs_b)] if runs_b is not None else [])
    if any(not runs for runs in groups):
        raise ValueError("bootstrap needs at least one run on each side")
    lengths = {len(per_prompt) for runs in groups for per_prompt in runs}
    if len(lengths) != 1:
        raise ValueError(
            f"paired bootstrap needs the same prompts for every run: per-prompt lists of lengths {sorted(lengths)}"
        )
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return groups, lengths.pop()


def _percentile_interval(statistics: Any, confidence: float) -> dict:
    import numpy as np

    if not len(statistics):
        return {}
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(statistics, [tail, 100 - tail])
    return {"low": float(low), "high": float(high), "n_resamples": int(len(statistics))}


def pooled_chrf_bootstrap(
    runs_a: Sequence[Any],
    runs_b: Sequence[Any] | None = None,
    n_resamples: int = CHRF_RESAMPLES,
    confidence: float = 0.95,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """`pooled_bootstrap` for corpus chrF++: the mean over the runs of `runs_a` of each run's corpus
    chrF++, minus the same mean over `runs_b` when given, with a percentile bootstrap interval over
    prompts. A run is its `chrf_statistics` array (one row per prompt, rows aligned by prompt); each
    resample draws prompts with replacement and rescores every run on them from the summed rows, as
    sacrebleu's own paired bootstrap does. Returns the same keys as `pooled_bootstrap`."""
    import numpy as np

    groups, n = _paired_groups(runs_a, runs_b, confidence)
    groups = [[np.asarray(stats) for stats in runs] for runs in groups]

    def statistic(prompts: Any) -> float:
        means = [sum(chrf_from_statistics(stats[prompts]) for stats in runs) / len(runs) for runs in groups]
        return means[0] - means[1] if len(means) == 2 else means[0]

    result = {"difference": None, "low": None, "high": None, "n_prompts": n, "n_resamples": 0}
    if n == 0:
        return result
    result["difference"] = statistic(slice(None))
    draws = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    return result | _percentile_interval(np.array([statistic(prompts) for prompts in draws]), confidence)


def across_seeds(values: Sequence[float | None], confidence: float = 0.95) -> dict:
    """Mean, sample standard deviation and Student-t interval of one metric over training seeds
    (one value per seed's run; None values are left out). Returns {"mean", "sd", "low", "high",
    "n_seeds"}; sd, low and high are None with fewer than two values."""
    from scipy.stats import t

    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    result = {"mean": None, "sd": None, "low": None, "high": None, "n_seeds": len(kept)}
    if not kept:
        return result
    mean = sum(kept) / len(kept)
    result["mean"] = mean
    if len(kept) >= 2:
        sd = math.sqrt(sum((v - mean) ** 2 for v in kept) / (len(kept) - 1))
        half = float(t.ppf(0.5 + confidence / 2, len(kept) - 1)) * sd / math.sqrt(len(kept))
        result |= {"sd": sd, "low": mean - half, "high": mean + half}
    return result


# --------------------------------------------------------------------------- reference scores


def chrf(answers: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF++ (sacrebleu CHRF with word_order=2), 0-100, one reference per answer."""
    from sacrebleu.metrics import CHRF

    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers but {len(references)} references")
    return CHRF(word_order=2).corpus_score(list(answers), [list(references)]).score


def chrf_statistics(answers: Sequence[str], references: Sequence[str]) -> Any:
    """Per-answer chrF++ match counts (an int array, one row per answer) whose column sums score the
    corpus (`chrf_from_statistics`): the rows sacrebleu's own paired bootstrap resamples, through
    the same two CHRF methods its significance module calls."""
    import numpy as np
    from sacrebleu.metrics import CHRF

    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers but {len(references)} references")
    if not answers:
        return np.zeros((0, 0), dtype=np.int64)
    rows = CHRF(word_order=2)._extract_corpus_statistics(list(answers), [list(references)])
    return np.asarray(rows, dtype=np.int64)


def chrf_from_statistics(statistics: Any) -> float:
    """Corpus chrF++ (0-100) of the answers whose `chrf_statistics` rows are given."""
    from sacrebleu.metrics import CHRF

    return CHRF(word_order=2)._compute_score_from_stats(statistics.sum(axis=0)).score
