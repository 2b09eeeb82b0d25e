"""95% intervals for the report and the figures: per-prompt flags from each run's answers.jsonl,
runs grouped over training seeds, and every group compared with a reference group at the same budget
(SFT; and CLO also with SFT+DPO).

A run group is the runs of one (recipe, language, method, budget, trainable) that differ only in
their training seed (folders <method>-<n>-s<seed>, or a single <method>-<n>; clo_utils.analysis.tables
gives each run its `run_group`). For every group and prompt direction:

  value     one training seed: the share, with a percentile bootstrap interval over prompts;
            several: the mean of the seeds' shares, their standard deviation, and a Student-t
            interval across seeds (clo_utils.evaluation.metrics.across_seeds)
  diff      the seed-mean share minus the reference group's, answers paired by prompt id (both
            sides scored on the same held-out prompts). With one training seed a side: a paired
            bootstrap over prompts (it covers the prompts only). With several: a two-level bootstrap,
            training seeds then prompts (clo_utils.evaluation.metrics.pooled_bootstrap with
            resample_seeds), so the interval covers retraining too; `interval` says which.
  answered  fidelity among answered prompts, only as a comparison: on the prompts every run of both
            groups answered (`answered_n` of them), the share answered in the prompt's language,
            and its difference

The shares are the outcome shares over all prompts (clo_utils.evaluation.outcomes): target,
other_language, no_answer; line_pass by the benchmark's rule (answers without a judged line
skipped) and line_pass_all over all prompts. The same holds for corpus chrF++ against the
references (metric "chrf", 0-100), resampled from each answer's chrF++ statistics
(clo_utils.evaluation.metrics.pooled_chrf_bootstrap, CHRF_RESAMPLES draws).

Language ID runs here, from answers.jsonl, with each run's recorded rule (eval_settings: language_id,
min_words; the kit's defaults where a run records none), so saved answers are rescored without
generating them again. Nothing is written to disk.
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
    default_language_id,
    pooled_bootstrap,
    pooled_chrf_bootstrap,
    share,
)

FLAG_METRICS = ("target", "other_language", "no_answer", "line_pass", "line_pass_all")  # shares of prompts
INTERVAL_METRICS = (*FLAG_METRICS, "chrf")  # chrf: corpus chrF++ against the references, 0-100
GROUP_COLUMNS = ("recipe", "lang", "method", "method_family", "n_seeds", "trainable", "run_group")
# Who each family is compared with: SFT for every method, and CLO also with SFT+DPO.
REFERENCES = {"sft": None, "sft_dpo": ("clo",)}


def scoring_rule(run_dir: str | Path, lang: str) -> tuple[str, int]:
    """(language_id, min_words) a run was scored with: its eval_settings, else the kit's defaults."""
    path = Path(run_dir, "metrics.json")
    settings = (runfiles.read_metrics(run_dir).get("eval_settings") or {}) if path.is_file() else {}
    return str(settings.get("language_id") or default_language_id(lang)), int(settings.get("min_words") or 5)


@functools.lru_cache(maxsize=256)
def _cached_flags(run_dir: str, lang: str, stamp: int, language_id: str, min_words: int) -> dict[str, Any]:
    del stamp  # part of the cache key only: a rewritten answers.jsonl is read again
    rows = runfiles.read_answers(run_dir)
    by_direction: dict[str, dict[str, dict[str, Any]]] = {}
    for direction in DIRECTIONS:
        answered = {str(row["id"]): row for row in rows if row.get("direction") == direction}
        if not answered:
            continue
        ids = list(answered)
        flags = answer_flags(
            [str(answered[i].get("prompt") or "") for i in ids],
            [str(answered[i].get("answer") or "") for i in ids],
            lang if direction == "tgt" else "en",
            language_id=language_id,
            min_words=min_words,
        )
        references = [answered[i].get("reference") for i in ids]
        chrf_rows = (
            chrf_statistics([str(answered[i].get("answer") or "") for i in ids], references)
            if all(isinstance(r, str) for r in references)
            else [None] * len(ids)
        )
        by_direction[direction] = {
            i: {**{m: flags[m][k] for m in (*FLAG_METRICS, "answered_target", "outcomes")}, "chrf": chrf_rows[k]}
            for k, i in enumerate(ids)
        }
    return by_direction


def run_flags(run_dir: str | Path, lang: str) -> dict[str, dict[str, dict[str, Any]]] | None:
    """direction -> prompt id -> metric -> flag for one run, from its answers.jsonl (None if absent);
    "chrf" holds the answer's chrF++ statistics row (None when answers.jsonl has no reference)."""
    path = Path(run_dir) / "answers.jsonl"
    if not path.is_file():
        return None
    return _cached_flags(str(run_dir), lang, path.stat().st_mtime_ns, *scoring_rule(run_dir, lang))


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


def _bootstrap(
    metric: str, runs: list[Any], ref_runs: list[Any] | None, n_resamples: int, resample_seeds: bool = False
) -> dict[str, Any]:
    if metric == "chrf":
        return pooled_chrf_bootstrap(
            runs, ref_runs, n_resamples=min(n_resamples, CHRF_RESAMPLES), resample_seeds=resample_seeds
        )
    return pooled_bootstrap(runs, ref_runs, n_resamples=n_resamples, resample_seeds=resample_seeds)


