"""95% intervals for the report and the figures: per-prompt flags from each run's answers.jsonl,
runs grouped over training seeds, and every group compared with SFT at the same budget.

A run group is the runs of one (recipe, language, method, budget, trainable) that differ only in
their training seed (folders <method>-<n>-s<seed>, or a single <method>-<n>; clo_utils.analysis.tables
gives each run its `run_group`). For every group and prompt direction:

  value     one training seed: the share, with a percentile bootstrap interval over prompts;
            several: the mean of the seeds' shares, their standard deviation, and a Student-t
            interval across seeds (clo_utils.evaluation.metrics.across_seeds)
  diff      the seed-mean share minus SFT's at the same budget, with a paired bootstrap interval
            over prompts pooled over seeds (clo_utils.evaluation.metrics.pooled_bootstrap): answers are
            paired by prompt id, so both sides are scored on the same held-out prompts

The same holds for corpus chrF++ against the references (metric "chrf", 0-100), resampled from
each answer's chrF++ statistics (clo_utils.evaluation.metrics.pooled_chrf_bootstrap, CHRF_RESAMPLES draws).

Language ID runs here, from answers.jsonl, with the same rules evaluate_run used (lingua over
{English, target}; min_words from the run's eval_settings), so metrics files written before the
headline fidelity existed get intervals too. Nothing is written to disk.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from clo_utils.analysis.tables import main_run_dirs
from clo_utils.common import runfiles
from clo_utils.evaluation.metrics import (
    CHRF_RESAMPLES,
    DIRECTIONS,
    across_seeds,
    answer_flags,
    chrf_from_statistics,
    chrf_statistics,
    pooled_bootstrap,
    pooled_chrf_bootstrap,
    share,
)

FLAG_METRICS = ("fidelity_clean", "wrong_language", "line_pass")  # shares of answers
INTERVAL_METRICS = (*FLAG_METRICS, "chrf")  # chrf: corpus chrF++ against the references, 0-100
GROUP_COLUMNS = ("recipe", "lang", "method", "method_family", "n_seeds", "trainable", "run_group")


@functools.lru_cache(maxsize=256)
def _cached_flags(run_dir: str, lang: str, stamp: int) -> dict[str, dict[str, dict[str, Any]]]:
    del stamp  # part of the cache key only: a rewritten answers.jsonl is read again
    settings = (
        (runfiles.read_metrics(run_dir).get("eval_settings") or {}) if Path(run_dir, "metrics.json").is_file() else {}
    )
    min_words = int(settings.get("min_words") or 5)
    rows = runfiles.read_answers(run_dir)
    by_direction: dict[str, dict[str, dict[str, bool | None]]] = {}
    sides = {"tgt": (lang, "en"), "en": ("en", lang)}
    for direction in DIRECTIONS:
        answered = {str(row["id"]): row for row in rows if row.get("direction") == direction}
        if not answered:
            continue
        ids = list(answered)
        expected, other = sides[direction]
        flags = answer_flags(
            [str(answered[i].get("prompt") or "") for i in ids],
            [str(answered[i].get("answer") or "") for i in ids],
            expected,
            min_words=min_words,
            other_lang=other,
        )
        references = [answered[i].get("reference") for i in ids]
        chrf_rows = (
            chrf_statistics([str(answered[i].get("answer") or "") for i in ids], references)
            if all(isinstance(r, str) for r in references)
            else [None] * len(ids)
        )
        by_direction[direction] = {
            i: {**{m: flags[m][k] for m in FLAG_METRICS}, "chrf": chrf_rows[k]} for k, i in enumerate(ids)
        }
    return by_direction


def run_flags(run_dir: str | Path, lang: str) -> dict[str, dict[str, dict[str, Any]]] | None:
    """direction -> prompt id -> metric -> flag for one run, from its answers.jsonl (None if absent);
    "chrf" holds the answer's chrF++ statistics row (None when answers.jsonl has no reference)."""
    path = Path(run_dir) / "answers.jsonl"
    if not path.is_file():
        return None
    return _cached_flags(str(run_dir), lang, path.stat().st_mtime_ns)


def _direction_flags(run_dirs: Sequence[str], lang: str, direction: str) -> list[dict[str, dict[str, Any]]]:
    """Every run's flags for one direction; empty unless every run has answers in that direction."""
    found = [run_flags(d, lang) for d in run_dirs]
    found = [f.get(direction) if f else None for f in found]
    return found if found and all(found) else []  # type: ignore[return-value]


def _aligned(flags_by_run: Sequence[dict[str, dict[str, Any]]], ids: Sequence[str], metric: str) -> list[Any] | None:
    """Each run's per-prompt values in `ids` order: flags, or for chrf one statistics array per run
    (None when a run's answers.jsonl has no references)."""
    per_run = [[flags[i][metric] for i in ids] for flags in flags_by_run]
    if metric != "chrf":
        return per_run
    if any(row is None for rows in per_run for row in rows):
        return None
    import numpy as np

    return [np.stack(rows) for rows in per_run]


def _common_ids(flags_by_run: Sequence[dict[str, Any]]) -> list[str]:
    first, *others = flags_by_run
    return [i for i in first if all(i in flags for flags in others)]


