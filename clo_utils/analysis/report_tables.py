"""REPORT.md's number tables: the measured table, and every run group against SFT with 95% intervals."""

from __future__ import annotations

from typing import Any, NamedTuple

import pandas as pd

from clo_utils.analysis.intervals import INTERVAL_METRICS, group_intervals
from clo_utils.analysis.markdown import (
    MISSING,
    format_number,
    is_missing,
    markdown_cell,
    markdown_table,
    unique_in_order,
)
from clo_utils.analysis.tables import ordered_languages
from clo_utils.common.methods import METHOD_ORDER
from clo_utils.evaluation.metrics import CHRF_RESAMPLES


class ReportColumn(NamedTuple):
    header: str
    source: str  # key in metrics.json (eval field, or train field when direction is None)
    direction: str | None  # "tgt" / "en" for eval fields
    digits: int


# The outcome shares over all prompts first (target, other language split by the language found, no
# answer: they sum to 1 per direction), then the secondary figures and diagnostics.
REPORT_COLUMNS: tuple[ReportColumn, ...] = (
    ReportColumn("target: in target", "target", "tgt", 3),
    ReportColumn("target: other", "other_language", "tgt", 3),
    ReportColumn("target: other English", "other_en", "tgt", 3),
    ReportColumn("target: other neighbour", "other_near", "tgt", 3),
    ReportColumn("target: other rest", "other_rest", "tgt", 3),
    ReportColumn("target: no answer", "no_answer", "tgt", 3),
    ReportColumn("English: in English", "target", "en", 3),
    ReportColumn("English: other", "other_language", "en", 3),
    ReportColumn("English: other target or neighbour", "other_near", "en", 3),
    ReportColumn("English: other rest", "other_rest", "en", 3),
    ReportColumn("English: no answer", "no_answer", "en", 3),
    ReportColumn("target line pass (benchmark rule)", "line_pass", "tgt", 3),
    ReportColumn("target lines judged", "n_line_judged", "tgt", 0),
    ReportColumn("target line pass (all prompts)", "line_pass_all", "tgt", 3),
    ReportColumn("target chrF++", "chrf", "tgt", 1),
    ReportColumn("English chrF++", "chrf", "en", 1),
    ReportColumn("target NLL (nats/token)", "nll", "tgt", 3),
    ReportColumn("echo (target)", "echo", "tgt", 3),
    ReportColumn("repetition (target)", "repetition", "tgt", 3),
    ReportColumn("train seconds", "train_seconds", None, 1),
)


ROW_KEYS = ("lang", "method", "n_seeds", "trainable", "run")


HEADLINE = "target"


def _method_rank(family: str) -> int:
    return METHOD_ORDER.index(family) if family in METHOD_ORDER else len(METHOD_ORDER)


def sorted_runs(runs: pd.DataFrame) -> pd.DataFrame:
    language_rank = {lang: i for i, lang in enumerate(ordered_languages(runs["lang"]))}
    keys = runs.assign(_lang=runs["lang"].map(language_rank), _method=runs["method_family"].map(_method_rank))
    name = "run" if "run" in keys else "run_name"
    return keys.sort_values(["_lang", "_method", "method", "n_seeds", name]).drop(columns=["_lang", "_method"])


def _column_values(evals: pd.DataFrame, column: ReportColumn) -> pd.Series:
    rows = evals if column.direction is None else evals[evals["direction"] == column.direction]
    rows = rows.drop_duplicates("run_dir").set_index("run_dir")
    return rows[column.source] if column.source in rows else pd.Series(dtype=float, index=rows.index)


def _format_cell(value: Any, digits: int) -> str:
    return format_number(value, digits)


def measured_table(evals: pd.DataFrame) -> pd.DataFrame:
    """One row per run (lang, method, n_seeds, trainable) with the REPORT_COLUMNS as numbers."""
    runs = evals.drop_duplicates("run_dir").rename(columns={"run_name": "run"})[
        ["run_dir", "method_family", *ROW_KEYS]
    ]
    runs = sorted_runs(runs).reset_index(drop=True)
    for column in REPORT_COLUMNS:
        runs[column.header] = runs["run_dir"].map(_column_values(evals, column))
    return runs.drop(columns=["run_dir", "method_family"])


def measured_table_markdown(evals: pd.DataFrame) -> str:
    table = measured_table(evals)
    rows = []
    for _, run in table.iterrows():
        keys = [
            str(run["lang"]),
            str(run["method"]),
            str(int(run["n_seeds"])),
            markdown_cell(run["trainable"]),
            markdown_cell(run["run"]),
        ]
        rows.append(keys + [_format_cell(run[column.header], column.digits) for column in REPORT_COLUMNS])
    return markdown_table([*ROW_KEYS, *(column.header for column in REPORT_COLUMNS)], rows)


