"""Recipes: a YAML file read into a checked dict.

`load_recipe` checks what the file says: YAML syntax, duplicate keys, known keys, the type and
range of every value (a pydantic schema for the recipe's own keys, the notebooks' typed
`parameters` cells for the rest), languages and methods. What the recipe needs from the machine
(translators, models, the hub, data rows) is checked by `preflight.py`. Every problem is one line
that names the file, the line and the key, and what is expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..common.methods import NB_CLO, NB_SFT, TRAINABLE_SUFFIXES, TRAINED_METHODS, split_method
from ..common.runfiles import run_path
from .stage_notebooks import (  # noqa: F401  (re-exported)
    NB_ANALYSIS,
    NB_DATA,
    NB_EVAL,
    NOTEBOOKS_DIR,
    PARAMETER_RANGES,
    notebook_default,
    notebook_parameters,
    parameter_problem,
)

RECIPE_KEYS = {
    "name": "recipe name: outputs go to <runs_root>/<name>/",
    "description": "one line on what the recipe is for",
    "runs_root": "folder holding every recipe's runs (default: runs; relative: from the repository root, outside a "
    "checkout from the working folder)",
    "languages": "target languages (ISO codes), a list such as [ca, es]",
    "budgets": "seed budgets, a list of positive integers (nested: smaller budgets are prefixes of the largest)",
    "methods": f"methods to train: {sorted(TRAINED_METHODS)} (+ {' / '.join(TRAINABLE_SUFFIXES)} suffixes)",
    "seed": "sampling seed: which seeds the data stage draws, and the seed of every evaluation; also the training "
    "seed when 'seeds' is not given",
    "seeds": "training seeds, a list of distinct integers >= 0 such as [0, 1, 2] (default: [seed]): each method and "
    "budget trains once per seed, into <method>-<n>-s<seed> (one seed: <method>-<n>); data, base-0 and "
    "evaluation prompts are shared. An evaluate.judge_baseline naming a run group (sft-100) judges each "
    "seeded run against the baseline of the same training seed (sft-100-s1); base-0 or one seeded "
    "folder (sft-100-s0) is one baseline for every run",
    "jobs": "stages run side by side in separate processes (languages, training seeds; threads are split between them)",
    "gpu": "the GPU each training process runs on, for the pre-flight memory estimate: {type: t4} (types: "
    "clo_utils.pipeline.gpu_memory.GPU_TYPES) or {memory_gb: 24, bf16: true}; a recipe that does not fit is refused",
    "data": f"parameters of {NB_DATA}",
    "train": f"parameters shared by {NB_SFT} and {NB_CLO}; train.launch: {{config: ACCELERATE_CONFIG.yaml, "
    "num_processes: N}} starts every training stage through `accelerate launch` (several GPUs, several machines)",
    "method_params": "per-method parameter overrides: {method: {param: value}}",
    "evaluate": f"parameters of {NB_EVAL}",
    "analysis": f"parameters of {NB_ANALYSIS}",
}
SECTIONS = {"data": (NB_DATA,), "train": (NB_SFT, NB_CLO), "evaluate": (NB_EVAL,), "analysis": (NB_ANALYSIS,)}
# Notebook parameters the runner sets for every stage: a recipe that sets them would be overridden.
RUNNER_PARAMETERS = (
    "language",
    "output_dir",
    "data_dir",
    "run_dirs",
    "runs_root",
    "n_seeds",
    "method",
    "recipe",
    "seed",
    "num_threads",
)
# What each top-level value must be, in the words an error message uses.
EXPECTED = {
    "name": "a folder name (letters, digits, '-', '_', '.')",
    "description": "one line of text",
    "runs_root": "a folder path",
    "languages": "a list of language codes, e.g. [ca, es]",
    "budgets": "a list of positive integers, e.g. [50, 100]",
    "methods": "a list of method names, e.g. [sft, clo]",
    "seed": "an integer >= 0",
    "seeds": "a list of distinct integers >= 0, e.g. [0, 1, 2]",
    "jobs": "an integer >= 1",
    "gpu": "a mapping such as {type: t4} or {memory_gb: 24, bf16: true}",
    "data": "a mapping of notebook parameters (param: value lines)",
    "train": "a mapping of notebook parameters (param: value lines)",
    "evaluate": "a mapping of notebook parameters (param: value lines)",
    "analysis": "a mapping of notebook parameters (param: value lines)",
    "method_params": "a mapping {method: {param: value}}",
}
PositiveInt = Annotated[int, Field(gt=0, strict=True)]
Section = dict[str, Any]


class GpuSchema(BaseModel):
    """The recipe's `gpu:` key: a known type, or the memory (GiB) and bf16 support of the card."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: str | None = None
    memory_gb: Annotated[float, Field(gt=0, strict=False)] | None = None
    bf16: bool | None = None


