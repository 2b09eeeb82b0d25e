"""The analysis tables: every run's metrics.json under a runs root, read once into DataFrames.

Two layouts are accepted for `root` (docs/run-layout.md):
    <root>/<lang>/<method>-<n>/metrics.json            root = one recipe folder (runs/<recipe>)
    <root>/<recipe>/<lang>/<method>-<n>/metrics.json   root = the folder holding recipes (runs/)
Nothing else under `root` is read, so every figure and report number can be traced back to those files.

Tables:
    evals      one row per (run, direction): run fields, train summary, the direction's eval
               fields under their metrics.json key names, judge_* and knowledge_* columns.
    histories  long table of training logs: one row per (run, step, metric).

Runs of one language and budget are compared only when they trained on the same seeds: a run's
"run" block records the seed ids it used (`seed_ids`), and loading refuses two runs of one
(recipe, language, budget) whose seed ids differ (docs/method.md §4). Runs without seed_ids are
compared as they are.

The selections below (main runs, language and method order) are shared by clo_utils.analysis.plots and
clo_utils.analysis.report; the method vocabulary comes from clo_utils.common.methods.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from clo_utils.common.languages import LANGUAGES
from clo_utils.common.methods import METHOD_ORDER, method_family
from clo_utils.common.runfiles import RunFileError, read_metrics

# --------------------------------------------------------------------------------------------
# Loading metrics.json
# --------------------------------------------------------------------------------------------

# <method>-<n_seeds>, and <method>-<n_seeds>-s<training seed> for one of several training seeds.
RUN_DIR_PATTERN = re.compile(r"^(?P<method>.+?)-(?P<n_seeds>\d+)(?:-s(?P<train_seed>\d+))?$")
RUN_FIELDS = ("model_id", "model_label", "trainable", "nll_on", "translator")
TRAIN_FIELDS = ("train_seconds", "seconds_per_step", "peak_memory_mb", "trainable_params", "total_params")
IDENTITY_COLUMNS = (
    "recipe",
    "lang",
    "method",
    "n_seeds",
    "run_name",
    "run_group",
    "train_seed",
    "method_family",
    "run_dir",
    "recipe_root",
)
HISTORY_COLUMNS = IDENTITY_COLUMNS + (
    "trainable",
    "nll_on",
    "model_label",
    "labels",
    "step",
    "epoch",
    "metric",
    "value",
)
TRAINABLE_ORDER = ("attention", "lora", "full")  # the paper's default first


# A metrics.json (or answers.jsonl) that cannot be used; the message starts with its path.
MetricsFileError = RunFileError


class SeedSetMismatch(ValueError):
    """Two runs of one language and budget trained on different seeds: their numbers do not compare."""


@dataclass(frozen=True)
class MetricsTables:
    evals: pd.DataFrame  # one row per (run, direction)
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
    """Parse and check one metrics.json (clo_utils.common.runfiles.read_metrics); errors name the file."""
    return read_metrics(path)


def _seed_ids(path: Path, run: dict[str, Any]) -> frozenset[str] | None:
    seed_ids = run.get("seed_ids")
    if seed_ids is None:
        return None
    if not isinstance(seed_ids, list):
        raise MetricsFileError(f"{path}: run.seed_ids must be a list of seed ids, got {type(seed_ids).__name__}")
    return frozenset(map(str, seed_ids))


def check_same_seeds(runs: Iterable[tuple[Path, dict[str, Any]]]) -> None:
    """Refuse runs of one (recipe, language, budget) whose run.seed_ids differ (docs/method.md §4):
    an error names both run folders. Runs that record no seed_ids are not checked."""
    first: dict[tuple[Any, ...], tuple[Path, frozenset[str]]] = {}
    for path, run in runs:
        seeds = _seed_ids(path, run)
        if seeds is None:
            continue
        identity = _run_identity(path, run)
        key = (identity["recipe"], identity["lang"], identity["n_seeds"])
        if key not in first:
            first[key] = (path.parent, seeds)
            continue
        other_dir, other_seeds = first[key]
        if seeds != other_seeds:
            only = sorted(seeds ^ other_seeds)
            raise SeedSetMismatch(
                f"{other_dir} and {path.parent} cannot be compared: both are {identity['lang']} at a budget of "
                f"{identity['n_seeds']} seeds but trained on different seeds ({len(only)} seed ids in one run "
                f"only, e.g. {only[:3]}). Runs of one budget must train on the same seeds (docs/method.md §4): "
                "retrain the older run, or move one of them out of the runs root."
            )


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
    # The training seed: run.train_seed, else the folder's -s<seed> suffix, else run.seed.
    train_seed = run.get("train_seed", match["train_seed"] if match["train_seed"] is not None else run.get("seed"))
    return {
        "recipe": run.get("recipe") or path.parent.parent.parent.name,
        "lang": run.get("lang") or path.parent.parent.name,
        "method": method,
        "n_seeds": n_seeds,
        "run_name": path.parent.name,
        # The runs that differ only in their training seed share a run_group.
        "run_group": f"{match['method']}-{match['n_seeds']}",
        "train_seed": None if train_seed is None else int(train_seed),
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
    shared |= {
        "trainable": run.get("trainable"),
        "nll_on": run.get("nll_on"),
        "model_label": run.get("model_label"),
        "labels": tuple(run.get("labels") or ()),
    }
    rows = []
    for entry in (metrics.get("train") or {}).get("history") or []:
        for metric, value in entry.items():
            if metric in ("step", "epoch") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            rows.append(
                dict(shared, step=entry.get("step"), epoch=entry.get("epoch"), metric=metric, value=float(value))
            )
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
    loaded = [(path, read_metrics_file(path)) for path in paths]
    check_same_seeds((path, metrics["run"]) for path, metrics in loaded)
    for path, metrics in loaded:
        eval_rows += _eval_rows(path, metrics)
        history_rows += _history_rows(path, metrics)
    evals = pd.DataFrame(eval_rows)
    for column in ("judge_win_rate", "judge_vs", "peak_memory_mb", "target", "chrf", "nll"):
        if column not in evals:  # absent blocks still give a column, so selections never KeyError
            evals[column] = None
    histories = pd.DataFrame(history_rows, columns=list(HISTORY_COLUMNS))
    return MetricsTables(evals=evals, histories=histories)


def load_metrics(root: str | Path) -> pd.DataFrame:
    """One row per (run, direction) with flattened eval fields (see the module docstring)."""
    return load_tables(root).evals


# --------------------------------------------------------------------------------------------
# Selections
# --------------------------------------------------------------------------------------------


def trainable_rank(trainable: Any) -> int:
    return TRAINABLE_ORDER.index(trainable) if trainable in TRAINABLE_ORDER else len(TRAINABLE_ORDER)


def main_run_dirs(frame: pd.DataFrame) -> set[str]:
    """The main runs of each (recipe, lang, method family, budget), leaving ablation variants out:
    one run group, with every training seed of it.

    Preference: the run whose method has no trainable suffix, then attention-only (the paper's
    default), then folder name, so the choice is deterministic.
    """
    runs = frame.drop_duplicates("run_dir").copy()
    runs["_suffixed"] = runs["method"] != runs["method_family"]
    runs["trainable_rank"] = runs["trainable"].map(trainable_rank)
    runs = runs.sort_values(["_suffixed", "trainable_rank", "run_name"])
    chosen = runs.drop_duplicates(["recipe", "lang", "method_family", "n_seeds"])
    groups = set(zip(chosen["recipe_root"], chosen["lang"], chosen["run_group"]))
    return {row.run_dir for row in runs.itertuples() if (row.recipe_root, row.lang, row.run_group) in groups}


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
