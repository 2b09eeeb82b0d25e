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


# "fidelity" columns show the headline fidelity (fidelity_clean: answers neither too short nor echoed);
# metrics files written before it existed show their fidelity over every countable answer, marked OLD_FIDELITY.
REPORT_COLUMNS: tuple[ReportColumn, ...] = (
    ReportColumn("target fidelity", "fidelity", "tgt", 3),
    ReportColumn("English fidelity", "fidelity", "en", 3),
    ReportColumn("target line pass", "line_pass", "tgt", 3),
    ReportColumn("wrong language (target)", "wrong_language", "tgt", 3),
    ReportColumn("target chrF++", "chrf", "tgt", 1),
    ReportColumn("English chrF++", "chrf", "en", 1),
    ReportColumn("target NLL (nats/token)", "nll", "tgt", 3),
    ReportColumn("echo (target)", "echo", "tgt", 3),
    ReportColumn("repetition (target)", "repetition", "tgt", 3),
    ReportColumn("too_short (target)", "too_short", "tgt", 3),
    ReportColumn("train seconds", "train_seconds", None, 1),
)


ROW_KEYS = ("lang", "method", "n_seeds", "trainable", "run")


OLD_FIDELITY = "†"


HEADLINE = "fidelity_clean"


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
    values = rows[column.source] if column.source in rows else pd.Series(dtype=float, index=rows.index)
    if column.source == "fidelity":  # the headline where the file has it; the old count, marked, where not
        headline = rows[HEADLINE] if HEADLINE in rows else pd.Series(None, index=rows.index, dtype=object)
        return pd.Series(
            [(h, False) if not is_missing(h) else (v, not is_missing(v)) for h, v in zip(headline, values)],
            index=rows.index,
            dtype=object,
        )
    return values


def _format_cell(value: Any, digits: int) -> str:
    if isinstance(value, tuple):  # (fidelity, counted over every countable answer)
        number, old = value
        return format_number(number, digits) + (OLD_FIDELITY if old else "")
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
    "fidelity_clean": "fidelity",
    "wrong_language": "wrong language",
    "line_pass": "line pass",
    "chrf": "chrF++",
}


INTERVAL_DIGITS = {"chrf": 1}  # shares get 3 decimals


