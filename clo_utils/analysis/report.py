"""REPORT.md for a runs root: the measured table, the labels, the wall time and example answers.

Reads the runs' metrics.json (through the tables of clo_utils.analysis.tables), `timings.json` at a recipe
root when the batch runner wrote one, and the answers.jsonl of the runs shown as examples, all
through clo_utils.common.runfiles. Every number is
printed as measured, next to the labels that say what produced it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from clo_utils.analysis.detector_report import detector_section
from clo_utils.analysis.markdown import (
    MISSING,
    blockquote,
    format_number,
    is_missing,
    markdown_cell,
    markdown_table,
    unique_in_order,
)
from clo_utils.analysis.report_tables import (
    half_budget_section,
    intervals_section,
    measured_table_markdown,
    sorted_runs,
)
from clo_utils.analysis.tables import MetricsTables, language_label, load_tables, main_run_dirs, ordered_languages
from clo_utils.common import runfiles
from clo_utils.common.methods import method_label

EXAMPLES_PER_LANGUAGE = 3


ANSWER_CHARS = 400  # longer answers are cut: the table must stay readable on GitHub


def labels_section(evals: pd.DataFrame) -> str:
    runs = evals.drop_duplicates("run_dir")
    labels = unique_in_order(label for run_labels in runs["labels"] for label in run_labels)
    lines = ["## Labels", "", "Every number in this report was measured with:", ""]
    lines += [f"- {label}" for label in labels] or ["- (no run.labels recorded)"]
    models = unique_in_order(
        f"`{row.model_id}`" + (f" ({row.model_label})" if not is_missing(row.model_label) else "")
        for row in runs.itertuples()
    )
    translators = unique_in_order(
        f"`{row.translator}` ({row.lang})" for row in runs.itertuples() if not is_missing(row.translator)
    )
    lines += ["", f"Models: {', '.join(models) or MISSING}.", f"Translators: {', '.join(translators) or MISSING}."]
    return "\n".join(lines)


def _duration(seconds: Any) -> str:
    return MISSING if is_missing(seconds) else f"{float(seconds):.1f} s ({float(seconds) / 60:.1f} min)"


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
    judged = sorted_runs(judged)
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
    runs = sorted_runs(runs)
    rows = [
        [row["lang"], row["method"], str(row["n_seeds"])] + [format_number(row[task], 3) for task in tasks]
        for _, row in runs.iterrows()
    ]
    headers = ["lang", "method", "n_seeds", *(task.removeprefix("knowledge_") for task in tasks)]
    return "## Knowledge (accuracy)\n\n" + markdown_table(headers, rows)


# Other languages, by the language found

OTHER_LANGUAGES_SHOWN = 6


def _found(block: dict | None) -> str:
    counts = (block or {}).get("other_languages")
    if not isinstance(counts, dict):
        return MISSING
    if not counts:
        return "none"
    shown = list(counts.items())[:OTHER_LANGUAGES_SHOWN]
    rest = sum(counts.values()) - sum(count for _, count in shown)
    return " · ".join(f"{code} {count}" for code, count in shown) + (f" · others {rest}" if rest else "")


def other_languages_section(evals: pd.DataFrame) -> str | None:
    """Per run and direction, how many answers came in each other language (from metrics.json)."""
    runs = sorted_runs(evals.drop_duplicates("run_dir"))
    rows = []
    for row in runs.itertuples():
        scores = (
            (runfiles.read_metrics(row.run_dir).get("eval") or {})
            if Path(row.run_dir, "metrics.json").is_file()
            else {}
        )
        cells = [_found(scores.get(direction)) for direction in ("tgt", "en")]
        if any(cell != MISSING for cell in cells):
            rows.append([row.lang, row.method, str(row.n_seeds), markdown_cell(row.run_name), *cells])
    if not rows:
        return None
    note = (
        "Answers in another language than the prompt's, counted by the language the detector named (ISO 639-1 "
        "codes; `und`: none named), most frequent first."
    )
    headers = ["lang", "method", "n_seeds", "run", "target prompts", "English prompts"]
    return "## Other languages found (answers)\n\n" + note + "\n\n" + markdown_table(headers, rows)


# Example answers


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


# The whole report


MEASURED_NOTE = (
    "The headline: every prompt has one outcome, and the shares are taken over all prompts, so for each "
    "direction `in target` (the prompt's language), `other` and `no answer` sum to 1. `other` is split by "
    "the language the detector found: English, a neighbour of the target (for Catalan: Spanish, Occitan, "
    "French, Portuguese, Italian, Galician; on English prompts: the run's target language or its "
    "neighbours) and any other language. `no answer`: empty, fewer than `min_words` words once an echoed "
    "prefix of the prompt (three or more of its opening words) is removed, or a loop (fewer than "
    "`min_words` distinct words, or half the words or more one phrase of up to 10 words repeated 3 times "
    "or more to the end); the language is judged on the text after the echoed prefix. Line pass is "
    "the language-confusion benchmark's line-level test, by its rule (answers without a line of five or "
    "more words are skipped; `lines judged` counts the others) and over all prompts. echo and repetition "
    "are diagnostics on target-language prompts; chrF++ is 0-100 against the translated reference; NLL is "
    "the token-mean NLL of the reference answers (nats/token). `base` is the untouched model. Every share is "
    "bounded by the detector's accuracy (the table below)."
)


def recipe_report(evals: pd.DataFrame) -> str:
    recipe = str(evals["recipe"].iloc[0])
    recipe_root = Path(str(evals["recipe_root"].iloc[0]))
    sections = [
        f"# CLO report: recipe `{recipe}`",
        "Measured by clo_utils.analysis.report from each run's metrics.json (docs/run-layout.md). "
        "These are this kit's numbers, not the paper's.",
        labels_section(evals),
        wall_time_section(recipe_root),
        "## Measured results\n\n" + MEASURED_NOTE + "\n\n" + measured_table_markdown(evals),
        other_languages_section(evals),
        detector_section(evals),
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
