"""The paper's figure set (clo-method.md §7), rebuilt from the runs' metrics.json files only.

Two layouts are accepted for `root` (docs/run-layout.md):
    <root>/<lang>/<method>-<n>/metrics.json            root = one recipe folder (runs/<recipe>)
    <root>/<recipe>/<lang>/<method>-<n>/metrics.json   root = the folder holding recipes (runs/)
Nothing else under `root` is read, so a figure can always be traced back to those files.

Tables:
    evals      one row per (run, direction): run fields, train summary, the direction's eval
               fields under their metrics.json key names, judge_* and knowledge_* columns.
    histories  long table of training logs: one row per (run, step, metric).

Every figure function takes those DataFrames and returns a matplotlib Figure; it raises
MissingFigureData when the metrics hold nothing to plot, and `build_figures` turns that into a
skipped entry with its reason rather than an error.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullLocator

from clo_utils.languages import LANGUAGES

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Vocabulary shared by the figures and the report
# --------------------------------------------------------------------------------------------

DIRECTIONS = ("tgt", "en")
DIRECTION_LABELS = {"tgt": "target-language prompts", "en": "English prompts"}
DIRECTION_SHORT = {"tgt": "target prompts", "en": "English prompts"}

# Method order in legends and tables: the untouched model, the SFT family, then CLO.
METHOD_ORDER = ("base", "sft_en", "sft_tgt", "sft", "sft_dpo", "dpo", "clo", "clo_nll_both")
METHOD_LABELS = {
    "base": "untouched model",
    "sft_en": "SFT-en",
    "sft_tgt": "SFT-tgt",
    "sft": "SFT",
    "sft_dpo": "SFT+DPO",
    "dpo": "DPO",
    "clo": "CLO",
    "clo_nll_both": "CLO (NLL on both)",
}
_PALETTE = sns.color_palette("colorblind", 10)
# One colour per method in every figure, so CLO is always the same orange.
METHOD_COLOURS = {
    "base": _PALETTE[7],
    "sft_en": _PALETTE[9],
    "sft_tgt": _PALETTE[2],
    "sft": _PALETTE[0],
    "sft_dpo": _PALETTE[4],
    "dpo": _PALETTE[4],
    "clo": _PALETTE[3],
    "clo_nll_both": _PALETTE[5],
}
_FALLBACK_COLOURS = (_PALETTE[6], _PALETTE[8], _PALETTE[1])

TRAINABLE_ORDER = ("attention", "lora", "full")
RESOURCE_ORDER = ("high", "medium", "low", "demo", "other")

# (axis label, unit) per metric; units are what the axes print.
METRIC_AXES = {
    "fidelity": ("fidelity", "share of answers"),
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

# --------------------------------------------------------------------------------------------
# Loading metrics.json
# --------------------------------------------------------------------------------------------

RUN_DIR_PATTERN = re.compile(r"^(?P<method>.+)-(?P<n_seeds>\d+)$")
RUN_FIELDS = ("model_id", "model_label", "trainable", "nll_on", "translator")
TRAIN_FIELDS = ("train_seconds", "seconds_per_step", "peak_memory_mb", "trainable_params", "total_params")
IDENTITY_COLUMNS = ("recipe", "lang", "method", "n_seeds", "run_name", "method_family", "run_dir", "recipe_root")
HISTORY_COLUMNS = IDENTITY_COLUMNS + ("trainable", "nll_on", "model_label", "labels", "step", "epoch", "metric", "value")


class MetricsFileError(ValueError):
    """A metrics.json (or answers.jsonl) that cannot be used; the message starts with its path."""


class MissingFigureData(Exception):
    """The metrics hold nothing for this figure; the message is the reason it was skipped."""


@dataclass(frozen=True)
class MetricsTables:
    evals: pd.DataFrame      # one row per (run, direction)
    histories: pd.DataFrame  # one row per (run, step, metric)


def _is_run_metrics_file(path: Path, root: Path) -> bool:
    relative = path.relative_to(root).parts
    if any(part.startswith(".") for part in relative):  # .ipynb_checkpoints and the like
        return False
    # The parent is the run folder <method>-<n>; its parent is a language, never another run.
    return bool(RUN_DIR_PATTERN.match(path.parent.name)) and not RUN_DIR_PATTERN.match(path.parent.parent.name)


def find_metrics_files(root: str | Path) -> list[Path]:
    """Every <lang>/<method>-<n>/metrics.json two or three levels below `root`, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs root {root} is not a folder")
    candidates = [*root.glob("*/*/metrics.json"), *root.glob("*/*/*/metrics.json")]
    return sorted(path for path in candidates if _is_run_metrics_file(path, root))