class LaunchSchema(BaseModel):
    """`train.launch`: the training stages run under `accelerate launch --config_file CONFIG`; the rest of
    the setting (machines, ranks, addresses, DeepSpeed/FSDP) is accelerate's own, in that file."""

    model_config = ConfigDict(extra="forbid", strict=True)

    config: Annotated[str, Field(min_length=1)]
    num_processes: PositiveInt | None = None
    main_process_port: Annotated[int, Field(gt=0, lt=65536, strict=True)] | None = None
    extra_args: list[str] = []


LAUNCH_EXPECTED = (
    "a mapping {config: params/accelerate/<file>.yaml, num_processes: N} (optional: main_process_port, "
    "extra_args: [--flag, value])"
)


def check_launch(launch: Any, problems: _Problems) -> None:
    """train.launch: its keys and types, and that the accelerate config file exists."""
    keys = ("train", "launch")
    if not isinstance(launch, dict):
        problems.add(keys, f"train.launch: expected {LAUNCH_EXPECTED}, got {launch!r}")
        return
    try:
        LaunchSchema.model_validate(launch)
    except ValidationError as err:
        for e in err.errors():
            where = (*keys, *e["loc"])
            problems.add(where, f"train.launch.{_dotted(tuple(e['loc']))}: {e['msg']} (expected {LAUNCH_EXPECTED})")
        return
    if not run_path(launch["config"]).is_file():
        problems.add(
            (*keys, "config"), f"train.launch.config: no such accelerate config file: {run_path(launch['config'])}"
        )


class RecipeSchema(BaseModel):
    """The recipe's own keys. Notebook parameters inside the sections are checked against the
    notebooks' typed `parameters` cells (`check_section`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    description: str = ""
    runs_root: Annotated[str, Field(min_length=1)] = "runs"
    languages: Annotated[list[str], Field(min_length=1)]
    budgets: list[PositiveInt] = []
    methods: list[str] = []
    seed: Annotated[int, Field(ge=0)] = 0
    seeds: Annotated[list[Annotated[int, Field(ge=0, strict=True)]], Field(min_length=1)] | None = None
    jobs: PositiveInt = 1
    gpu: GpuSchema | None = None
    data: Section = {}
    train: Section = {}
    method_params: dict[str, Section] = {}
    evaluate: Section = {}
    analysis: Section = {}


class RecipeError(ValueError):
    """A recipe problem; each line of the message names the file, the line and the key."""


# ----------------------------------------------------------------------------------------------
# YAML: one-line syntax errors, duplicate keys, the line of every key
# ----------------------------------------------------------------------------------------------


def _syntax_error(path: Path, err: yaml.YAMLError) -> RecipeError:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if "'\\t'" in problem or "\t" in problem:
        problem = "a tab character: YAML indents with spaces only"
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
    return RecipeError(f"{where}: YAML syntax error: {problem}")


def read_yaml(path: Path) -> tuple[Any, dict[tuple, int]]:
    """(data, line of every mapping key and list item as a key path such as ('budgets', 1)).
    A syntax error or a key written twice in one mapping is a one-line RecipeError."""
    text = path.read_text(encoding="utf-8-sig")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise _syntax_error(path, err) from None
    lines: dict[tuple, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                key, line = str(key_node.value), key_node.start_mark.line + 1
                if key in seen:
                    dotted = ".".join(map(str, (*prefix, key)))
                    raise RecipeError(
                        f"{path}, line {line}: duplicate key {dotted!r} (also at line {seen[key]}); "
                        "YAML would keep only the last: write it once"
                    )
                seen[key] = line
                lines[(*prefix, key)] = line
                walk(value_node, (*prefix, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*prefix, i)] = item.start_mark.line + 1
                walk(item, (*prefix, i))

    walk(root, ())
    return data, lines


# ----------------------------------------------------------------------------------------------
# Training seeds and run folders
# ----------------------------------------------------------------------------------------------


def train_seeds(recipe: dict) -> list[int]:
    """The training seeds: the recipe's `seeds`, else its sampling `seed`."""
    return list(recipe.get("seeds") or [recipe.get("seed", 0)])


