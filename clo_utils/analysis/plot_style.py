"""The figures' shared look: one seaborn theme, one colour per method (from clo_utils.common.methods),
axis labels with units, captions from the runs' labels, and a figure-level legend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from clo_utils.analysis.tables import language_label, ordered_languages, ordered_methods
from clo_utils.common.methods import FALLBACK_COLOUR_INDICES, METHODS, PALETTE, method_label
from clo_utils.evaluation.metrics import DIRECTIONS

# --------------------------------------------------------------------------------------------
# Vocabulary of the figures
# --------------------------------------------------------------------------------------------

DIRECTION_LABELS = {"tgt": "target-language prompts", "en": "English prompts"}
DIRECTION_SHORT = {"tgt": "target prompts", "en": "English prompts"}

_PALETTE = sns.color_palette(PALETTE, 10)
# One colour per method in every figure, so CLO is always the same orange.
METHOD_COLOURS = {name: _PALETTE[method.colour_index] for name, method in METHODS.items()}
_FALLBACK_COLOURS = tuple(_PALETTE[i] for i in FALLBACK_COLOUR_INDICES)

# (axis label, unit) per metric; units are what the axes print.
METRIC_AXES = {
    "target": ("in the prompt's language", "share of prompts"),
    "other_language": ("other language", "share of prompts"),
    "no_answer": ("no answer", "share of prompts"),
    "chrf": ("chrF++", "chrF++"),
    "nll": ("held-out NLL", "nats/token"),
    "peak_memory_mb": ("peak training memory", "MB"),
    "judge_win_rate": ("judge win rate", "share of comparisons"),
}
HISTORY_AXES = {
    "loss": ("training loss", "nats"),
    "nll_loss": ("target NLL", "nats/token"),
    "rewards_en/margins": ("margin, English triples", "β-scaled nats"),
    "rewards_tgt/margins": ("margin, target triples", "β-scaled nats"),
}


def method_palette(methods: Sequence[str]) -> dict[str, Any]:
    unknown = iter(_FALLBACK_COLOURS * (len(methods) + 1))
    return {method: METHOD_COLOURS.get(method) or next(unknown) for method in methods}


def direction_rows(frame: pd.DataFrame, direction: str) -> pd.DataFrame:
    return frame[frame["direction"] == direction]


def has_values(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and frame[column].notna().any()


# --------------------------------------------------------------------------------------------
# Figure scaffolding: one theme, captions from run.labels, a figure-level legend
# --------------------------------------------------------------------------------------------

_THEME_APPLIED = False


def apply_theme() -> None:
    """Set the kit's seaborn theme once per process (seaborn themes are global rcParams)."""
    global _THEME_APPLIED
    if not _THEME_APPLIED:
        sns.set_theme(style="whitegrid", context="paper")
        _THEME_APPLIED = True


LEGEND_INCHES = 1.8  # the width a figure gives its legend, right of the panels


def new_figure(nrows: int, ncols: int, panel_size: tuple[float, float] = (3.0, 2.3)) -> tuple[Figure, Any]:
    apply_theme()
    width, height = panel_size
    # A bare Figure (not pyplot) so building many figures never piles up open windows.
    figure = Figure(figsize=(width * ncols + LEGEND_INCHES, height * nrows + 0.6), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False)
    return figure, axes


def caption_for(frame: pd.DataFrame) -> str:
    """The model and data labels of the runs in `frame`, e.g. 'SmolLM2-135M · Apertium MT · tiny budget'."""
    labels: list[str] = []
    for run_labels in frame.drop_duplicates("run_dir")["labels"]:
        labels += [label for label in run_labels if label not in labels]
    if not labels:  # runs written without labels: fall back to what the run block says
        model_column = "model_label" if has_values(frame, "model_label") else "model_id"
        for column in (model_column, "translator"):
            values = frame[column].dropna().unique() if column in frame else []
            labels += [f"{column}: {value}" for value in values]
    recipes = ", ".join(sorted(frame["recipe"].dropna().unique()))
    return " · ".join([*labels, f"recipe {recipes}", "numbers from metrics.json"])


CAPTION_FONT_SIZE = 7
CAPTION_CHAR_WIDTH = 0.55  # mean character width of the caption font, in font sizes


def add_caption(figure: Figure, caption: str) -> None:
    # Just below the figure area; savefig(bbox_inches="tight") grows the canvas to include it, so
    # the caption is wrapped to the figure's width: a long line would widen a one-column figure.
    import textwrap

    width = max(40, int(figure.get_figwidth() * 72 / (CAPTION_FONT_SIZE * CAPTION_CHAR_WIDTH)))
    lines = [wrapped for line in caption.splitlines() for wrapped in textwrap.wrap(line, width) or [""]]
    figure.text(0.0, -0.01, "\n".join(lines), ha="left", va="top", fontsize=CAPTION_FONT_SIZE, color="0.3")


MIN_SHARE_SPAN = 0.2  # the narrowest y range a share panel is zoomed to
TITLE_CHAR_WIDTH_POINTS = 6.0  # mean character width of a figure title, in points


def add_title(figure: Figure, title: str) -> None:
    """The figure's title, left-aligned and wrapped so it stays clear of the legend at the top right
    (a one-column figure is narrower than a long title)."""
    import textwrap

    width = max(30, int((figure.get_figwidth() - LEGEND_INCHES) * 72 / TITLE_CHAR_WIDTH_POINTS))
    figure.suptitle("\n".join(textwrap.wrap(title, width)), x=0.01, ha="left")


