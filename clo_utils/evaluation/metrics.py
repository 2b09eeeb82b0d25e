"""Pure evaluation metrics: the outcome shares (the headline), the diagnostics beside them, chrF++,
the language-confusion line pass rate, and paired bootstraps (shares, corpus chrF++) for differences
between runs.

What CLO optimises is *which language* a model answers in. Every prompt gets one outcome
(clo_utils.evaluation.outcomes): answered in the prompt's language, in another language, or no
answer; the three shares are taken over all prompts and sum to 1 (docs/method.md §6). Beside them
(`outcome_report`):

  other_en / other_near / other_rest  the other-language share split by the language found:
                  English, the target's close neighbours (Spanish for Catalan, ...), any other
  echo            share of all answers that start by copying the prompt (`is_echo`; diagnostic)
  repetition      share of answers with >= 3 word trigrams whose distinct-trigram ratio is < 0.5
  line_pass       the language-confusion benchmark's line-level pass rate by its own rule: over the
                  n_line_judged answers that have a line of at least five words (the others skipped)
  line_pass_all   the same test over all prompts: an answer without such a line fails

Fidelity among answered prompts is a comparison of two runs only, on the prompts both answered
(`answered_target` flags, compared by clo_utils.analysis.intervals). Language ID sees every language
the detector knows (clo_utils.common.text.identify_languages; `language_id` lingua or fasttext).

Everything here takes strings and returns numbers: no model, no files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..common.text import check_language_id, count_words, identify_languages, normalized_tokens
from .outcomes import answer_outcomes, outcome_shares

DIRECTIONS = ("tgt", "en")  # target prompts -> target references; English prompts -> English references
ECHO_PREFIX_WORDS = 8  # how many opening prompt words an echo must copy (fewer if the prompt is shorter)
ECHO_MIN_PROMPT_WORDS = 3  # shorter prompts are never called echoed: restating "Hi" is not copying
ECHO_MAX_LEAD_IN = 3  # the copy may start after a short lead-in ("Question:", "Sure!")
REPETITION_THRESHOLD = 0.5  # distinct/total word trigrams below this = degenerate, looping text
LINE_MIN_WORDS = 5  # the language-confusion benchmark judges lines of at least this many words
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CHRF_RESAMPLES = 1_000  # sacrebleu's paired-bootstrap default: each resample rescores every run's corpus
# The detector a run of each target language uses unless its recipe says otherwise, chosen by accuracy
# measured on Apertium translations of English answers cut to 6, 12 and 24 words
# (scripts/detector_accuracy.py). ca: lingua reads Catalan better at every cut and names it Spanish far
# less often. es: lingua too; fastText reads 6-word Spanish better but names Catalan text Spanish far
# more often, the error that would flatter a Spanish run. Elsewhere lingua, unmeasured: lid.176 names hand-written Chinese and
# Yoruba sentences Japanese and Irish.
DEFAULT_LANGUAGE_ID = {"ca": "lingua", "es": "lingua"}


def default_language_id(lang: str) -> str:
    """The kit's detector for a run of target language `lang` (DEFAULT_LANGUAGE_ID, else lingua)."""
    return DEFAULT_LANGUAGE_ID.get(lang, "lingua")


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


# --------------------------------------------------------------------------- per-prompt flags and shares

# Per-prompt flags: every prompt counts in target, other_language, no_answer, echo and line_pass_all;
# answered_target is None for a prompt without an answer, line_pass None for an answer without a
# judged line, repetition None for fewer than three trigrams.
FLAG_NAMES = (
    "target",
    "other_language",
    "no_answer",
    "answered_target",
    "echo",
    "repetition",
    "line_pass",
    "line_pass_all",
)


def answer_flags(
    prompts: Sequence[str],
    answers: Sequence[str],
    expected_lang: str,
    language_id: str = "lingua",
    min_words: int = 5,
) -> dict[str, list[Any]]:
    """Per answer, in order, each FLAG_NAMES flag and the outcome itself ("outcomes"), so a paired
    bootstrap over prompts can resample these lists."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    check_language_id(language_id)
    outcomes = answer_outcomes(prompts, answers, expected_lang, language_id=language_id, min_words=min_words)
    ratios = [distinct_trigram_ratio(a) for a in answers]
    line_pass = line_pass_flags(answers, expected_lang, language_id)
    return {
        "outcomes": outcomes,
        "target": [o.kind == "target" for o in outcomes],
        "other_language": [o.kind == "other" for o in outcomes],
        "no_answer": [o.kind == "no_answer" for o in outcomes],
        "answered_target": [None if o.kind == "no_answer" else o.kind == "target" for o in outcomes],
        "echo": [is_echo(p, a) for p, a in zip(prompts, answers)],
        "repetition": [None if r is None else r < REPETITION_THRESHOLD for r in ratios],
        "line_pass": line_pass,
        "line_pass_all": [bool(flag) for flag in line_pass],
    }


def counted(flags: Sequence[bool | None]) -> int:
    """How many answers are inside the share's denominator (the non-None flags)."""
    return sum(f is not None for f in flags)


def share(flags: Sequence[bool | None]) -> float | None:
    """Mean of the non-None flags; None (JSON null) when there are none, never NaN."""
    counted = [f for f in flags if f is not None]
    return sum(counted) / len(counted) if counted else None


