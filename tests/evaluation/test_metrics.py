"""clo_utils.evaluation.metrics: the language-confusion line pass rate on hand-written answers, and the paired
bootstrap against a hand computation and the normal approximation."""

from __future__ import annotations

import math
import random

import pytest

from clo_utils.evaluation import metrics

CA = "La biblioteca del poble obre cada dia a les nou del matí i tanca a les vuit del vespre."
ES = "La biblioteca del pueblo abre todos los días a las nueve de la mañana y cierra a las ocho de la tarde."
EN = "The village library opens every day at nine in the morning and closes at eight in the evening."


def test_line_pass_rate_judges_every_long_line():
    answers = [
        f"{CA}\n{CA}",  # every line Catalan: passes
        f"{CA}\n{EN}",  # one English line: fails
        f"{CA}\nVale, gràcies.",  # the short line is not judged: passes
        "Hola, bon dia.",  # no line of five words: not judged
    ]
    assert metrics.line_pass_flags(answers, "ca") == [True, False, True, None]
    assert metrics.line_pass_rate(answers, "ca") == pytest.approx(2 / 3)
    # English prompts: English is expected, a Catalan line fails.
    assert metrics.line_pass_flags([EN, f"{EN}\n{CA}"], "en") == [True, False]
    assert metrics.line_pass_rate(["Hola."], "ca") is None
    # A Spanish line fails a Catalan answer: the detector sees every language.
    assert metrics.line_pass_flags([f"{CA}\n{ES}"], "ca") == [False]
    # The benchmark's detector gives the same verdicts on these lines.
    assert metrics.line_pass_flags(answers, "ca", language_id="fasttext") == [True, False, True, None]


def test_line_pass_two_ways_benchmark_rule_skips_and_all_prompts_fail():
    prompts = ["Explica'm on és la biblioteca."] * 4
    answers = [CA, f"{CA}\n{EN}", "Hola, bon dia.", ""]
    report = metrics.outcome_report(prompts, answers, "ca")
    # Benchmark rule: two answers have a judged line, one passes. All prompts: one of four passes.
    assert report["n_line_judged"] == 2 and report["line_pass"] == 0.5
    assert report["line_pass_all"] == 0.25


def test_answer_flags_give_the_report_shares():
    prompts = ["Digues-me on és la biblioteca del poble, si us plau."] * 4
    answers = [CA, EN, "Sí.", "Digues-me on és la biblioteca del poble, si us plau. " + CA]
    flags = metrics.answer_flags(prompts, answers, "ca")
    assert flags["target"] == [True, False, False, True]
    assert flags["other_language"] == [False, True, False, False]
    assert flags["no_answer"] == [False, False, True, False]
    assert flags["answered_target"] == [True, False, None, True]
    assert flags["echo"] == [False, False, False, True]
    report = metrics.outcome_report(prompts, answers, "ca")
    assert (report["target"], report["other_language"], report["no_answer"]) == (0.5, 0.25, 0.25)
    assert report["other_en"] == 0.25 and report["other_near"] == report["other_rest"] == 0.0
    assert report["echo"] == 0.25 and report["n_prompts"] == 4
    assert report["other_languages"] == {"en": 1} and report["no_answer_reasons"]["short"] == 1
    with pytest.raises(ValueError, match="language_id must be one of lingua | fasttext"):
        metrics.answer_flags(prompts, answers, "ca", language_id="cld3")


