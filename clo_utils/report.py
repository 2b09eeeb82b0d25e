"""REPORT.md for a runs root: the measured table, the labels, the wall time and example answers.

Reads the runs' metrics.json (through the tables of clo_utils.tables), `timings.json` at a recipe
root when the batch runner wrote one, and the answers.jsonl of the runs shown as examples, all
through clo_utils.runfiles. Every number is
printed as measured, next to the labels that say what produced it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from clo_utils import runfiles
from clo_utils.intervals import INTERVAL_METRICS, group_intervals
from clo_utils.methods import METHOD_ORDER, method_label
from clo_utils.metrics import CHRF_RESAMPLES
from clo_utils.tables import MetricsTables, language_label, load_tables, main_run_dirs, ordered_languages

EXAMPLES_PER_LANGUAGE = 3
ANSWER_CHARS = 400  # longer answers are cut: the table must stay readable on GitHub
MISSING = "—"


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


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_number(value: Any, digits: int) -> str:
    return MISSING if _is_missing(value) else f"{float(value):.{digits}f}"


def markdown_cell(text: Any, limit: int | None = None) -> str:
    """One table cell: pipes escaped, newlines as <br>, optionally cut to `limit` characters."""
    text = MISSING if _is_missing(text) else str(text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def blockquote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines() or [""])


# --------------------------------------------------------------------------------------------
# The measured table
# --------------------------------------------------------------------------------------------


def _method_rank(family: str) -> int:
    return METHOD_ORDER.index(family) if family in METHOD_ORDER else len(METHOD_ORDER)


def _sorted_runs(runs: pd.DataFrame) -> pd.DataFrame:
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
            [(h, False) if not _is_missing(h) else (v, not _is_missing(v)) for h, v in zip(headline, values)],
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
    runs = _sorted_runs(runs).reset_index(drop=True)
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


# --------------------------------------------------------------------------------------------
# Intervals: every run group against SFT at the same budget
# --------------------------------------------------------------------------------------------

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
    return MISSING if _is_missing(value) else f"{float(value):+.{digits}f}"


def interval_value_cell(row: Any, metric: str) -> str:
    value = row[metric]
    if _is_missing(value):
        return MISSING
    digits = INTERVAL_DIGITS.get(metric, 3)
    cell = f"{float(value):.{digits}f}"
    if not _is_missing(row[f"{metric}_sd"]):
        cell += f" ± {float(row[f'{metric}_sd']):.{digits}f}"
    if not _is_missing(row[f"{metric}_low"]):
        cell += f" [{float(row[f'{metric}_low']):.{digits}f}, {float(row[f'{metric}_high']):.{digits}f}]"
    elif _is_missing(row["n_prompts"]) and metric == "fidelity_clean":
        cell += OLD_FIDELITY if row.get("old_fidelity") else ""
    return cell


def interval_difference_cell(row: Any, metric: str) -> str:
    if _is_missing(row["vs"]):
        return "(reference)" if row["method_family"] == "sft" else MISSING
    difference = row[f"{metric}_diff"]
    if _is_missing(difference):
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
    groups = _sorted_runs(groups.assign(run_name=groups["run_group"]))
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
    labels = _unique(label for run_labels in evals.drop_duplicates("run_dir")["labels"] for label in run_labels)
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


# --------------------------------------------------------------------------------------------
# Labels, wall time, judge and knowledge tables
# --------------------------------------------------------------------------------------------


def _unique(values: Any) -> list[Any]:
    seen: list[Any] = []
    for value in values:
        if not _is_missing(value) and value not in seen:
            seen.append(value)
    return seen


def labels_section(evals: pd.DataFrame) -> str:
    runs = evals.drop_duplicates("run_dir")
    labels = _unique(label for run_labels in runs["labels"] for label in run_labels)
    lines = ["## Labels", "", "Every number in this report was measured with:", ""]
    lines += [f"- {label}" for label in labels] or ["- (no run.labels recorded)"]
    models = _unique(
        f"`{row.model_id}`" + (f" ({row.model_label})" if not _is_missing(row.model_label) else "")
        for row in runs.itertuples()
    )
    translators = _unique(
        f"`{row.translator}` ({row.lang})" for row in runs.itertuples() if not _is_missing(row.translator)
    )
    lines += ["", f"Models: {', '.join(models) or MISSING}.", f"Translators: {', '.join(translators) or MISSING}."]
    return "\n".join(lines)


def _duration(seconds: Any) -> str:
    return MISSING if _is_missing(seconds) else f"{float(seconds):.1f} s ({float(seconds) / 60:.1f} min)"


def wall_time_section(recipe_root: Path) -> str:
    timings = runfiles.read_timings(recipe_root)
    if timings is None:
        return f"## Wall time\n\nNo timings.json at {recipe_root}: wall time not recorded."
    rows = [
        [
            markdown_cell(" ".join(str(stage[k]) for k in ("lang", "stage") if stage.get(k) is not None)),
            _duration(stage.get("seconds")),
        ]
        for stage in timings.get("stages", [])
    ]
    if "wall_seconds" in timings:
        rows.append(["sum of the stage times", _duration(timings.get("stage_seconds"))])
        runs = len(timings.get("invocations", [])) or 1
        rows.append(
            [
                f"**wall time** ({runs} invocation{'s' if runs > 1 else ''} of the runner; stages side by side)",
                f"**{_duration(timings['wall_seconds'])}**",
            ]
        )
    else:  # a timings.json without wall_seconds: its total is the sum of the stage times
        rows.append(["**total**", f"**{_duration(timings.get('total_seconds'))}**"])
    return "## Wall time\n\n" + markdown_table(["stage", "wall time"], rows)


def judge_section(evals: pd.DataFrame) -> str | None:
    judged = evals[evals["judge_win_rate"].notna()] if "judge_win_rate" in evals else evals.iloc[0:0]
    if judged.empty:
        return None
    judged = _sorted_runs(judged)
    rows = [
        [
            row.lang,
            row.method,
            str(row.n_seeds),
            row.direction,
            markdown_cell(row.judge_vs),
            format_number(row.judge_win_rate, 3),
            format_number(getattr(row, "judge_n", None), 0),
            format_number(getattr(row, "judge_n_malformed", None), 0),
        ]
        for row in judged.itertuples()
    ]
    headers = ["lang", "method", "n_seeds", "direction", "vs", "win rate (share)", "n", "malformed"]
    return "## Judge win rates\n\n" + markdown_table(headers, rows)


def knowledge_section(evals: pd.DataFrame) -> str | None:
    tasks = [column for column in evals.columns if column.startswith("knowledge_")]
    runs = evals.drop_duplicates("run_dir")
    runs = runs[runs[tasks].notna().any(axis=1)] if tasks else runs.iloc[0:0]
    if runs.empty:
        return None
    runs = _sorted_runs(runs)
    rows = [
        [row["lang"], row["method"], str(row["n_seeds"])] + [format_number(row[task], 3) for task in tasks]
        for _, row in runs.iterrows()
    ]
    headers = ["lang", "method", "n_seeds", *(task.removeprefix("knowledge_") for task in tasks)]
    return "## Knowledge (accuracy)\n\n" + markdown_table(headers, rows)


# --------------------------------------------------------------------------------------------
# Example answers
# --------------------------------------------------------------------------------------------


def example_runs(evals: pd.DataFrame, lang: str) -> list[pd.Series]:
    """The untouched model, and the main SFT, SFT+DPO and CLO runs at their largest budget, for `lang`."""
    runs = evals[(evals["lang"] == lang)].drop_duplicates("run_dir")
    runs = runs[runs["run_dir"].isin(main_run_dirs(runs))]
    chosen = []
    for family in ("base", "sft", "sft_dpo", "clo"):
        candidates = runs[runs["method_family"] == family].sort_values("n_seeds")
        if len(candidates):
            chosen.append(candidates.iloc[-1])
    return chosen


def _answers_by_id(run_dir: Path, direction: str) -> dict[str, dict[str, Any]] | None:
    if not (run_dir / "answers.jsonl").is_file():
        return None
    return {str(a["id"]): a for a in runfiles.read_answers(run_dir) if a["direction"] == direction}


def examples_for_language(
    evals: pd.DataFrame, lang: str, direction: str = "tgt", count: int = EXAMPLES_PER_LANGUAGE
) -> str:
    runs = example_runs(evals, lang)
    answered = [(run, _answers_by_id(Path(run["run_dir"]), direction)) for run in runs]
    answered = [(run, answers) for run, answers in answered if answers]
    heading = f"### {language_label(lang)}"
    if len(answered) < 2:
        return f"{heading}\n\nFewer than two of base / SFT / SFT+DPO / CLO have an answers.jsonl: no side-by-side examples."
    # Prompt ids in the first run's order (files need not share an order), kept when every run answered them.
    shared = [i for i in answered[0][1] if all(i in answers for _, answers in answered)][:count]
    if not shared:
        return f"{heading}\n\nThe runs' answers.jsonl files share no prompt id: no side-by-side examples."
    headers = [f"{method_label(run['method_family'])} ({run['run_name']})" for run, _ in answered] + ["reference"]
    blocks = [heading]
    for number, prompt_id in enumerate(shared, start=1):
        first = answered[0][1][prompt_id]
        cells = [markdown_cell(answers[prompt_id].get("answer"), ANSWER_CHARS) for _, answers in answered]
        cells.append(markdown_cell(first.get("reference"), ANSWER_CHARS))
        blocks.append(
            f"**Example {number}** (id `{prompt_id}`, {direction} prompt)\n\n"
            f"{blockquote(str(first.get('prompt', '')))}\n\n{markdown_table(headers, [cells])}"
        )
    return "\n\n".join(blocks)


def examples_section(evals: pd.DataFrame) -> str:
    languages = ordered_languages(evals["lang"])
    intro = (
        f"## Example answers\n\nUp to {EXAMPLES_PER_LANGUAGE} target-language prompts per language, "
        f"answered by each model (answers cut at {ANSWER_CHARS} characters)."
    )
    return "\n\n".join([intro, *(examples_for_language(evals, lang) for lang in languages)])


# --------------------------------------------------------------------------------------------
# The whole report
# --------------------------------------------------------------------------------------------

MEASURED_NOTE = (
    "Shares are fractions of answers in [0, 1]; fidelity is the headline fidelity: the share of "
    "answers in the prompt's language among those of at least `min_words` words that do not echo "
    f"the prompt ({OLD_FIDELITY}: a metrics file that predates it, counted over every answer of at "
    "least `min_words` words); line pass is the language-confusion line-level pass rate; echo, "
    "repetition, too_short and wrong language are on target-language prompts; "
    "chrF++ is 0-100 against the translated reference; NLL is the token-mean NLL of the reference "
    "answers (nats/token). `base` is the untouched model."
)


def recipe_report(evals: pd.DataFrame) -> str:
    recipe = str(evals["recipe"].iloc[0])
    recipe_root = Path(str(evals["recipe_root"].iloc[0]))
    sections = [
        f"# CLO report: recipe `{recipe}`",
        "Measured by clo_utils.report from each run's metrics.json (docs/run-layout.md). "
        "These are this kit's numbers, not the paper's.",
        labels_section(evals),
        wall_time_section(recipe_root),
        "## Measured results\n\n" + MEASURED_NOTE + "\n\n" + measured_table_markdown(evals),
        intervals_section(evals),
        half_budget_section(evals),
        judge_section(evals),
        knowledge_section(evals),
        examples_section(evals),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def render_report(root: str | Path, tables: MetricsTables | None = None) -> str:
    """REPORT.md text for every recipe under `root` (one section per recipe)."""
    evals = (tables or load_tables(root)).evals
    recipes = sorted(evals["recipe"].unique())
    return "\n".join(recipe_report(evals[evals["recipe"] == recipe]) for recipe in recipes)


def write_report(root: str | Path, out_path: str | Path) -> str:
    """Write REPORT.md for the runs under `root` to `out_path`; returns the markdown text."""
    text = render_report(root)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text, encoding="utf-8")
    return text