def run_folder(method: str, n: int, seed: int, seeds: list[int]) -> str:
    """<method>-<n> for a one-seed recipe (the folder name of runs made before training seeds
    existed), <method>-<n>-s<seed> for one of several training seeds."""
    return f"{method}-{n}" if len(seeds) == 1 else f"{method}-{n}-s{seed}"


def run_groups(recipe: dict) -> set[str]:
    """<method>-<n> for every method and budget: the runs that differ only in their training seed."""
    return {f"{m}-{n}" for m in recipe.get("methods") or [] for n in recipe.get("budgets") or []}


def run_folders(recipe: dict) -> list[tuple[str, int, int, str]]:
    """(method, budget, training seed, folder) for every trained run: training seed outermost, so a
    run stopped part-way holds every method and budget of its first seeds; then budget, then method."""
    seeds = train_seeds(recipe)
    return [
        (m, n, s, run_folder(m, n, s, seeds))
        for s in seeds
        for n in sorted(recipe.get("budgets") or [])
        for m in recipe.get("methods") or []
    ]


def judge_baseline_for(recipe: dict, seed: int | None) -> str | None:
    """The run folder a run of training seed `seed` (None: base-0) is judged against: a judge_baseline
    naming a run group is the same-seed run of that group when the recipe has several training seeds
    (base-0 takes the first seed's); base-0 or a seeded folder is one baseline for every run."""
    baseline = (recipe.get("evaluate") or {}).get("judge_baseline")
    seeds = train_seeds(recipe)
    if len(seeds) > 1 and baseline in run_groups(recipe):
        return f"{baseline}-s{seeds[0] if seed is None else seed}"
    return baseline


# ----------------------------------------------------------------------------------------------
# load_recipe
# ----------------------------------------------------------------------------------------------


