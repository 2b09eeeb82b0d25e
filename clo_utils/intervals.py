"""95% intervals for the report and the figures: per-prompt flags from each run's answers.jsonl,
runs grouped over training seeds, and every group compared with SFT at the same budget.

A run group is the runs of one (recipe, language, method, budget, trainable) that differ only in
their training seed (folders <method>-<n>-s<seed>, or a single <method>-<n>; clo_utils.tables
gives each run its `run_group`). For every group and prompt direction:

  value     one training seed: the share, with a percentile bootstrap interval over prompts;
            several: the mean of the seeds' shares, their standard deviation, and a Student-t
            interval across seeds (clo_utils.metrics.across_seeds)
  diff      the seed-mean share minus SFT's at the same budget, with a paired bootstrap interval
            over prompts pooled over seeds (clo_utils.metrics.pooled_bootstrap): answers are
            paired by prompt id, so both sides are scored on the same held-out prompts

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

from clo_utils import runfiles
from clo_utils.metrics import DIRECTIONS, across_seeds, answer_flags, pooled_bootstrap, share
from clo_utils.tables import main_run_dirs

INTERVAL_METRICS = ("fidelity_clean", "wrong_language", "line_pass")
GROUP_COLUMNS = ("recipe", "lang", "method", "method_family", "n_seeds", "trainable", "run_group")


@functools.lru_cache(maxsize=256)
def _cached_flags(run_dir: str, lang: str, stamp: int) -> dict[str, dict[str, dict[str, bool | None]]]:
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
        by_direction[direction] = {i: {m: flags[m][k] for m in INTERVAL_METRICS} for k, i in enumerate(ids)}
    return by_direction


def run_flags(run_dir: str | Path, lang: str) -> dict[str, dict[str, dict[str, bool | None]]] | None:
    """direction -> prompt id -> metric -> flag for one run, from its answers.jsonl (None if absent)."""
    path = Path(run_dir) / "answers.jsonl"
    if not path.is_file():
        return None
    return _cached_flags(str(run_dir), lang, path.stat().st_mtime_ns)


def _direction_flags(run_dirs: Sequence[str], lang: str, direction: str) -> list[dict[str, dict[str, bool | None]]]:
    """Every run's flags for one direction; empty unless every run has answers in that direction."""
    found = [run_flags(d, lang) for d in run_dirs]
    found = [f.get(direction) if f else None for f in found]
    return found if found and all(found) else []  # type: ignore[return-value]


def _aligned(
    flags_by_run: Sequence[dict[str, dict[str, bool | None]]], ids: Sequence[str], metric: str
) -> list[list[bool | None]]:
    return [[flags[i][metric] for i in ids] for flags in flags_by_run]


def _common_ids(flags_by_run: Sequence[dict[str, Any]]) -> list[str]:
    first, *others = flags_by_run
    return [i for i in first if all(i in flags for flags in others)]


def group_value(runs: list[list[bool | None]], n_resamples: int) -> dict[str, Any]:
    """The group's share on one metric: {value, low, high, sd} (see the module docstring)."""
    if len(runs) == 1:
        boot = pooled_bootstrap(runs, n_resamples=n_resamples)
        return {"value": boot["difference"], "low": boot["low"], "high": boot["high"], "sd": None}
    spread = across_seeds([share(flags) for flags in runs])
    # A share lies in [0, 1]: a t-interval from few seeds can reach past either end, so it is cut there.
    low, high = (None, None) if spread["low"] is None else (max(0.0, spread["low"]), min(1.0, spread["high"]))
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


def group_intervals(evals: pd.DataFrame, n_resamples: int = 10_000) -> pd.DataFrame:
    """One row per (run group, direction): GROUP_COLUMNS, direction, run_dirs, train_seeds,
    n_runs, n_prompts, vs (SFT's run group, or None) and per metric m of INTERVAL_METRICS:
    m, m_low, m_high, m_sd, m_diff, m_diff_low, m_diff_high (None where not computable)."""
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
        sft = sft_groups.get((recipe, lang, n_seeds))
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
                if flags and row["n_prompts"]:
                    value = group_value(_aligned(flags, ids, metric), n_resamples)
                else:
                    value = {"value": _metric_from_file(at, metric), "low": None, "high": None, "sd": None}
                row |= {
                    metric: value["value"],
                    f"{metric}_low": value["low"],
                    f"{metric}_high": value["high"],
                    f"{metric}_sd": value["sd"],
                }
                diff: dict[str, Any] = {"difference": None, "low": None, "high": None}
                if sft_flags and row["n_prompts"]:
                    diff = pooled_bootstrap(
                        _aligned(flags, ids, metric), _aligned(sft_flags, ids, metric), n_resamples=n_resamples
                    )
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