def group_value(runs: list[Any], n_resamples: int, metric: str = "target") -> dict[str, Any]:
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


def answered_comparison(
    flags: Sequence[dict[str, Any]], ref_flags: Sequence[dict[str, Any]], ids: Sequence[str], n_resamples: int
) -> dict[str, Any]:
    """Fidelity among answered prompts, as a comparison: on the prompts of `ids` that every run of
    both groups answered, each side's share in the prompt's language and the difference, with a
    paired bootstrap interval (training seeds too when a side has several). Keys answered_n,
    answered_target, answered_target_ref, answered_target_diff(_low, _high)."""
    both = [i for i in ids if all(run[i]["answered_target"] is not None for run in (*flags, *ref_flags))]
    result: dict[str, Any] = {"answered_n": len(both)}
    if not both:
        return result
    runs = [[run[i]["answered_target"] for i in both] for run in flags]
    ref_runs = [[run[i]["answered_target"] for i in both] for run in ref_flags]
    diff = pooled_bootstrap(runs, ref_runs, n_resamples=n_resamples, resample_seeds=len(runs) > 1 or len(ref_runs) > 1)
    return result | {
        "answered_target": sum(map(share, runs)) / len(runs),
        "answered_target_ref": sum(map(share, ref_runs)) / len(ref_runs),
        "answered_target_diff": diff["difference"],
        "answered_target_diff_low": diff["low"],
        "answered_target_diff_high": diff["high"],
    }


def _metric_from_file(runs: pd.DataFrame, metric: str) -> float | None:
    # Without answers.jsonl: the metrics.json value (None for files written before that metric).
    if metric not in runs or not runs[metric].notna().any():
        return None
    return across_seeds(list(runs[metric]))["mean"]


def _groups(evals: pd.DataFrame) -> list[tuple[tuple[Any, ...], pd.DataFrame]]:
    frame = evals.copy()
    frame["trainable"] = frame["trainable"].fillna("")
    return list(frame.groupby(list(GROUP_COLUMNS), sort=False))


def group_intervals(
    evals: pd.DataFrame, n_resamples: int = 10_000, sft_budget_factor: int = 1, reference: str = "sft"
) -> pd.DataFrame:
    """One row per (run group, direction): GROUP_COLUMNS, direction, run_dirs, train_seeds,
    n_runs, n_prompts, vs (the reference's run group, or None), interval ("seeds and prompts" or
    "prompts") and per metric m of INTERVAL_METRICS: m, m_low, m_high, m_sd, m_diff, m_diff_low,
    m_diff_high (None where not computable); and the answered_* columns of `answered_comparison`.

    Each group is compared with the `reference` family's main group (sft, or sft_dpo: then only the
    families of REFERENCES["sft_dpo"] are compared, the others get vs None) at `sft_budget_factor`
    times its budget: 1 is the same budget; 2 asks the paper's data-efficiency question (is a method
    on N/2 seeds as good as the reference on N?)."""
    if sft_budget_factor < 1:
        raise ValueError(f"sft_budget_factor must be a positive integer, got {sft_budget_factor}")
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {sorted(REFERENCES)}, got {reference!r}")
    compared = REFERENCES[reference]
    main = main_run_dirs(evals)
    ref_groups: dict[tuple[Any, ...], pd.DataFrame] = {}
    groups = _groups(evals)
    for key, runs in groups:
        recipe, lang, _, family, n_seeds, _, _ = key
        if family == reference and runs["run_dir"].isin(main).all():
            ref_groups[(recipe, lang, n_seeds)] = runs
    rows = []
    for key, runs in groups:
        recipe, lang, _, family, n_seeds, _, group = key
        ref = ref_groups.get((recipe, lang, n_seeds * sft_budget_factor))
        if compared is not None and family not in compared:
            ref = None
        is_reference = ref is not None and set(ref["run_dir"]) == set(runs["run_dir"])
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
                vs=None if ref is None or is_reference else str(ref["run_group"].iloc[0]),
                interval=None,
                answered_n=None,
            )
            flags = _direction_flags(list(at["run_dir"]), lang, direction)
            ref_flags = (
                []
                if row["vs"] is None
                else _direction_flags(
                    list(ref[ref["direction"] == direction].sort_values("run_name")["run_dir"].unique()),
                    lang,
                    direction,
                )
            )
            ids: list[str] = []
            if flags:
                ids = _common_ids(flags + ref_flags)
                row["n_prompts"] = len(ids)
            several = len(flags) > 1 or len(ref_flags) > 1
            if flags and ref_flags:
                row["interval"] = "seeds and prompts" if several else "prompts"
                row |= answered_comparison(flags, ref_flags, ids, n_resamples)
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
                ref_aligned = _aligned(ref_flags, ids, metric) if ref_flags and row["n_prompts"] else None
                if aligned is not None and ref_aligned is not None:
                    diff = _bootstrap(metric, aligned, ref_aligned, n_resamples, resample_seeds=several)
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