def outcome_report(
    prompts: Sequence[str],
    answers: Sequence[str],
    expected_lang: str,
    run_lang: str | None = None,
    language_id: str = "lingua",
    min_words: int = 5,
) -> dict:
    """The metrics.json "eval" entry of one direction, without the reference scores: the outcome
    shares over all prompts (`outcomes.outcome_shares`), echo, repetition, line_pass (with
    n_line_judged), line_pass_all, and the rule used (language_id, min_words). `run_lang` is the
    run's target language (default: expected_lang); it names the neighbours on English prompts."""
    flags = answer_flags(prompts, answers, expected_lang, language_id=language_id, min_words=min_words)
    return {
        **outcome_shares(flags["outcomes"], expected_lang, run_lang or expected_lang),
        **{name: share(flags[name]) for name in ("echo", "repetition", "line_pass", "line_pass_all")},
        "n_line_judged": counted(flags["line_pass"]),
        "language_id": language_id,
        "min_words": min_words,
    }


# --------------------------------------------------------------------------- language confusion


def line_pass_flags(
    answers: Sequence[str], expected_lang: str, language_id: str = "lingua", min_words: int = LINE_MIN_WORDS
) -> list[bool | None]:
    """Per answer: every line of at least `min_words` words is identified as `expected_lang`;
    None when the answer has no such line (the benchmark skips it).

    The language-confusion benchmark's line-level test (Marchisio et al., EMNLP 2024). With
    language_id="fasttext" it uses the benchmark's own detector (lid.176, compressed); lingua
    otherwise. Words are the kit's word count, where the benchmark splits on whitespace.
    """
    lines = [[line for line in answer.splitlines() if count_words(line) >= min_words] for answer in answers]
    found = iter(identify_languages([line for judged in lines for line in judged], language_id))
    flags: list[bool | None] = []
    for judged in lines:
        codes = [next(found) for _ in judged]
        flags.append(all(code == expected_lang for code in codes) if judged else None)
    return flags


def line_pass_rate(
    answers: Sequence[str], expected_lang: str, language_id: str = "lingua", min_words: int = LINE_MIN_WORDS
) -> float | None:
    """Share of judged answers (those with a line of >= min_words words) whose every such line is in
    `expected_lang` (see `line_pass_flags`); None when no answer is judged."""
    return share(line_pass_flags(answers, expected_lang, language_id, min_words))


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
    resample_seeds: bool = False,
) -> dict:
    """The mean share over the runs of `runs_a` (training seeds of one method), minus the mean share
    over `runs_b` when given, with a percentile bootstrap interval.

    Every run's flags are aligned by prompt. Each resample draws prompts with replacement and takes
    every run's answers to the drawn prompts (the paired bootstrap, pooled over seeds). With
    `resample_seeds` it is a two-level bootstrap: each resample also draws the training seeds with
    replacement (the same seed positions on both sides when they have as many runs, so the runs of
    one training seed stay paired), then averages the drawn runs' shares; the interval then covers
    retraining as well as the prompt sample. Without it, or with one run a side, it covers the
    prompts only. Returns {"difference", "low", "high", "n_prompts", "n_resamples"}: "difference" is the statistic
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
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_resamples, n))
    seed_draws = {len(runs): rng.integers(0, len(runs), size=(len(runs), n_resamples)) for runs in groups}
    kept = np.ones(n_resamples, dtype=bool)
    group_means = []
    for runs in groups:
        shares = []
        for flags in runs:
            counted_ = np.array([f is not None for f in flags], dtype=float)[draws].sum(axis=1)
            hits = np.array([bool(f) for f in flags], dtype=float)[draws].sum(axis=1)
            kept &= counted_ > 0
            shares.append(hits / np.maximum(counted_, 1))
        shares = np.asarray(shares)  # (runs, resamples)
        if resample_seeds and len(runs) > 1:
            shares = np.take_along_axis(shares, seed_draws[len(runs)], axis=0)
        group_means.append(shares.mean(axis=0))
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
    resample_seeds: bool = False,
) -> dict:
    """`pooled_bootstrap` for corpus chrF++: the mean over the runs of `runs_a` of each run's corpus
    chrF++, minus the same mean over `runs_b` when given, with a percentile bootstrap interval over
    prompts (and training seeds with `resample_seeds`, as in `pooled_bootstrap`). A run is its
    `chrf_statistics` array (one row per prompt, rows aligned by prompt); each resample draws prompts
    with replacement and rescores every run on them from the summed rows, as sacrebleu's own paired
    bootstrap does. Returns the same keys as `pooled_bootstrap`."""
    import numpy as np

    groups, n = _paired_groups(runs_a, runs_b, confidence)
    groups = [[np.asarray(stats) for stats in runs] for runs in groups]

    def statistic(prompts: Any, picks: dict[int, Any] | None = None) -> float:
        means = []
        for runs in groups:
            chosen = runs if picks is None or len(runs) == 1 else [runs[i] for i in picks[len(runs)]]
            means.append(sum(chrf_from_statistics(stats[prompts]) for stats in chosen) / len(chosen))
        return means[0] - means[1] if len(means) == 2 else means[0]

    result = {"difference": None, "low": None, "high": None, "n_prompts": n, "n_resamples": 0}
    if n == 0:
        return result
    result["difference"] = statistic(slice(None))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_resamples, n))
    sizes = {len(runs) for runs in groups}
    statistics = []
    for prompts in draws:
        picks = {k: rng.integers(0, k, size=k) for k in sizes} if resample_seeds else None
        statistics.append(statistic(prompts, picks))
    return result | _percentile_interval(np.array(statistics), confidence)


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
