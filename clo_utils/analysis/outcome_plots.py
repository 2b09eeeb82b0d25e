"""The outcome-shares figure: for each run and prompt direction, one bar of length 1 split into the
outcomes of all its prompts (in the prompt's language; another language, by the language found:
English, the target's neighbours, any other; no answer).

`outcome_bars` draws any table with those share columns (04_evaluate's metrics table, one row per run
and direction); `plot_outcome_shares` draws the main runs of a runs root (05_analysis).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from clo_utils.analysis.plot_style import (
    DIRECTION_LABELS,
    MissingFigureData,
    add_caption,
    add_legend,
    add_title,
    caption_for,
    new_figure,
)
from clo_utils.analysis.tables import language_label, main_variants, ordered_languages, ordered_methods
from clo_utils.evaluation.metrics import DIRECTIONS

# (column, legend label, colour): the segments of every bar, left to right; they sum to 1.
SEGMENTS = (
    ("target", "in the prompt's language", "#2b8a3e"),
    ("other_en", "other: English", "#1c7ed6"),
    ("other_near", "other: neighbour (es for ca; on English prompts the target or its neighbours)", "#f08c00"),
    ("other_rest", "other: any other language", "#c2255c"),
    ("no_answer", "no answer (empty, echo only, too short, loop)", "#adb5bd"),
)


def outcome_bars(table: pd.DataFrame, label: str, title: str, caption: str = "") -> Figure:
    """One panel per direction in `table` ("tgt" / "en"), one horizontal stacked bar per row, labelled
    by the `label` column, in the table's order."""
    columns = [column for column, _, _ in SEGMENTS]
    missing = [column for column in columns if column not in table]
    if missing or table[columns].isna().all(axis=None):
        raise MissingFigureData(
            f"no outcome shares ({', '.join(missing) or 'all empty'}): score the answers with the outcome rule "
            "(04_evaluate, or clo_utils.analysis.tables.rescore_runs)"
        )
    directions = [d for d in DIRECTIONS if (table["direction"] == d).any()]
    n_bars = max(int((table["direction"] == d).sum()) for d in directions)
    figure, axes = new_figure(1, len(directions), panel_size=(4.2, 0.9 + 0.32 * n_bars))
    for col, direction in enumerate(directions):
        ax = axes[0, col]
        rows = table[table["direction"] == direction].reset_index(drop=True)
        left = pd.Series(0.0, index=rows.index)
        for column, _, colour in SEGMENTS:
            values = rows[column].astype(float).fillna(0.0)
            ax.barh(rows[label].astype(str), values, left=left, color=colour, edgecolor="white", linewidth=0.5)
            left = left + values
        ax.set_xlim(0, 1)
        ax.invert_yaxis()  # the table's first row on top
        ax.set_xlabel("share of all prompts")
        ax.set_title(DIRECTION_LABELS[direction], fontsize=9)
    add_legend(figure, [Patch(color=colour, label=text) for _, text, colour in SEGMENTS])
    add_title(figure, title)
    if caption:
        add_caption(figure, caption)
    return figure


def _bar_labels(frame: pd.DataFrame) -> list[str]:
    return [f"{language_label(lang)} · {run}" for lang, run in zip(frame["lang"], frame["run_group"])]


def plot_outcome_shares(evals: pd.DataFrame, families: Sequence[str] | None = None) -> Figure:
    """The outcome shares of every main run group (the mean over its training seeds), per language,
    method and budget."""
    main = main_variants(evals)
    if families is not None:
        main = main[main["method_family"].isin(families)]
    if main.empty:
        raise MissingFigureData("no runs with an eval block")
    columns = [column for column, _, _ in SEGMENTS if column in main]
    means = main.groupby(["lang", "method_family", "n_seeds", "run_group", "direction"], as_index=False)[
        columns
    ].mean()
    language_rank = {lang: i for i, lang in enumerate(ordered_languages(means["lang"]))}
    method_rank = {family: i for i, family in enumerate(ordered_methods(means["method_family"]))}
    means = means.assign(_lang=means["lang"].map(language_rank), _method=means["method_family"].map(method_rank))
    means = means.sort_values(["_lang", "_method", "n_seeds"]).assign(bar=_bar_labels)
    return outcome_bars(
        means,
        "bar",
        "Outcome of every prompt: in the prompt's language, another language, or no answer",
        caption_for(main) + "\nshares of all prompts (mean over training seeds); each bar sums to 1",
    )