# Intervals: every run group against SFT at the same budget


INTERVAL_HEADERS = {
    "target": "in target language",
    "other_language": "other language",
    "no_answer": "no answer",
    "line_pass": "line pass (benchmark rule)",
    "line_pass_all": "line pass (all prompts)",
    "chrf": "chrF++",
}


INTERVAL_DIGITS = {"chrf": 1}  # shares get 3 decimals


INTERVAL_NOTE = (
    "Each run group (the training seeds of one method, budget and trainable setting) against SFT at the "
    "same budget, and CLO also against SFT+DPO (`vs` names the group compared with), on the held-out prompts "
    "both answered (paired by prompt id from answers.jsonl; `n prompts` gives their number; `direction` tgt: "
    "target-language prompts, en: English prompts). The outcome shares are taken over all prompts: in the "
    "target language, in another language, no answer (empty, fewer than five words once an echoed prefix of "
    "the prompt is removed, or a loop); they sum to 1. A value is a share, or for chrF++ the corpus chrF++ "
    "(0-100) against the references: with one training seed, `value [95% bootstrap interval over prompts]`; "
    "with several, `mean ± standard deviation across seeds [95% Student-t interval across seeds]`. `Δ` is the "
    "per-prompt paired difference of the seed means; `interval` says what its 95% interval covers: "
    "`prompts` (one training seed a side: a paired bootstrap over prompts, which does not cover retraining) "
    "or `seeds and prompts` (a two-level bootstrap: training seeds, then prompts; the runs of one training "
    "seed stay paired). {resamples} resamples, {chrf_resamples} for chrF++, which rescores each run's corpus "
    "on every one. `answered by both` is fidelity among answered prompts, shown only as a comparison: on the "
    "`n` prompts every run of both groups answered, the share in the prompt's language (this group vs the "
    "other) and Δ. Line pass is the language-confusion benchmark's line-level test (Marchisio et al., 2024: "
    "every line of at least five words in the prompt's language): by the benchmark's rule, which skips "
    "answers without such a line, and over all prompts, where such an answer fails. Language ID "
    "({language_ids}) sees every language the detector knows and is recomputed from answers.jsonl; a run "
    "without answers.jsonl shows its metrics.json value without an interval."
)


def _signed(value: Any, digits: int = 3) -> str:
    return MISSING if is_missing(value) else f"{float(value):+.{digits}f}"


def interval_value_cell(row: Any, metric: str) -> str:
    value = row[metric]
    if is_missing(value):
        return MISSING
    digits = INTERVAL_DIGITS.get(metric, 3)
    cell = f"{float(value):.{digits}f}"
    if not is_missing(row[f"{metric}_sd"]):
        cell += f" ± {float(row[f'{metric}_sd']):.{digits}f}"
    if not is_missing(row[f"{metric}_low"]):
        cell += f" [{float(row[f'{metric}_low']):.{digits}f}, {float(row[f'{metric}_high']):.{digits}f}]"
    return cell


def interval_difference_cell(row: Any, metric: str) -> str:
    if is_missing(row["vs"]):
        return "(reference)" if row["method_family"] == "sft" else MISSING
    difference = row[f"{metric}_diff"]
    if is_missing(difference):
        return MISSING
    low, high = (_signed(row[f"{metric}_diff_{end}"], INTERVAL_DIGITS.get(metric, 3)) for end in ("low", "high"))
    return f"{_signed(difference, INTERVAL_DIGITS.get(metric, 3))} [{low}, {high}]"


def _answered_cell(row: Any) -> str:
    if is_missing(row.get("answered_n")) or not row.get("answered_n"):
        return MISSING
    low, high = (_signed(row[f"answered_target_diff_{end}"]) for end in ("low", "high"))
    return (
        f"n={int(row['answered_n'])}: {float(row['answered_target']):.3f} vs {float(row['answered_target_ref']):.3f}, "
        f"Δ {_signed(row['answered_target_diff'])} [{low}, {high}]"
    )


def compared_groups(evals: pd.DataFrame, n_resamples: int = 10_000, sft_budget_factor: int = 1) -> pd.DataFrame:
    """Every run group against SFT, and CLO's groups also against SFT+DPO (rows with a vs)."""
    vs_sft = group_intervals(evals, n_resamples=n_resamples, sft_budget_factor=sft_budget_factor)
    vs_dpo = group_intervals(evals, n_resamples=n_resamples, sft_budget_factor=sft_budget_factor, reference="sft_dpo")
    if vs_dpo.empty:
        return vs_sft
    return pd.concat([vs_sft, vs_dpo[vs_dpo["vs"].notna()]], ignore_index=True)