def same_share_limits(axes_row: Sequence[Axes]) -> None:
    """One y range for a row of share panels: what their data needs (intervals included), within [0, 1.02]."""
    top = 1.02
    lows, highs = zip(*(ax.get_ylim() for ax in axes_row))
    low, high = max(0.0, min(lows)), min(top, max(highs))
    if high - low < MIN_SHARE_SPAN:  # a zoom must not make a difference of a few answers look large
        low, high = (low, low + MIN_SHARE_SPAN) if low < top - MIN_SHARE_SPAN else (top - MIN_SHARE_SPAN, top)
    for ax in axes_row:
        ax.set_ylim(low, high)


def add_legend(figure: Figure, handles: list[Any]) -> None:
    figure.legend(handles=handles, loc="outside right upper", frameon=False)


def method_handles(methods: Sequence[str], palette: dict[str, Any]) -> list[Patch]:
    return [Patch(color=palette[method], label=method_label(method)) for method in methods]


def axis_label(metric: str) -> str:
    name, unit = METRIC_AXES[metric]
    return f"{name} ({unit})" if name != unit else name


def bar_panel(
    ax: Axes,
    data: pd.DataFrame,
    x: str,
    y: str,
    hue: str,
    order: list[str],
    hue_order: list[str],
    palette: dict[str, Any],
) -> None:
    # One row per bar by construction, so no error bars: each bar is one run's measured value.
    # saturation=1 keeps bar colours identical to the legend patches and the line plots.
    sns.barplot(
        data=data,
        x=x,
        y=y,
        hue=hue,
        order=order,
        hue_order=hue_order,
        palette=palette,
        errorbar=None,
        legend=False,
        saturation=1.0,
        ax=ax,
    )
    ax.set_xlabel("")


def label_grid(axes: Any, row_labels: Sequence[str], column_titles: Sequence[str], xlabel: str) -> None:
    """Row labels on the first column, titles on the top row, x label on the bottom row only."""
    nrows, ncols = axes.shape
    for row in range(nrows):
        for col in range(ncols):
            ax = axes[row, col]
            ax.set_ylabel(row_labels[row] if col == 0 else "")
            ax.set_title(column_titles[col] if row == 0 else "", fontsize=9)
            ax.set_xlabel(xlabel if row == nrows - 1 else "")


def limit_share_axis(ax: Axes, metric: str) -> None:
    if metric in ("target", "other_language", "no_answer", "judge_win_rate"):
        ax.set_ylim(0, 1.05)


class MissingFigureData(Exception):
    """The metrics hold nothing for this figure; the message is the reason it was skipped."""


def largest_budget(frame: pd.DataFrame, lang: str, families: Sequence[str]) -> int | None:
    budgets = frame[(frame["lang"] == lang) & frame["method_family"].isin(families)]["n_seeds"]
    return int(budgets.max()) if len(budgets) else None


# (1) Data efficiency: score vs seed budget, SFT, SFT+DPO and CLO, per language


SCORE_PANELS = (("target", "tgt"), ("target", "en"), ("chrf", "tgt"), ("chrf", "en"))


def at_largest_budget(main: pd.DataFrame, families: Sequence[str], budget_families: Sequence[str]) -> pd.DataFrame:
    """Per language, the `families` rows at the largest budget of `budget_families` (base kept as is)."""
    selected = []
    for lang in main["lang"].unique():
        budget = largest_budget(main, lang, budget_families)
        if budget is None:
            continue
        rows = main[(main["lang"] == lang) & main["method_family"].isin(families)]
        selected.append(rows[(rows["n_seeds"] == budget) | (rows["method_family"] == "base")])
    if not selected:
        return main.iloc[0:0]
    frame = pd.concat(selected)
    budget_by_lang = frame[frame["method_family"] != "base"].groupby("lang")["n_seeds"].max()
    frame = frame.assign(
        x_label=[f"{language_label(lang)}\nn={budget_by_lang.get(lang, 0):,}" for lang in frame["lang"]]
    )
    return frame


def x_order(frame: pd.DataFrame) -> list[str]:
    labels = frame.drop_duplicates("x_label")[["lang", "x_label"]]
    by_lang = {lang: i for i, lang in enumerate(ordered_languages(labels["lang"]))}
    return [label for _, label in sorted(zip(labels["lang"], labels["x_label"]), key=lambda p: (by_lang[p[0]], p[1]))]


def score_grid(frame: pd.DataFrame, title: str) -> Figure:
    """2 x 2 grouped bars: (share answered in the prompt's language, chrF) x (target prompts, English
    prompts), hue = method."""
    methods = ordered_methods(frame["method_family"])
    palette = method_palette(methods)
    order = x_order(frame)
    figure, axes = new_figure(2, 2, panel_size=(max(3.0, 1.2 * len(order) + 0.4 * len(methods)), 2.4))
    for row, metric in enumerate(("target", "chrf")):
        for col, direction in enumerate(DIRECTIONS):
            ax = axes[row, col]
            bar_panel(
                ax, direction_rows(frame, direction), "x_label", metric, "method_family", order, methods, palette
            )
            limit_share_axis(ax, metric)
            ax.set_ylabel(axis_label(metric))
            ax.set_title(DIRECTION_LABELS[direction], fontsize=8)
    add_legend(figure, method_handles(methods, palette))
    add_title(figure, title)
    add_caption(figure, caption_for(frame))
    return figure