def _bootstrap(metric: str, runs: list[Any], sft_runs: list[Any] | None, n_resamples: int) -> dict[str, Any]:
    if metric == "chrf":
        return pooled_chrf_bootstrap(runs, sft_runs, n_resamples=min(n_resamples, CHRF_RESAMPLES))
    return pooled_bootstrap(runs, sft_runs, n_resamples=n_resamples)


def group_value(runs: list[Any], n_resamples: int, metric: str = "fidelity_clean") -> dict[str, Any]:
    """The group's value on one metric: {value, low, high, sd} (see the module docstring)."""
    if len(runs) == 1:
        boot = _bootstrap(metric, runs, None, n_resamples)
        return {"value": boot["difference"], "low": boot["low"], "high": boot["high"], "sd": None}
    values = [chrf_from_statistics(stats) for stats in runs] if metric == "chrf" else [share(flags) for flags in runs]
    spread = across_seeds(values)
    # A share lies in [0, 1] and chrF++ in [0, 100]: a t-interval from few seeds can reach past
    # either end, so it is cut there.
    top = 100.0 if metric == "chrf" else 1.0
    low, high = (None, None) if spread["low"] is None else (max(0.0, spread["low"]), min(top, spread["high"]))
    return {"value": spread["mean"], "low": low, "high": high, "sd": spread["sd"]}


def _metric_from_file(runs: pd.DataFrame, metric: str) -> float | None:
    # Without answers.jsonl: the metrics.json value (fidelity for files older than the headline).
    column = (
        metric
        if metric in runs and runs[metric].notna().any()
        else ("fidelity" if metric == "fidelity_clean" else None)
    )
    if column is None or column not in runs:
        return None
    return across_seeds(list(runs[column]))["mean"]


def _groups(evals: pd.DataFrame) -> list[tuple[tuple[Any, ...], pd.DataFrame]]:
    frame = evals.copy()
    frame["trainable"] = frame["trainable"].fillna("")
    return list(frame.groupby(list(GROUP_COLUMNS), sort=False))


def group_intervals(evals: pd.DataFrame, n_resamples: int = 10_000, sft_budget_factor: int = 1) -> pd.DataFrame:
    """One row per (run group, direction): GROUP_COLUMNS, direction, run_dirs, train_seeds,
    n_runs, n_prompts, vs (SFT's run group, or None) and per metric m of INTERVAL_METRICS:
    m, m_low, m_high, m_sd, m_diff, m_diff_low, m_diff_high (None where not computable).

    Each group is compared with SFT at `sft_budget_factor` times its budget: 1 is the same budget;
    2 asks the paper's data-efficiency question (is a method on N/2 seeds as good as SFT on N?)."""
    if sft_budget_factor < 1:
        raise ValueError(f"sft_budget_factor must be a positive integer, got {sft_budget_factor}")
    main = main_run_dirs(evals)
    sft_groups: dict[tuple[Any, ...], pd.DataFrame] = {}
    groups = _groups(evals)
    for key, runs in groups:
        recipe, lang, _, family, n_seeds, _, _ = key
        if family == "sft" and runs["run_dir"].isin(main).all():
            sft_groups[(recipe, lang, n_seeds)] = runs
    rows = []
    for key, runs in groups:
        recipe, lang, _, family, n_seeds, _, group = key
        sft = sft_groups.get((recipe, lang, n_seeds * sft_budget_factor))
        is_reference = sft is not None and set(sft["run_dir"]) == set(runs["run_dir"])
        for direction in DIRECTIONS:
            at = runs[runs["direction"] == direction].drop_duplicates("run_dir").sort_values("run_name")
            if at.empty:
                continue
            row: dict[str, Any] = dict(
                zip(GROUP_COLUMNS, key),
                direction=direction,
                run_dirs=tuple(at["run_dir"]),
                train_seeds=tuple(s for s in at["train_seed"] if pd.notna(s)),
                n_runs=len(at),
                n_prompts=None,
                vs=None if sft is None or is_reference else str(sft["run_group"].iloc[0]),
            )
            flags = _direction_flags(list(at["run_dir"]), lang, direction)
            sft_flags = (
                []
                if sft is None or is_reference
                else _direction_flags(list(sft[sft["direction"] == direction]["run_dir"].unique()), lang, direction)
            )
            if flags:
                ids = _common_ids(flags + sft_flags)
                row["n_prompts"] = len(ids)
            for metric in INTERVAL_METRICS:
                aligned = _aligned(flags, ids, metric) if flags and row["n_prompts"] else None
                if aligned is not None:
                    value = group_value(aligned, n_resamples, metric)
                else:
                    value = {"value": _metric_from_file(at, metric), "low": None, "high": None, "sd": None}
                row |= {
                    metric: value["value"],
                    f"{metric}_low": value["low"],
                    f"{metric}_high": value["high"],
                    f"{metric}_sd": value["sd"],
                }
                diff: dict[str, Any] = {"difference": None, "low": None, "high": None}
                sft_aligned = _aligned(sft_flags, ids, metric) if sft_flags and row["n_prompts"] else None
                if aligned is not None and sft_aligned is not None:
                    diff = _bootstrap(metric, aligned, sft_aligned, n_resamples)
                row |= {
                    f"{metric}_diff": diff["difference"],
                    f"{metric}_diff_low": diff["low"],
                    f"{metric}_diff_high": diff["high"],
                }
            rows.append(row)
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["trainable"] = frame["trainable"].replace("", None)
    return frame