def test_paired_bootstrap_difference_and_degenerate_cases():
    a = [True, True, False, None, True]
    b = [False, True, False, True, None]
    result = metrics.paired_bootstrap(a, b, n_resamples=2000)
    assert result["difference"] == pytest.approx(3 / 4 - 2 / 4)  # None is outside each share's denominator
    assert result["low"] <= result["difference"] <= result["high"]
    assert result == metrics.paired_bootstrap(a, b, n_resamples=2000)  # fixed seed: reproducible
    same = metrics.paired_bootstrap(a, a, n_resamples=500)
    assert (same["difference"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    assert metrics.paired_bootstrap([None], [True])["low"] is None
    with pytest.raises(ValueError, match="same prompts"):
        metrics.paired_bootstrap([True], [True, False])


def test_paired_bootstrap_interval_matches_the_normal_approximation():
    # 400 prompts; run A right on 70%, run B on 60%, correlated through the prompts.
    rng = random.Random(1)
    a, b = [], []
    for _ in range(400):
        easy = rng.random() < 0.5
        a.append(rng.random() < (0.9 if easy else 0.5))
        b.append(rng.random() < (0.8 if easy else 0.4))
    d = [int(x) - int(y) for x, y in zip(a, b)]
    mean = sum(d) / len(d)
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / len(d) / len(d))
    result = metrics.paired_bootstrap(a, b, n_resamples=20000)
    assert result["difference"] == pytest.approx(mean)
    assert result["n_resamples"] == 20000
    assert result["low"] == pytest.approx(mean - 1.96 * se, abs=0.15 * se)
    assert result["high"] == pytest.approx(mean + 1.96 * se, abs=0.15 * se)


def test_pooled_bootstrap_over_seeds_matches_an_independent_resampling():
    # Two seeds per method, 20 prompts; None marks an answer outside the denominator.
    a = [[True] * 18 + [False, None], [True] * 20]
    b = [[False] * 6 + [True] * 13 + [None], [False] * 4 + [True] * 16]
    result = metrics.pooled_bootstrap(a, b, n_resamples=20000)
    expected = (18 / 19 + 1.0) / 2 - (13 / 19 + 16 / 20) / 2
    assert result["difference"] == pytest.approx(expected)
    # The same statistic by a plain-Python resampling with another generator.
    rng = random.Random(7)
    stats = []
    for _ in range(20000):
        drawn = [rng.randrange(20) for _ in range(20)]

        def mean_share(runs, drawn=drawn):
            shares = []
            for flags in runs:
                kept = [flags[i] for i in drawn if flags[i] is not None]
                shares.append(sum(kept) / len(kept))
            return sum(shares) / len(shares)

        stats.append(mean_share(a) - mean_share(b))
    stats.sort()
    assert result["low"] == pytest.approx(stats[int(0.025 * len(stats))], abs=0.02)
    assert result["high"] == pytest.approx(stats[int(0.975 * len(stats))], abs=0.02)
    # One run against one run is the paired bootstrap.
    assert metrics.pooled_bootstrap([a[0]], [b[0]], n_resamples=500) == metrics.paired_bootstrap(
        a[0], b[0], n_resamples=500
    )
    one = metrics.pooled_bootstrap([a[0]], n_resamples=500)
    assert one["difference"] == pytest.approx(18 / 19) and one["low"] <= 18 / 19 <= one["high"]


def test_paired_difference_on_constructed_answers_matches_the_binomial():
    # Run A answers all 40 prompts in Catalan; run B answers 10 of them in English. Per prompt the
    # difference is 1 on those 10 and 0 elsewhere, so a resample's difference is Binomial(40, 1/4) / 40.
    from scipy.stats import binom

    prompts = [f"Pregunta número {i}: explica'm alguna cosa." for i in range(40)]
    flags_a = metrics.answer_flags(prompts, [CA] * 40, "ca")["target"]
    flags_b = metrics.answer_flags(prompts, [EN] * 10 + [CA] * 30, "ca")["target"]
    result = metrics.paired_bootstrap(flags_a, flags_b, n_resamples=20000)
    assert result["difference"] == pytest.approx(0.25) and result["n_prompts"] == 40
    assert result["low"] == pytest.approx(binom.ppf(0.025, 40, 0.25) / 40, abs=1 / 40 + 1e-9)
    assert result["high"] == pytest.approx(binom.ppf(0.975, 40, 0.25) / 40, abs=1 / 40 + 1e-9)


def test_across_seeds_mean_sd_and_t_interval():
    result = metrics.across_seeds([0.2, 0.3, 0.4, None])
    # Hand values: sd = 0.1; t(0.975, 2 degrees of freedom) = 4.302653.
    assert result["n_seeds"] == 3 and result["mean"] == pytest.approx(0.3) and result["sd"] == pytest.approx(0.1)
    assert result["low"] == pytest.approx(0.3 - 4.302653 * 0.1 / math.sqrt(3), abs=1e-6)
    assert result["high"] == pytest.approx(0.3 + 4.302653 * 0.1 / math.sqrt(3), abs=1e-6)
    single = metrics.across_seeds([0.5])
    assert single["mean"] == 0.5 and single["sd"] is None and single["low"] is None


def _sentences(n: int, seed: int) -> list[str]:
    words = CA.split() + EN.split()
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randrange(3, 12))) for _ in range(n)]


