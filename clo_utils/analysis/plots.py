"""The paper's figure set (docs/method.md §7), drawn from the analysis tables of clo_utils.analysis.tables.

Every figure function takes those DataFrames (one row per run and direction; training histories
as a long table) and returns a matplotlib Figure; it raises MissingFigureData when the metrics hold
nothing to plot, and `build_figures` turns that into a skipped entry with its reason rather than
an error. Method order, labels and colours come from clo_utils.common.methods, so a method has the same
colour in every figure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullLocator

from clo_utils.analysis.ablation_plots import (
    plot_judge_win_rates,
    plot_nll_ablation,
    plot_sft_limitation,
    plot_trainable_modules,
)
from clo_utils.analysis.intervals import group_intervals
from clo_utils.analysis.outcome_plots import plot_outcome_shares
from clo_utils.analysis.plot_style import (  # noqa: F401  (METHOD_COLOURS, MissingFigureData re-exported)
    DIRECTION_LABELS,
    DIRECTION_SHORT,
    HISTORY_AXES,
    METHOD_COLOURS,
    METRIC_AXES,
    SCORE_PANELS,
    MissingFigureData,
    add_caption,
    add_legend,
    add_title,
    at_largest_budget,
    axis_label,
    bar_panel,
    caption_for,
    direction_rows,
    has_values,
    label_grid,
    limit_share_axis,
    method_handles,
    method_palette,
    new_figure,
    same_share_limits,
    score_grid,
    x_order,
)
from clo_utils.analysis.tables import (  # noqa: F401  (the loaders are re-exported: notebook 05 calls plots.load_tables)
    MetricsFileError,
    MetricsTables,
    language_label,
    load_metrics,
    load_tables,
    main_run_dirs,
    main_variants,
    ordered_languages,
    ordered_methods,
    resource_level,
    trainable_rank,
)
from clo_utils.common.methods import method_label

logger = logging.getLogger(__name__)


def _budget_axis(ax: Axes, budgets: list[int]) -> None:
    ax.set_xscale("log", base=2)  # budgets double (1,600 / 3,200 / 6,400): even spacing
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(budgets)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))


# The three outcome shares over all prompts, each with its 95% interval (clo_utils.analysis.intervals).
EFFICIENCY_PANELS = (
    ("target", "tgt"),
    ("target", "en"),
    ("other_language", "tgt"),
    ("other_language", "en"),
    ("no_answer", "tgt"),
    ("no_answer", "en"),
)


def _error_bars(points: pd.DataFrame, column: str) -> list[list[float]] | None:
    """[below, above] distances from each point to its interval ends (0 where a point has none)."""
    low, high = points[f"{column}_low"], points[f"{column}_high"]
    if low.isna().all():
        return None
    values = points[column].astype(float)
    return [
        list((values - low.astype(float)).fillna(0.0).clip(lower=0.0)),
        list((high.astype(float) - values).fillna(0.0).clip(lower=0.0)),
    ]


EFFICIENCY_FAMILIES = ("sft", "sft_dpo", "clo")  # the methods drawn against the seed budget


def plot_data_efficiency(evals: pd.DataFrame) -> Figure:
    """The outcome shares over all prompts (in the prompt's language, other language, no answer) vs
    seed budget, SFT, SFT+DPO and CLO per language, with 95% intervals: a bootstrap over prompts for one training seed, a Student-t interval across seeds
    for several (the seeds' mean is the point)."""
    main = main_variants(evals)
    curves = main[main["method_family"].isin(EFFICIENCY_FAMILIES)]
    if curves.empty:
        raise MissingFigureData("no SFT, SFT+DPO or CLO runs in the metrics")
    families = ordered_methods(curves["method_family"])
    budgets = sorted(int(n) for n in curves["n_seeds"].unique())
    if len(budgets) < 2:
        raise MissingFigureData(f"only one seed budget ({budgets[0]}): a curve needs two or more")
    base = main[main["method_family"] == "base"]
    points = group_intervals(pd.concat([curves, base]))
    languages = ordered_languages(curves["lang"])
    figure, axes = new_figure(len(EFFICIENCY_PANELS), len(languages), panel_size=(3.0, 2.8))
    for row, (metric, direction) in enumerate(EFFICIENCY_PANELS):
        column = metric
        for col, lang in enumerate(languages):
            ax = axes[row, col]
            at = points[(points["lang"] == lang) & (points["direction"] == direction)]
            for family in families:
                line = at[at["method_family"] == family].sort_values("n_seeds")
                line = line[line[column].notna()]
                if len(line):
                    ax.errorbar(
                        line["n_seeds"],
                        line[column].astype(float).to_numpy(),
                        yerr=_error_bars(line, column),
                        marker="o",
                        capsize=3,
                        color=METHOD_COLOURS[family],
                    )
            reference = at[at["method_family"] == "base"][column].dropna()
            if len(reference):
                ax.axhline(float(reference.iloc[0]), color=METHOD_COLOURS["base"], linestyle="--")
            _budget_axis(ax, budgets)
        same_share_limits(axes[row])  # zoomed to the data: the differences are a few hundredths
    # direction, share, unit: three short lines fit the panel's height
    row_labels = [f"{DIRECTION_SHORT[d]}\n{METRIC_AXES[m][0]}\n({METRIC_AXES[m][1]})" for m, d in EFFICIENCY_PANELS]
    label_grid(axes, row_labels, [language_label(lang) for lang in languages], "seed budget (seeds)")
    handles = [Line2D([], [], color=METHOD_COLOURS[f], marker="o", label=method_label(f)) for f in families]
    handles.append(Line2D([], [], color=METHOD_COLOURS["base"], linestyle="--", label="untouched model"))
    add_legend(figure, handles)
    add_title(figure, "Data efficiency: outcome shares over all prompts vs seed budget (95% intervals)")
    add_caption(
        figure,
        caption_for(pd.concat([curves, base])) + "\nbars: 95% bootstrap interval over prompts "
        "(one training seed) or Student-t interval across training seeds (several)",
    )
    return figure


# (2) Fidelity and score per direction: base, SFT, CLO per language


def plot_direction_scores(evals: pd.DataFrame) -> Figure:
    main = main_variants(evals)
    trained = ("sft", "sft_dpo", "clo")
    frame = at_largest_budget(main, ("base", *trained), trained)
    if frame.empty or not frame["method_family"].isin(trained).any():
        raise MissingFigureData("no SFT, SFT+DPO or CLO runs in the metrics")
    return score_grid(frame, "Fidelity and chrF++ per prompt direction (largest budget per language)")


# (3) Training curves

CLO_CURVES = ("loss", "nll_loss", "rewards_en/margins", "rewards_tgt/margins")

BUDGET_LINESTYLES = ("-", "--", ":", "-.")


def _curve_runs(histories: pd.DataFrame) -> pd.DataFrame:
    """Main CLO runs (every logged curve) and main SFT runs (loss only)."""
    main = histories[histories["run_dir"].isin(main_run_dirs(histories))] if len(histories) else histories
    clo = main[(main["method_family"] == "clo") & main["metric"].isin(CLO_CURVES)]
    sft = main[(main["method_family"] == "sft") & (main["metric"] == "loss")]
    return pd.concat([clo, sft])


def plot_training_curves(histories: pd.DataFrame) -> Figure:
    curves = _curve_runs(histories)
    if curves.empty:
        raise MissingFigureData("no training history for CLO or SFT runs (train.history empty or absent)")
    metrics = [metric for metric in CLO_CURVES if (curves["metric"] == metric).any()]
    languages = ordered_languages(curves["lang"])
    budgets = sorted(curves["n_seeds"].unique(), reverse=True)
    style_by_budget = {n: BUDGET_LINESTYLES[i % len(BUDGET_LINESTYLES)] for i, n in enumerate(budgets)}
    figure, axes = new_figure(len(metrics), len(languages))
    for row, metric in enumerate(metrics):
        for col, lang in enumerate(languages):
            ax = axes[row, col]
            panel = curves[(curves["metric"] == metric) & (curves["lang"] == lang)]
            for (family, n_seeds), run in panel.groupby(["method_family", "n_seeds"]):
                run = run.sort_values("step")
                ax.plot(run["step"], run["value"], color=METHOD_COLOURS[family], linestyle=style_by_budget[n_seeds])
            if metric.endswith("margins"):
                ax.axhline(0.0, color="0.5", linewidth=0.8)
    row_labels = [f"{HISTORY_AXES[m][0]}\n({HISTORY_AXES[m][1]})" for m in metrics]
    label_grid(axes, row_labels, [language_label(lang) for lang in languages], "optimizer step (steps)")
    families = ordered_methods(curves["method_family"])
    handles: list[Any] = [Line2D([], [], color=METHOD_COLOURS[f], label=method_label(f)) for f in families]
    handles += [Line2D([], [], color="0.3", linestyle=style_by_budget[n], label=f"{n:,} seeds") for n in budgets]
    add_legend(figure, handles)
    add_title(figure, "Training curves (CLO: λ·NLL + (1−λ)·cross-lingual loss; SFT: NLL, loss only)")
    add_caption(figure, caption_for(curves))
    return figure


# (4) NLL ablation: NLL on target only (the paper) vs target + English

FigureBuilder = Callable[[MetricsTables], Figure]

FIGURES: dict[str, FigureBuilder] = {
    "outcome_shares": lambda tables: plot_outcome_shares(tables.evals),
    "data_efficiency": lambda tables: plot_data_efficiency(tables.evals),
    "direction_scores": lambda tables: plot_direction_scores(tables.evals),
    "training_curves": lambda tables: plot_training_curves(tables.histories),
    "nll_ablation": lambda tables: plot_nll_ablation(tables.evals),
    "trainable_modules": lambda tables: plot_trainable_modules(tables.evals),
    "sft_limitation": lambda tables: plot_sft_limitation(tables.evals),
    "judge_win_rate": lambda tables: plot_judge_win_rates(tables.evals),
}

DEFAULT_FORMATS = ("png", "pdf")


class SkippedFigure(NamedTuple):
    name: str
    reason: str


class FigureResult(NamedTuple):
    written: list[Path]
    skipped: list[SkippedFigure]


def save_figure(
    figure: Figure, out_dir: str | Path, name: str, formats: Sequence[str] = DEFAULT_FORMATS
) -> list[Path]:
    """Write `name`.png (dpi 150) and `name`.pdf (or the given formats) under `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for extension in formats:
        path = out_dir / f"{name}.{extension}"
        figure.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    return paths


def build_figures(
    tables: MetricsTables, out_dir: str | Path, formats: Sequence[str] = DEFAULT_FORMATS
) -> FigureResult:
    """Every figure in FIGURES that the tables can support; the others are skipped with a reason."""
    written: list[Path] = []
    skipped: list[SkippedFigure] = []
    for name, builder in FIGURES.items():
        try:
            figure = builder(tables)
        except MissingFigureData as reason:
            logger.info("figure %s skipped: %s", name, reason)
            skipped.append(SkippedFigure(name, str(reason)))
            continue
        written += save_figure(figure, out_dir, name, formats)
    return FigureResult(written, skipped)


def _recipe_tables(tables: MetricsTables, recipe: str) -> MetricsTables:
    return MetricsTables(
        tables.evals[tables.evals["recipe"] == recipe], tables.histories[tables.histories["recipe"] == recipe]
    )


def build_all_figures(
    root: str | Path, out_dir: str | Path | None = None, formats: Sequence[str] = DEFAULT_FORMATS
) -> FigureResult:
    """Load `root`'s metrics.json files and write every figure (default: <root>/figures).

    With several recipes under `root`, each recipe gets its own sub-folder so runs from
    different models or translators never share a plot.
    """
    tables = load_tables(root)
    out_dir = Path(out_dir) if out_dir else Path(root) / "figures"
    recipes = sorted(tables.evals["recipe"].unique())
    if len(recipes) == 1:
        return build_figures(tables, out_dir, formats)
    written: list[Path] = []
    skipped: list[SkippedFigure] = []
    for recipe in recipes:
        result = build_figures(_recipe_tables(tables, recipe), out_dir / recipe, formats)
        written += result.written
        skipped += [SkippedFigure(f"{recipe}/{s.name}", s.reason) for s in result.skipped]
    return FigureResult(written, skipped)