def intervals_table_markdown(evals: pd.DataFrame, n_resamples: int = 10_000) -> str:
    groups = compared_groups(evals, n_resamples=n_resamples)
    if groups.empty:
        return "No run has an eval block: no intervals."
    headers = [*GROUP_HEADERS, "interval"]
    for metric in INTERVAL_METRICS:
        headers += [INTERVAL_HEADERS[metric], f"Δ {INTERVAL_HEADERS[metric]}"]
    headers.append("answered by both: fidelity, Δ")
    rows = []
    for _, row in _ordered_groups(groups).iterrows():
        cells = group_cells(row) + [markdown_cell(row["interval"])]
        for metric in INTERVAL_METRICS:
            cells += [interval_value_cell(row, metric), interval_difference_cell(row, metric)]
        cells.append(_answered_cell(row))
        rows.append(cells)
    return markdown_table(headers, rows)


GROUP_HEADERS = ("lang", "method", "n_seeds", "trainable", "direction", "vs", "n prompts", "training seeds")


def _ordered_groups(groups: pd.DataFrame) -> pd.DataFrame:
    """Run groups in report order: by language, method and budget, target-language prompts first."""
    groups = sorted_runs(groups.assign(run_name=groups["run_group"]))
    groups = groups.assign(
        _direction=groups["direction"].map({"tgt": 0, "en": 1}), _vs=groups["vs"].fillna("").str.startswith("sft_dpo")
    )
    return groups.sort_values(["_direction", "_vs"], kind="stable")


def group_cells(row: Any) -> list[str]:
    """The cells under GROUP_HEADERS for one run group and direction."""
    seeds = ", ".join(str(int(s)) for s in row["train_seeds"]) if len(row["train_seeds"]) == row["n_runs"] else ""
    return [
        str(row["lang"]),
        str(row["method"]),
        str(int(row["n_seeds"])),
        markdown_cell(row["trainable"]),
        str(row["direction"]),
        markdown_cell(row["vs"]),
        format_number(row["n_prompts"], 0),
        f"{row['n_runs']}" + (f" ({seeds})" if seeds else ""),
    ]


def intervals_section(evals: pd.DataFrame, n_resamples: int = 10_000) -> str:
    labels = unique_in_order(
        label for run_labels in evals.drop_duplicates("run_dir")["labels"] for label in run_labels
    )
    return (
        "## Differences against SFT and SFT+DPO (95% intervals)\n\n"
        + INTERVAL_NOTE.format(
            resamples=f"{n_resamples:,}",
            chrf_resamples=f"{min(n_resamples, CHRF_RESAMPLES):,}",
            language_ids=language_ids_used(evals),
        )
        + "\n\n"
        + intervals_table_markdown(evals, n_resamples)
        + "\n\n"
        + f"Measured with: {' · '.join(labels) or '(no run.labels recorded)'}."
    )


def language_ids_used(evals: pd.DataFrame) -> str:
    """The detectors the runs were scored with, as the report names them."""
    used = unique_in_order(str(v) for v in evals.get("language_id", pd.Series(dtype=object)).dropna())
    return ", ".join(used) or "lingua"


HALF_BUDGET_NOTE = (
    "The paper's data-efficiency claim: a method trained on N/2 seeds against SFT trained on N, and CLO on N/2 "
    "also against SFT+DPO on N, on the held-out prompts both answered. Δ and `interval` as above. A Δ in "
    "target language or Δ chrF++ whose interval lies above zero (or a Δ other language or Δ no answer below "
    "zero) means the method on half the seeds does better than the group it is compared with on all of them; "
    "an interval across zero cannot tell them apart."
)


def half_budget_section(evals: pd.DataFrame, n_resamples: int = 10_000) -> str | None:
    """Every run group against SFT (CLO also against SFT+DPO) at twice its budget; None when no
    recipe has such a pair."""
    groups = compared_groups(evals, n_resamples=n_resamples, sft_budget_factor=2)
    if groups.empty or groups["vs"].isna().all():
        return None
    headers = [
        *GROUP_HEADERS,
        "interval",
        *(f"Δ {INTERVAL_HEADERS[metric]} vs 2N" for metric in INTERVAL_METRICS),
        "answered by both: fidelity, Δ",
    ]
    rows = [
        group_cells(row)
        + [markdown_cell(row["interval"])]
        + [interval_difference_cell(row, metric) for metric in INTERVAL_METRICS]
        + [_answered_cell(row)]
        for _, row in _ordered_groups(groups[groups["vs"].notna()]).iterrows()
    ]
    return (
        "## Half the seeds against SFT and SFT+DPO (95% intervals)\n\n"
        + HALF_BUDGET_NOTE
        + "\n\n"
        + markdown_table(headers, rows)
    )