class _Problems:
    """Collects one-line problems, each placed at the line of its key path."""

    def __init__(self, path: Path, lines: dict[tuple, int]):
        self.path, self.lines, self.items = path, lines, []

    def add(self, keys: tuple, message: str) -> None:
        line = next((self.lines[keys[:n]] for n in range(len(keys), 0, -1) if keys[:n] in self.lines), None)
        self.items.append(f"{self.path}, line {line}: {message}" if line else f"{self.path}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise RecipeError("\n".join(dict.fromkeys(self.items)))


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_problems(recipe: dict, problems: _Problems) -> None:
    try:
        RecipeSchema.model_validate(recipe)
    except ValidationError as err:
        for e in err.errors():
            loc, key = tuple(e["loc"]), e["loc"][0]
            if e["type"] == "missing":
                problems.add((), f"missing key {key!r} ({RECIPE_KEYS[key]})")
                continue
            value = recipe.get(key)
            if key in ("languages", "budgets", "methods", "seeds") and isinstance(value, str):
                got = f"the string {value!r}" + (f"; write [{value}]" if key == "languages" else "")
            else:
                got = repr(e["input"]) + (f" at {_dotted(loc)}" if len(loc) > 1 else "")
            problems.add(loc, f"{key}: expected {EXPECTED.get(key, e['msg'])}, got {got}")


def check_section(
    section: str, params: dict, notebooks: tuple[str, ...], problems: _Problems, keys: tuple | None = None
) -> None:
    """Every parameter is a parameter of one of `notebooks`, of its type and range, and not one the
    runner sets itself."""
    keys = keys or (section,)
    known = {}
    for nb in notebooks:
        for name, spec in notebook_parameters(nb).items():
            known.setdefault(name, (nb, spec["type"]))
    for param, value in params.items():
        where = (*keys, param)
        label = ".".join(map(str, where))
        if param not in known:
            problems.add(
                where, f"{label} is not a parameter of {' or '.join(notebooks)}; known: {', '.join(sorted(known))}"
            )
        elif param in RUNNER_PARAMETERS:
            problems.add(
                where,
                f"{label} is set by the runner for each stage; remove it"
                + (" (the recipe's top-level seed and seeds set it)" if param == "seed" else ""),
            )
        elif problem := parameter_problem(param, value, known[param][1]):
            problems.add(where, f"{label}: {problem} ({known[param][1]} parameter of {known[param][0]})")


def load_recipe(path: str | os.PathLike, languages: list[str] | None = None) -> dict:
    """Read and check a recipe: every key known, every value of its type and range, every
    parameter a notebook parameter. `languages` replaces the recipe's languages (the runner's
    --language). Relative paths are taken from the repository root."""
    from ..common.languages import get_language

    path = run_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} not found")
    recipe, lines = read_yaml(path)
    if recipe is None:
        recipe = {}
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping (key: value lines), got {type(recipe).__name__}")
    problems = _Problems(path, lines)
    for key in recipe:
        if key not in RECIPE_KEYS:
            problems.add((key,), f"unknown key {key!r}; known keys: {', '.join(RECIPE_KEYS)}")
    problems.raise_if_any()
    if languages:
        recipe["languages"] = list(languages)
        lines.pop(("languages",), None)
    recipe = {
        k: (v if v is not None or k in ("name", "languages") else RecipeSchema.model_fields[k].default)
        for k, v in recipe.items()
    }
    _schema_problems(recipe, problems)
    problems.raise_if_any()

    recipe.setdefault("budgets", [])
    recipe.setdefault("methods", [])
    for key in ("languages", "budgets", "methods", "seeds"):
        for i, item in enumerate(recipe.get(key) or []):
            if recipe[key].index(item) != i:
                problems.add((key, i), f"{key}: {item!r} is listed twice")
    if recipe["methods"] and not recipe["budgets"]:
        problems.add(("methods",), "methods need at least one budget under 'budgets'")
    for i, lang in enumerate(recipe["languages"]):
        try:
            get_language(lang)
        except ValueError as err:
            problems.add(("languages", i), f"{err}" if ("languages",) in lines else f"--language: {err}")
    for i, method in enumerate(recipe["methods"]):
        try:
            split_method(method)
        except ValueError as err:
            problems.add(("methods", i), str(err))
    gpu = recipe.get("gpu")
    if isinstance(gpu, dict) and gpu:
        from .gpu_memory import GPU_TYPES

        if gpu.get("type") is not None and gpu["type"] not in GPU_TYPES:
            problems.add(("gpu", "type"), f"gpu.type: unknown GPU type {gpu['type']!r}; known: {', '.join(GPU_TYPES)}")
        elif gpu.get("type") is None and (gpu.get("memory_gb") is None or gpu.get("bf16") is None):
            problems.add(("gpu",), "gpu: give a type (e.g. {type: t4}) or both memory_gb and bf16")
    for section, notebooks in SECTIONS.items():
        params = dict(recipe.get(section) or {})
        if section == "train" and "launch" in params:
            check_launch(params.pop("launch"), problems)
        check_section(section, params, notebooks, problems)
    for method, params in (recipe.get("method_params") or {}).items():
        try:
            _, notebook, _ = split_method(method)
        except ValueError as err:
            problems.add(("method_params", method), str(err))
            continue
        check_section(f"method_params.{method}", params or {}, (notebook,), problems, ("method_params", method))
    evaluate = recipe.get("evaluate") or {}
    if evaluate.get("judge_backend", "none") != "none":
        runs = {"base-0"} | run_groups(recipe) | {folder for *_, folder in run_folders(recipe)}
        if evaluate.get("judge_baseline") not in runs:
            problems.add(
                ("evaluate", "judge_baseline"),
                f"judge_baseline {evaluate.get('judge_baseline')!r} is not "
                f"a run of this recipe; one of {sorted(runs)}",
            )
    problems.raise_if_any()
    recipe["_path"] = str(path)
    recipe["_lines"] = lines
    return recipe
