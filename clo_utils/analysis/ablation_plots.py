"""The ablation figures (docs/method.md §7): NLL on target or both, trainable modules, SFT's limitation, judge win rates.

Each takes the analysis table of clo_utils.analysis.tables and returns a matplotlib Figure, or raises
MissingFigureData when the metrics hold nothing to plot.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from clo_utils.analysis.plot_style import (
    DIRECTION_LABELS,
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
    limit_share_axis,
    method_handles,
    method_palette,
    new_figure,
    score_grid,
    x_order,
)
from clo_utils.analysis.tables import (
    language_label,
    main_variants,
    ordered_languages,
    ordered_methods,
    resource_level,
    trainable_rank,
)
from clo_utils.evaluation.metrics import DIRECTIONS

NLL_VARIANTS = {"target": "clo", "both": "clo_nll_both"}  # nll_on -> the method whose colour it borrows


def plot_nll_ablation(evals: pd.DataFrame) -> Figure:
    main = main_variants(evals)
    clo = main[main["method_family"].str.startswith("clo") & main["nll_on"].isin(NLL_VARIANTS)]
    selected = []
    for (_lang, _n_seeds), runs in clo.groupby(["lang", "n_seeds"]):
        if set(runs["nll_on"]) == set(NLL_VARIANTS):
            selected.append(runs)
    if not selected:
        raise MissingFigureData("no language and budget with CLO runs for both nll_on='target' and nll_on='both'")
    frame = pd.concat(selected)
    # Largest shared budget per language keeps one pair of bars per language.
    largest = frame.groupby("lang")["n_seeds"].transform("max")
    frame = frame[frame["n_seeds"] == largest]
    frame = frame.assign(
        x_label=[f"{language_label(l)}\nn={n:,}" for l, n in zip(frame["lang"], frame["n_seeds"])],
        variant=frame["nll_on"].map(NLL_VARIANTS),
    )
    variants = list(NLL_VARIANTS.values())
    palette = method_palette(variants)
    order = x_order(frame)
    figure, axes = new_figure(1, len(SCORE_PANELS), panel_size=(max(2.6, 1.1 * len(order)), 2.6))
    for col, (metric, direction) in enumerate(SCORE_PANELS):
        ax = axes[0, col]
        bar_panel(ax, direction_rows(frame, direction), "x_label", metric, "variant", order, variants, palette)
        limit_share_axis(ax, metric)
        ax.set_ylabel(axis_label(metric))
        ax.set_title(DIRECTION_LABELS[direction], fontsize=8)
    handles = [
        Patch(color=palette["clo"], label="CLO, NLL on target only (paper)"),
        Patch(color=palette["clo_nll_both"], label="CLO, NLL on target + English"),
    ]
    add_legend(figure, handles)
    add_title(figure, "NLL ablation: which responses the NLL term covers")
    add_caption(figure, caption_for(frame))
    return figure


# (5) Trainable modules: attention-only vs LoRA vs full (quality and peak memory)


ABLATION_FAMILIES = ("sft", "sft_dpo", "dpo", "clo")


TRAINABLE_PANELS = (("target", "tgt"), ("chrf", "tgt"), ("peak_memory_mb", "tgt"))


def _trainable_ablation_rows(evals: pd.DataFrame) -> pd.DataFrame:
    rows = evals[evals["method_family"].isin(ABLATION_FAMILIES) & evals["trainable"].notna()]
    rows = rows[rows["nll_on"].fillna("target") != "both"]  # the NLL ablation is a separate figure
    selected = []
    for _lang, runs in rows.groupby("lang"):
        varied = [n for n, at_n in runs.groupby("n_seeds") if at_n["trainable"].nunique() >= 2]
        if varied:
            selected.append(runs[runs["n_seeds"] == max(varied)])
    if not selected:
        return rows.iloc[0:0]
    # One run per (lang, family, trainable): a suffix-free folder name wins ties.
    frame = pd.concat(selected).assign(_suffixed=lambda f: f["method"] != f["method_family"])
    frame = frame.sort_values(["_suffixed", "run_name"])
    return frame.drop_duplicates(["lang", "method_family", "trainable", "direction"])


def plot_trainable_modules(evals: pd.DataFrame) -> Figure:
    frame = _trainable_ablation_rows(evals)
    if frame.empty:
        values = sorted(evals["trainable"].dropna().unique()) if "trainable" in evals else []
        raise MissingFigureData(
            f"no trainable-module ablation: no budget has SFT/DPO/CLO runs with two or more "
            f"run.trainable values (found {values or 'none'})"
        )
    methods = ordered_methods(frame["method_family"])
    palette = method_palette(methods)
    trainables = sorted(frame["trainable"].unique(), key=lambda t: (trainable_rank(t), t))
    languages = ordered_languages(frame["lang"])
    figure, axes = new_figure(len(languages), len(TRAINABLE_PANELS), panel_size=(2.2 + 0.7 * len(trainables), 2.4))
    for row, lang in enumerate(languages):
        at_lang = frame[frame["lang"] == lang]
        n_seeds = int(at_lang["n_seeds"].iloc[0])
        for col, (metric, direction) in enumerate(TRAINABLE_PANELS):
            ax = axes[row, col]
            bar_panel(
                ax,
                direction_rows(at_lang, direction),
                "trainable",
                metric,
                "method_family",
                trainables,
                methods,
                palette,
            )
            limit_share_axis(ax, metric)
            ax.set_ylabel(axis_label(metric))
            ax.set_xlabel("trained parameters (run.trainable)")
            where = "" if metric == "peak_memory_mb" else f" · {DIRECTION_LABELS[direction]}"
            ax.set_title(f"{language_label(lang)} · n={n_seeds:,}{where}", fontsize=8)
    add_legend(figure, method_handles(methods, palette))
    add_title(figure, "Trainable modules: quality and peak training memory")
    add_caption(figure, caption_for(frame))
    return figure


# (6) SFT limitation: SFT-en vs SFT-tgt vs SFT vs CLO across resource levels


LIMITATION_FAMILIES = ("sft_en", "sft_tgt", "sft", "clo")


def plot_sft_limitation(evals: pd.DataFrame) -> Figure:
    main = main_variants(evals)
    frame = at_largest_budget(main, LIMITATION_FAMILIES, ("sft_en", "sft_tgt"))
    if frame.empty:
        raise MissingFigureData("no SFT-en or SFT-tgt runs (methods sft_en / sft_tgt) in the metrics")
    # Resource level in the tick label; ordered_languages already sorts high -> low -> demo.
    frame = frame.assign(
        x_label=[f"{label}\n[{resource_level(lang)}]" for label, lang in zip(frame["x_label"], frame["lang"])]
    )
    return score_grid(frame, "SFT limitation: SFT-en vs SFT-tgt vs SFT vs CLO by resource level")


# (7) Judge win rate vs the judge's baseline


def plot_judge_win_rates(evals: pd.DataFrame) -> Figure:
    judged = main_variants(evals)
    judged = judged[judged["judge_win_rate"].notna()] if "judge_win_rate" in judged else judged.iloc[0:0]
    if judged.empty:
        raise MissingFigureData("no judge blocks with a win_rate in the metrics (judge not run)")
    judged = judged.assign(
        x_label=[
            f"{language_label(l)} n={n:,}\nvs {vs}"
            for l, n, vs in zip(judged["lang"], judged["n_seeds"], judged["judge_vs"])
        ]
    )
    methods = ordered_methods(judged["method_family"])
    palette = method_palette(methods)
    order = x_order(judged)
    directions = [d for d in DIRECTIONS if (judged["direction"] == d).any()]
    figure, axes = new_figure(1, len(directions), panel_size=(max(3.2, 1.0 * len(order) + 0.3 * len(methods)), 2.8))
    for col, direction in enumerate(directions):
        ax = axes[0, col]
        bar_panel(
            ax,
            direction_rows(judged, direction),
            "x_label",
            "judge_win_rate",
            "method_family",
            order,
            methods,
            palette,
        )
        ax.axhline(0.5, color="0.4", linestyle="--", linewidth=0.8)  # a tie with the baseline
        limit_share_axis(ax, "judge_win_rate")
        ax.set_ylabel(axis_label("judge_win_rate"))
        ax.set_title(DIRECTION_LABELS[direction], fontsize=8)
        ax.tick_params(axis="x", labelsize=6)
    add_legend(
        figure, method_handles(methods, palette) + [Line2D([], [], color="0.4", linestyle="--", label="tie (0.5)")]
    )
    add_title(figure, "LLM-judge win rate against the baseline named in judge.vs")
    add_caption(figure, caption_for(judged))
    return figure