INTERVAL_NOTE = (
    "Each run group (the training seeds of one method, budget and trainable setting) against SFT at the "
    "same budget, on the held-out prompts both answered (paired by prompt id from answers.jsonl; `n prompts` "
    "gives their number; `direction` tgt: target-language prompts, en: English prompts). A value is a share of "
    "answers, or for chrF++ the corpus chrF++ (0-100) against the references: with one training seed, `value "
    "[95% bootstrap interval over prompts]`; with several, `mean ± standard deviation across seeds [95% Student-t "
    "interval across seeds]`. `Δ vs SFT` is the difference of the seed means with a 95% paired bootstrap "
    "interval over prompts, pooled over seeds (it does not cover the choice of training seeds: the spread "
    "across seeds does; {resamples} resamples, {chrf_resamples} for chrF++, which rescores each run's corpus on "
    "every one). fidelity is the headline fidelity (answers neither too short nor echoing the prompt); "
    "wrong language is the share of countable answers identified as the other language; line pass is the "
    "language-confusion benchmark's line-level pass rate (Marchisio et al., 2024: every line of at least five "
    "words in the prompt's language), computed with the kit's language ID (lingua over {{English, target}}) in "
    "place of the benchmark's fastText model, which is not available here. Language ID is recomputed from "
    "answers.jsonl; a run without answers.jsonl shows its metrics.json value without an interval "
    "(fidelity marked {old_fidelity} when the file predates the headline count)."
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
    elif is_missing(row["n_prompts"]) and metric == "fidelity_clean":
        cell += OLD_FIDELITY if row.get("old_fidelity") else ""
    return cell


def interval_difference_cell(row: Any, metric: str) -> str:
    if is_missing(row["vs"]):
        return "(reference)" if row["method_family"] == "sft" else MISSING
    difference = row[f"{metric}_diff"]
    if is_missing(difference):
        return MISSING
    low, high = (_signed(row[f"{metric}_diff_{end}"], INTERVAL_DIGITS.get(metric, 3)) for end in ("low", "high"))
    return f"{_signed(difference, INTERVAL_DIGITS.get(metric, 3))} [{low}, {high}]"


def intervals_table_markdown(evals: pd.DataFrame, n_resamples: int = 10_000) -> str:
    groups = group_intervals(evals, n_resamples=n_resamples)
    if groups.empty:
        return "No run has an eval block: no intervals."
    old = evals.drop_duplicates("run_dir")
    old = set(old[old[HEADLINE].isna()]["run_dir"]) if HEADLINE in old else set(old["run_dir"])
    groups["old_fidelity"] = [any(d in old for d in dirs) for dirs in groups["run_dirs"]]
    headers = list(GROUP_HEADERS)
    for metric in INTERVAL_METRICS:
        headers += [INTERVAL_HEADERS[metric], f"Δ {INTERVAL_HEADERS[metric]} vs SFT"]
    rows = []
    for _, row in _ordered_groups(groups).iterrows():
        cells = group_cells(row)
        for metric in INTERVAL_METRICS:
            cells += [interval_value_cell(row, metric), interval_difference_cell(row, metric)]
        rows.append(cells)
    return markdown_table(headers, rows)


GROUP_HEADERS = ("lang", "method", "n_seeds", "trainable", "direction", "vs", "n prompts", "training seeds")


def _ordered_groups(groups: pd.DataFrame) -> pd.DataFrame:
    """Run groups in report order: by language, method and budget, target-language prompts first."""
    groups = sorted_runs(groups.assign(run_name=groups["run_group"]))
    groups = groups.assign(_direction=groups["direction"].map({"tgt": 0, "en": 1}))
    return groups.sort_values(["_direction"], kind="stable")


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
        "## Differences against SFT (95% intervals)\n\n"
        + INTERVAL_NOTE.format(
            resamples=f"{n_resamples:,}",
            chrf_resamples=f"{min(n_resamples, CHRF_RESAMPLES):,}",
            old_fidelity=OLD_FIDELITY,
        )
        + "\n\n"
        + intervals_table_markdown(evals, n_resamples)
        + "\n\n"
        + f"Measured with: {' · '.join(labels) or '(no run.labels recorded)'}."
    )


HALF_BUDGET_NOTE = (
    "The paper's data-efficiency claim: a method trained on N/2 seeds against SFT trained on N, on the "
    "held-out prompts both answered. Δ as above: the difference of the seed means with a 95% paired bootstrap "
    "interval over prompts, pooled over seeds. A Δ fidelity or Δ chrF++ whose interval lies above zero (or a Δ "
    "wrong language below zero) means the method on half the seeds does better than SFT on all of them; an "
    "interval across zero cannot tell them apart."
)


def half_budget_section(evals: pd.DataFrame, n_resamples: int = 10_000) -> str | None:
    """Every run group against SFT at twice its budget; None when no recipe has such a pair."""
    groups = group_intervals(evals, n_resamples=n_resamples, sft_budget_factor=2)
    if groups.empty or groups["vs"].isna().all():
        return None
    headers = [*GROUP_HEADERS, *(f"Δ {INTERVAL_HEADERS[metric]} vs SFT at 2N" for metric in INTERVAL_METRICS)]
    rows = [
        group_cells(row) + [interval_difference_cell(row, metric) for metric in INTERVAL_METRICS]
        for _, row in _ordered_groups(groups[groups["vs"].notna()]).iterrows()
    ]
    return (
        "## Half the seeds against SFT (95% intervals)\n\n" + HALF_BUDGET_NOTE + "\n\n" + markdown_table(headers, rows)
    )