def test_chrf_statistics_sum_to_the_corpus_score():
    answers, references = _sentences(15, 1), _sentences(15, 2)
    statistics = metrics.chrf_statistics(answers, references)
    assert statistics.shape[0] == 15
    assert metrics.chrf_from_statistics(statistics) == pytest.approx(metrics.chrf(answers, references), abs=1e-9)
    assert metrics.chrf_from_statistics(statistics[[0, 0, 3]]) == pytest.approx(
        metrics.chrf([answers[0], answers[0], answers[3]], [references[0], references[0], references[3]]), abs=1e-9
    )
    assert metrics.chrf_statistics([], []).shape[0] == 0
    with pytest.raises(ValueError, match="3 answers but 2 references"):
        metrics.chrf_statistics(answers[:3], references[:2])


def test_pooled_chrf_bootstrap_rescores_every_run_on_each_resample():
    import numpy as np

    references = _sentences(12, 3)
    runs_a, runs_b = [_sentences(12, 4), _sentences(12, 5)], [_sentences(12, 6), references[:6] + _sentences(6, 7)]
    result = metrics.pooled_chrf_bootstrap(
        [metrics.chrf_statistics(a, references) for a in runs_a],
        [metrics.chrf_statistics(b, references) for b in runs_b],
        n_resamples=60,
    )

    def mean_chrf(runs, drawn):
        return sum(metrics.chrf([run[i] for i in drawn], [references[i] for i in drawn]) for run in runs) / len(runs)

    everything = range(12)
    assert result["difference"] == pytest.approx(mean_chrf(runs_a, everything) - mean_chrf(runs_b, everything))
    # The same resamples scored by sacrebleu's corpus_score on the drawn answers themselves.
    draws = np.random.default_rng(metrics.BOOTSTRAP_SEED).integers(0, 12, size=(60, 12))
    expected = np.percentile([mean_chrf(runs_a, d) - mean_chrf(runs_b, d) for d in draws], [2.5, 97.5])
    assert (result["low"], result["high"]) == pytest.approx(tuple(expected), abs=1e-9)
    assert result["n_prompts"] == 12 and result["n_resamples"] == 60
    same = metrics.pooled_chrf_bootstrap([metrics.chrf_statistics(runs_a[0], references)] * 2, n_resamples=30)
    assert same["difference"] == pytest.approx(mean_chrf(runs_a[:1], everything))
    assert same["low"] <= same["difference"] <= same["high"]
    with pytest.raises(ValueError, match="same prompts"):
        metrics.pooled_chrf_bootstrap(
            [metrics.chrf_statistics(runs_a[0], references)],
            [metrics.chrf_statistics(runs_b[0][:5], references[:5])],
        )


def test_two_level_bootstrap_covers_retraining_when_seed_means_differ():
    # 200 prompts; method A's three training seeds answer 50%, 70% and 90% of them right, B's three
    # seeds 60% each. Resampling the seeds too must widen the interval of the difference.
    n = 200
    runs_a = [[i < n * share for i in range(n)] for share in (0.5, 0.7, 0.9)]
    runs_b = [[i < n * 0.6 for i in range(n)] for _ in range(3)]
    prompts_only = metrics.pooled_bootstrap(runs_a, runs_b, n_resamples=4000)
    retraining = metrics.pooled_bootstrap(runs_a, runs_b, n_resamples=4000, resample_seeds=True)
    assert prompts_only["difference"] == retraining["difference"] == pytest.approx(0.1)
    width = lambda r: r["high"] - r["low"]  # noqa: E731
    assert width(retraining) > width(prompts_only) + 0.05
    # Seed means that agree add nothing to resample: the two intervals are alike.
    same = [[i < n * 0.7 for i in range(n)] for _ in range(3)]
    assert width(metrics.pooled_bootstrap(same, runs_b, n_resamples=4000, resample_seeds=True)) == pytest.approx(
        width(metrics.pooled_bootstrap(same, runs_b, n_resamples=4000)), abs=0.02
    )