def read_metrics_file(path: Path) -> dict[str, Any]:
    """Parse and check one metrics.json; any problem is a MetricsFileError naming the file."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MetricsFileError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(metrics, dict):
        raise MetricsFileError(f"{path}: top level must be a JSON object, got {type(metrics).__name__}")
    for block in ("run", "eval"):
        if not isinstance(metrics.get(block), dict):
            raise MetricsFileError(f"{path}: missing or non-object {block!r} block (see docs/run-layout.md)")
    for block in ("train", "judge", "knowledge"):
        if metrics.get(block) is not None and not isinstance(metrics[block], dict):
            raise MetricsFileError(f"{path}: {block!r} must be an object or null")
    if not metrics["eval"]:
        raise MetricsFileError(f"{path}: 'eval' block is empty: expected 'tgt' and/or 'en' results")
    for direction, fields in metrics["eval"].items():
        if not isinstance(fields, dict):
            raise MetricsFileError(f"{path}: eval[{direction!r}] must be an object")
    history = (metrics.get("train") or {}).get("history") or []
    if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
        raise MetricsFileError(f"{path}: train.history must be a list of objects")
    return metrics


def method_family(method: str, trainable: str | None) -> str:
    """`clo_full` trained with trainable=full belongs to the `clo` family (the ablation's naming)."""
    for separator in ("_", "-"):
        suffix = f"{separator}{trainable}"
        if trainable and method.endswith(suffix) and len(method) > len(suffix):
            return method[: -len(suffix)]
    return method


def _run_identity(path: Path, run: dict[str, Any]) -> dict[str, Any]:
    # The run block is authoritative; the folder names fill in what it leaves out.
    match = RUN_DIR_PATTERN.match(path.parent.name)
    assert match is not None  # guaranteed by find_metrics_files
    method = run.get("method") or match["method"]
    n_seeds = run.get("n_seeds", match["n_seeds"])
    try:
        n_seeds = int(n_seeds)
    except (TypeError, ValueError):
        raise MetricsFileError(f"{path}: run.n_seeds must be an integer, got {n_seeds!r}") from None
    return {
        "recipe": run.get("recipe") or path.parent.parent.parent.name,
        "lang": run.get("lang") or path.parent.parent.name,
        "method": method,
        "n_seeds": n_seeds,
        "run_name": path.parent.name,
        "method_family": method_family(method, run.get("trainable")),
        "run_dir": str(path.parent),
        "recipe_root": str(path.parent.parent.parent),
    }


def _scalar_fields(block: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    # Only scalars become columns; nested structures have no place in a flat table.
    return {f"{prefix}{key}": value for key, value in block.items() if not isinstance(value, (dict, list))}


def _eval_rows(path: Path, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    run = metrics["run"]
    shared = _run_identity(path, run)
    shared |= {field: run.get(field) for field in RUN_FIELDS}
    shared["labels"] = tuple(run.get("labels") or ())
    train = metrics.get("train") or {}
    shared |= {field: train.get(field) for field in TRAIN_FIELDS}
    shared |= _scalar_fields(metrics.get("knowledge") or {}, prefix="knowledge_")
    judge = metrics.get("judge") or {}
    rows = []
    for direction, fields in metrics["eval"].items():
        row = dict(shared, direction=direction)
        row |= _scalar_fields(fields)
        row |= _scalar_fields(judge.get(direction) or {}, prefix="judge_")
        rows.append(row)
    return rows


def _history_rows(path: Path, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    run = metrics["run"]
    shared = _run_identity(path, run)
    shared |= {"trainable": run.get("trainable"), "nll_on": run.get("nll_on"),
               "model_label": run.get("model_label"), "labels": tuple(run.get("labels") or ())}
    rows = []
    for entry in (metrics.get("train") or {}).get("history") or []:
        for metric, value in entry.items():
            if metric in ("step", "epoch") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            rows.append(dict(shared, step=entry.get("step"), epoch=entry.get("epoch"), metric=metric, value=float(value)))
    return rows


def load_tables(root: str | Path) -> MetricsTables:
    """Read every run's metrics.json under `root` once and return both tables."""
    paths = find_metrics_files(root)
    if not paths:
        raise FileNotFoundError(
            f"no metrics.json under {root}: expected <lang>/<method>-<n>/metrics.json "
            "(run 04_evaluate first, or point at runs/<recipe>)"
        )
    eval_rows: list[dict[str, Any]] = []
    history_rows: list[dict[str, Any]] = []
    for path in paths:
        metrics = read_metrics_file(path)
        eval_rows += _eval_rows(path, metrics)
        history_rows += _history_rows(path, metrics)
    evals = pd.DataFrame(eval_rows)
    for column in ("judge_win_rate", "judge_vs", "peak_memory_mb", "fidelity", "chrf", "nll"):
        if column not in evals:  # absent blocks still give a column, so selections never KeyError
            evals[column] = None
    histories = pd.DataFrame(history_rows, columns=list(HISTORY_COLUMNS))
    return MetricsTables(evals=evals, histories=histories)


def load_metrics(root: str | Path) -> pd.DataFrame:
    """One row per (run, direction) with flattened eval fields (see the module docstring)."""
    return load_tables(root).evals


def load_histories(root: str | Path) -> pd.DataFrame:
    """The long table of training histories: one row per (run, step, metric)."""
    return load_tables(root).histories


# --------------------------------------------------------------------------------------------
# Selections
# --------------------------------------------------------------------------------------------

def _trainable_rank(trainable: Any) -> int:
    return TRAINABLE_ORDER.index(trainable) if trainable in TRAINABLE_ORDER else len(TRAINABLE_ORDER)


def main_run_dirs(frame: pd.DataFrame) -> set[str]:
    """The main run of each (recipe, lang, method family, budget), leaving ablation variants out.

    Preference: the run whose method has no trainable suffix, then attention-only (the paper's
    default), then folder name, so the choice is deterministic.
    """
    runs = frame.drop_duplicates("run_dir").copy()
    runs["_suffixed"] = runs["method"] != runs["method_family"]
    runs["_trainable_rank"] = runs["trainable"].map(_trainable_rank)
    runs = runs.sort_values(["_suffixed", "_trainable_rank", "run_name"])
    chosen = runs.drop_duplicates(["recipe", "lang", "method_family", "n_seeds"])
    return set(chosen["run_dir"])


def main_variants(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["run_dir"].isin(main_run_dirs(frame))]


def ordered_languages(codes: Iterable[str]) -> list[str]:
    """The registry's order (paper languages by resource level, then the demo ones), then others."""
    registry = list(LANGUAGES)
    unique = set(codes)
    return sorted(unique, key=lambda code: (registry.index(code) if code in registry else len(registry), code))


def resource_level(code: str) -> str:
    if code not in LANGUAGES:
        return "other"
    return LANGUAGES[code].resource or "demo"  # the paper's grouping has no level for demo languages


def language_label(code: str) -> str:
    return f"{code} ({LANGUAGES[code].name})" if code in LANGUAGES else code


def ordered_methods(methods: Iterable[str]) -> list[str]:
    unique = set(methods)
    known = [method for method in METHOD_ORDER if method in unique]
    return known + sorted(unique - set(METHOD_ORDER))


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def method_palette(methods: Sequence[str]) -> dict[str, Any]:
    unknown = iter(_FALLBACK_COLOURS * (len(methods) + 1))
    return {method: METHOD_COLOURS.get(method) or next(unknown) for method in methods}


def _direction_rows(frame: pd.DataFrame, direction: str) -> pd.DataFrame:
    return frame[frame["direction"] == direction]


def _largest_budget(frame: pd.DataFrame, lang: str, families: Sequence[str]) -> int | None:
    budgets = frame[(frame["lang"] == lang) & frame["method_family"].isin(families)]["n_seeds"]
    return int(budgets.max()) if len(budgets) else None


def _has_values(frame: pd.DataFrame, column: str) -> bool:
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


def new_figure(nrows: int, ncols: int, panel_size: tuple[float, float] = (3.0, 2.3)) -> tuple[Figure, Any]:
    apply_theme()
    width, height = panel_size
    # A bare Figure (not pyplot) so building many figures never piles up open windows.
    figure = Figure(figsize=(width * ncols + 1.8, height * nrows + 0.6), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False)
    return figure, axes


def caption_for(frame: pd.DataFrame) -> str:
    """The model and data labels of the runs in `frame`, e.g. 'SmolLM2-135M · Apertium MT · tiny budget'."""
    labels: list[str] = []
    for run_labels in frame.drop_duplicates("run_dir")["labels"]:
        labels += [label for label in run_labels if label not in labels]
    if not labels:  # runs written without labels: fall back to what the run block says
        model_column = "model_label" if _has_values(frame, "model_label") else "model_id"
        for column in (model_column, "translator"):
            values = frame[column].dropna().unique() if column in frame else []
            labels += [f"{column}: {value}" for value in values]
    recipes = ", ".join(sorted(frame["recipe"].dropna().unique()))
    return " · ".join([*labels, f"recipe {recipes}", "numbers from metrics.json"])


def add_caption(figure: Figure, caption: str) -> None:
    # Just below the figure area; savefig(bbox_inches="tight") grows the canvas to include it.
    figure.text(0.0, -0.01, caption, ha="left", va="top", fontsize=7, color="0.3")


def add_legend(figure: Figure, handles: list[Any]) -> None:
    figure.legend(handles=handles, loc="outside right upper", frameon=False)


def method_handles(methods: Sequence[str], palette: dict[str, Any]) -> list[Patch]:
    return [Patch(color=palette[method], label=method_label(method)) for method in methods]


def axis_label(metric: str) -> str:
    name, unit = METRIC_AXES[metric]
    return f"{name} ({unit})" if name != unit else name


def _bar_panel(ax: Axes, data: pd.DataFrame, x: str, y: str, hue: str, order: list[str],
               hue_order: list[str], palette: dict[str, Any]) -> None:
    # One row per bar by construction, so no error bars: each bar is one run's measured value.
    # saturation=1 keeps bar colours identical to the legend patches and the line plots.
    sns.barplot(data=data, x=x, y=y, hue=hue, order=order, hue_order=hue_order, palette=palette,
                errorbar=None, legend=False, saturation=1.0, ax=ax)
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


def _limit_share_axis(ax: Axes, metric: str) -> None:
    if metric in ("fidelity", "judge_win_rate"):
        ax.set_ylim(0, 1.05)


# --------------------------------------------------------------------------------------------
# (1) Data efficiency: score vs seed budget, SFT vs CLO, per language
# --------------------------------------------------------------------------------------------

SCORE_PANELS = (("fidelity", "tgt"), ("fidelity", "en"), ("chrf", "tgt"), ("chrf", "en"))


def _budget_axis(ax: Axes, budgets: list[int]) -> None:
    ax.set_xscale("log", base=2)  # budgets double (1,600 / 3,200 / 6,400): even spacing
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(budgets)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))


def plot_data_efficiency(evals: pd.DataFrame) -> Figure:
    main = main_variants(evals)
    curves = main[main["method_family"].isin(["sft", "clo"])]
    if curves.empty:
        raise MissingFigureData("no SFT or CLO runs in the metrics")
    budgets = sorted(int(n) for n in curves["n_seeds"].unique())
    if len(budgets) < 2:
        raise MissingFigureData(f"only one seed budget ({budgets[0]}): a curve needs two or more")
    base = main[main["method_family"] == "base"]
    languages = ordered_languages(curves["lang"])
    figure, axes = new_figure(len(SCORE_PANELS), len(languages))
    for row, (metric, direction) in enumerate(SCORE_PANELS):
        for col, lang in enumerate(languages):
            ax = axes[row, col]
            for family in ("sft", "clo"):
                line = curves[(curves["lang"] == lang) & (curves["method_family"] == family)
                              & (curves["direction"] == direction)].sort_values("n_seeds")
                if _has_values(line, metric):
                    ax.plot(line["n_seeds"], line[metric], marker="o", color=METHOD_COLOURS[family])
            reference = base[(base["lang"] == lang) & (base["direction"] == direction)][metric].dropna()
            if len(reference):
                ax.axhline(float(reference.iloc[0]), color=METHOD_COLOURS["base"], linestyle="--")
            _budget_axis(ax, budgets)
            _limit_share_axis(ax, metric)
    row_labels = [f"{DIRECTION_SHORT[d]}\n{axis_label(m)}" for m, d in SCORE_PANELS]
    label_grid(axes, row_labels, [language_label(lang) for lang in languages], "seed budget (seeds)")
    handles = [Line2D([], [], color=METHOD_COLOURS[f], marker="o", label=method_label(f)) for f in ("sft", "clo")]
    handles.append(Line2D([], [], color=METHOD_COLOURS["base"], linestyle="--", label="untouched model"))
    add_legend(figure, handles)
    figure.suptitle("Data efficiency: score vs seed budget")
    add_caption(figure, caption_for(pd.concat([curves, base])))
    return figure


# --------------------------------------------------------------------------------------------
# (2) Fidelity and score per direction: base, SFT, CLO per language
# --------------------------------------------------------------------------------------------

def _at_largest_budget(main: pd.DataFrame, families: Sequence[str], budget_families: Sequence[str]) -> pd.DataFrame:
    """Per language, the `families` rows at the largest budget of `budget_families` (base kept as is)."""
    selected = []
    for lang in main["lang"].unique():
        budget = _largest_budget(main, lang, budget_families)
        if budget is None:
            continue
        rows = main[(main["lang"] == lang) & main["method_family"].isin(families)]
        selected.append(rows[(rows["n_seeds"] == budget) | (rows["method_family"] == "base")])
    if not selected:
        return main.iloc[0:0]
    frame = pd.concat(selected)
    budget_by_lang = frame[frame["method_family"] != "base"].groupby("lang")["n_seeds"].max()
    frame = frame.assign(x_label=[f"{language_label(lang)}\nn={budget_by_lang.get(lang, 0):,}" for lang in frame["lang"]])
    return frame


def _x_order(frame: pd.DataFrame) -> list[str]:
    labels = frame.drop_duplicates("x_label")[["lang", "x_label"]]
    by_lang = {lang: i for i, lang in enumerate(ordered_languages(labels["lang"]))}
    return [label for _, label in sorted(zip(labels["lang"], labels["x_label"]), key=lambda p: (by_lang[p[0]], p[1]))]


def _score_grid(frame: pd.DataFrame, title: str) -> Figure:
    """2 x 2 grouped bars: (fidelity, chrF) x (target prompts, English prompts), hue = method."""
    methods = ordered_methods(frame["method_family"])
    palette = method_palette(methods)
    order = _x_order(frame)
    figure, axes = new_figure(2, 2, panel_size=(max(3.0, 1.2 * len(order) + 0.4 * len(methods)), 2.4))
    for row, metric in enumerate(("fidelity", "chrf")):
        for col, direction in enumerate(DIRECTIONS):
            ax = axes[row, col]
            _bar_panel(ax, _direction_rows(frame, direction), "x_label", metric, "method_family", order, methods, palette)
            _limit_share_axis(ax, metric)
            ax.set_ylabel(axis_label(metric))
            ax.set_title(DIRECTION_LABELS[direction], fontsize=8)
    add_legend(figure, method_handles(methods, palette))
    figure.suptitle(title)
    add_caption(figure, caption_for(frame))
    return figure


def plot_direction_scores(evals: pd.DataFrame) -> Figure:
    main = main_variants(evals)
    trained = ("sft", "sft_dpo", "clo")
    frame = _at_largest_budget(main, ("base", *trained), trained)
    if frame.empty or not frame["method_family"].isin(trained).any():
        raise MissingFigureData("no SFT, SFT+DPO or CLO runs in the metrics")
    return _score_grid(frame, "Fidelity and chrF++ per prompt direction (largest budget per language)")


# --------------------------------------------------------------------------------------------
# (3) Training curves
# --------------------------------------------------------------------------------------------

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
    figure.suptitle("Training curves (CLO: λ·NLL + (1−λ)·cross-lingual loss; SFT: NLL, loss only)")
    add_caption(figure, caption_for(curves))
    return figure


# --------------------------------------------------------------------------------------------
# (4) NLL ablation: NLL on target only (the paper) vs target + English
# --------------------------------------------------------------------------------------------

NLL_VARIANTS = {"target": "clo", "both": "clo_nll_both"}  # nll_on -> the method whose colour it borrows


def plot_nll_ablation(evals: pd.DataFrame) -> Figure:
    main = main_variants(evals)
    clo = main[main["method_family"].str.startswith("clo") & main["nll_on"].isin(NLL_VARIANTS)]
    selected = []
    for (lang, n_seeds), runs in clo.groupby(["lang", "n_seeds"]):
        if set(runs["nll_on"]) == set(NLL_VARIANTS):
            selected.append(runs)
    if not selected:
        raise MissingFigureData("no language and budget with CLO runs for both nll_on='target' and nll_on='both'")
    frame = pd.concat(selected)
    # Largest shared budget per language keeps one pair of bars per language.
    largest = frame.groupby("lang")["n_seeds"].transform("max")
    frame = frame[frame["n_seeds"] == largest]
    frame = frame.assign(x_label=[f"{language_label(l)}\nn={n:,}" for l, n in zip(frame["lang"], frame["n_seeds"])],
                         variant=frame["nll_on"].map(NLL_VARIANTS))
    variants = list(NLL_VARIANTS.values())
    palette = method_palette(variants)
    order = _x_order(frame)
    figure, axes = new_figure(1, len(SCORE_PANELS), panel_size=(max(2.6, 1.1 * len(order)), 2.6))
    for col, (metric, direction) in enumerate(SCORE_PANELS):
        ax = axes[0, col]
        _bar_panel(ax, _direction_rows(frame, direction), "x_label", metric, "variant", order, variants, palette)
        _limit_share_axis(ax, metric)
        ax.set_ylabel(axis_label(metric))
        ax.set_title(DIRECTION_LABELS[direction], fontsize=8)
    handles = [Patch(color=palette["clo"], label="CLO, NLL on target only (paper)"),
               Patch(color=palette["clo_nll_both"], label="CLO, NLL on target + English")]
    add_legend(figure, handles)
    figure.suptitle("NLL ablation: which responses the NLL term covers")
    add_caption(figure, caption_for(frame))
    return figure


# --------------------------------------------------------------------------------------------
# (5) Trainable modules: attention-only vs LoRA vs full (quality and peak memory)
# --------------------------------------------------------------------------------------------

ABLATION_FAMILIES = ("sft", "sft_dpo", "dpo", "clo")
TRAINABLE_PANELS = (("fidelity", "tgt"), ("chrf", "tgt"), ("peak_memory_mb", "tgt"))


def _trainable_ablation_rows(evals: pd.DataFrame) -> pd.DataFrame:
    rows = evals[evals["method_family"].isin(ABLATION_FAMILIES) & evals["trainable"].notna()]
    rows = rows[rows["nll_on"].fillna("target") != "both"]  # the NLL ablation is a separate figure
    selected = []
    for lang, runs in rows.groupby("lang"):
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
        raise MissingFigureData(f"no trainable-module ablation: no budget has SFT/DPO/CLO runs with two or more "
                                f"run.trainable values (found {values or 'none'})")
    methods = ordered_methods(frame["method_family"])
    palette = method_palette(methods)
    trainables = sorted(frame["trainable"].unique(), key=lambda t: (_trainable_rank(t), t))
    languages = ordered_languages(frame["lang"])
    figure, axes = new_figure(len(languages), len(TRAINABLE_PANELS), panel_size=(2.2 + 0.7 * len(trainables), 2.4))
    for row, lang in enumerate(languages):
        at_lang = frame[frame["lang"] == lang]
        n_seeds = int(at_lang["n_seeds"].iloc[0])
        for col, (metric, direction) in enumerate(TRAINABLE_PANELS):
            ax = axes[row, col]
            _bar_panel(ax, _direction_rows(at_lang, direction), "trainable", metric, "method_family",
                       trainables, methods, palette)
            _limit_share_axis(ax, metric)
            ax.set_ylabel(axis_label(metric))
            ax.set_xlabel("trained parameters (run.trainable)")
            where = "" if metric == "peak_memory_mb" else f" · {DIRECTION_LABELS[direction]}"
            ax.set_title(f"{language_label(lang)} · n={n_seeds:,}{where}", fontsize=8)
    add_legend(figure, method_handles(methods, palette))
    figure.suptitle("Trainable modules: quality and peak training memory")
    add_caption(figure, caption_for(frame))
    return figure


# --------------------------------------------------------------------------------------------
# (6) SFT limitation: SFT-en vs SFT-tgt vs SFT vs CLO across resource levels
# --------------------------------------------------------------------------------------------

LIMITATION_FAMILIES = ("sft_en", "sft_tgt", "sft", "clo")


def plot_sft_limitation(evals: pd.DataFrame) -> Figure:
    main = main_variants(evals)
    frame = _at_largest_budget(main, LIMITATION_FAMILIES, ("sft_en", "sft_tgt"))
    if frame.empty:
        raise MissingFigureData("no SFT-en or SFT-tgt runs (methods sft_en / sft_tgt) in the metrics")
    # Resource level in the tick label; ordered_languages already sorts high -> low -> demo.
    frame = frame.assign(x_label=[f"{label}\n[{resource_level(lang)}]"
                                  for label, lang in zip(frame["x_label"], frame["lang"])])
    return _score_grid(frame, "SFT limitation: SFT-en vs SFT-tgt vs SFT vs CLO by resource level")


# --------------------------------------------------------------------------------------------
# (7) Judge win rate vs the judge's baseline
# --------------------------------------------------------------------------------------------

def plot_judge_win_rates(evals: pd.DataFrame) -> Figure:
    judged = main_variants(evals)
    judged = judged[judged["judge_win_rate"].notna()] if "judge_win_rate" in judged else judged.iloc[0:0]
    if judged.empty:
        raise MissingFigureData("no judge blocks with a win_rate in the metrics (judge not run)")
    judged = judged.assign(x_label=[f"{language_label(l)} n={n:,}\nvs {vs}" for l, n, vs
                                    in zip(judged["lang"], judged["n_seeds"], judged["judge_vs"])])
    methods = ordered_methods(judged["method_family"])
    palette = method_palette(methods)
    order = _x_order(judged)
    directions = [d for d in DIRECTIONS if (judged["direction"] == d).any()]
    figure, axes = new_figure(1, len(directions), panel_size=(max(3.2, 1.0 * len(order) + 0.3 * len(methods)), 2.8))
    for col, direction in enumerate(directions):
        ax = axes[0, col]
        _bar_panel(ax, _direction_rows(judged, direction), "x_label", "judge_win_rate", "method_family",
                   order, methods, palette)
        ax.axhline(0.5, color="0.4", linestyle="--", linewidth=0.8)  # a tie with the baseline
        _limit_share_axis(ax, "judge_win_rate")
        ax.set_ylabel(axis_label("judge_win_rate"))
        ax.set_title(DIRECTION_LABELS[direction], fontsize=8)
        ax.tick_params(axis="x", labelsize=6)
    add_legend(figure, method_handles(methods, palette) + [Line2D([], [], color="0.4", linestyle="--", label="tie (0.5)")])
    figure.suptitle("LLM-judge win rate against the baseline named in judge.vs")
    add_caption(figure, caption_for(judged))
    return figure


# --------------------------------------------------------------------------------------------
# Saving and building the whole set
# --------------------------------------------------------------------------------------------

FigureBuilder = Callable[[MetricsTables], Figure]
FIGURES: dict[str, FigureBuilder] = {
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


def save_figure(figure: Figure, out_dir: str | Path, name: str, formats: Sequence[str] = DEFAULT_FORMATS) -> list[Path]:
    """Write `name`.png (dpi 150) and `name`.pdf (or the given formats) under `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for extension in formats:
        path = out_dir / f"{name}.{extension}"
        figure.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    return paths


def build_figures(tables: MetricsTables, out_dir: str | Path, formats: Sequence[str] = DEFAULT_FORMATS) -> FigureResult:
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
    return MetricsTables(tables.evals[tables.evals["recipe"] == recipe],
                         tables.histories[tables.histories["recipe"] == recipe])


def build_all_figures(root: str | Path, out_dir: str | Path | None = None,
                      formats: Sequence[str] = DEFAULT_FORMATS) -> FigureResult:
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
