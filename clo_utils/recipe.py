"""Recipes: a YAML file read into a checked dict, and the pre-flight check of everything a recipe
needs before any stage runs.

`load_recipe` checks what the file says: YAML syntax, duplicate keys, known keys, the type and
range of every value (a pydantic schema for the recipe's own keys, the notebooks' typed
`parameters` cells for the rest), languages and methods. `preflight` checks what the recipe
needs from the machine: a translator for each language, every model id, the hub when a model
lives there, and enough English rows for the largest budget plus the held-out set. Every problem
is one line that names the file, the line and the key, and what is expected.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .methods import NB_CLO, NB_SFT, TRAINABLE_SUFFIXES, TRAINED_METHODS, split_method
from .runfiles import repo_root, run_path

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NB_DATA, NB_EVAL, NB_ANALYSIS = "01_translate_data", "04_evaluate", "05_analysis"

RECIPE_KEYS = {
    "name": "recipe name: outputs go to <runs_root>/<name>/",
    "description": "one line on what the recipe is for",
    "runs_root": "folder holding every recipe's runs (default: runs, from the repository root)",
    "languages": "target languages (ISO codes), a list such as [ca, es]",
    "budgets": "seed budgets, a list of positive integers (nested: smaller budgets are prefixes of the largest)",
    "methods": f"methods to train: {sorted(TRAINED_METHODS)} (+ {' / '.join(TRAINABLE_SUFFIXES)} suffixes)",
    "seed": "random seed of every stage",
    "jobs": "languages run side by side in separate processes (threads are split between them)",
    "data": f"parameters of {NB_DATA}",
    "train": f"parameters shared by {NB_SFT} and {NB_CLO}",
    "method_params": "per-method parameter overrides: {method: {param: value}}",
    "evaluate": f"parameters of {NB_EVAL}",
    "analysis": f"parameters of {NB_ANALYSIS}",
}
SECTIONS = {"data": (NB_DATA,), "train": (NB_SFT, NB_CLO), "evaluate": (NB_EVAL,), "analysis": (NB_ANALYSIS,)}
# Notebook parameters the runner sets for every stage: a recipe that sets them would be overridden.
RUNNER_PARAMETERS = ("language", "output_dir", "data_dir", "run_dirs", "runs_root", "n_seeds", "method", "recipe",
                     "seed", "num_threads")
# What each top-level value must be, in the words an error message uses.
EXPECTED = {
    "name": "a folder name (letters, digits, '-', '_', '.')",
    "description": "one line of text",
    "runs_root": "a folder path",
    "languages": "a list of language codes, e.g. [ca, es]",
    "budgets": "a list of positive integers, e.g. [50, 100]",
    "methods": "a list of method names, e.g. [sft, clo]",
    "seed": "an integer >= 0",
    "jobs": "an integer >= 1",
    "data": "a mapping of notebook parameters (param: value lines)",
    "train": "a mapping of notebook parameters (param: value lines)",
    "evaluate": "a mapping of notebook parameters (param: value lines)",
    "analysis": "a mapping of notebook parameters (param: value lines)",
    "method_params": "a mapping {method: {param: value}}",
}
# Ranges of notebook parameters whose type alone allows nonsense: name -> (lowest, lowest allowed?, highest).
PARAMETER_RANGES = {
    **{name: (0, False, None) for name in ("learning_rate", "num_train_epochs", "batch_seeds", "max_length",
                                           "gradient_accumulation_steps", "lora_r", "beta", "dpo_beta", "n_eval",
                                           "max_new_tokens", "max_prompt_tokens", "max_response_tokens",
                                           "apertium_procs")},
    **{name: (0, True, None) for name in ("warmup", "save_steps", "batch_size", "max_prompts", "min_words",
                                          "translate_margin", "knowledge_limit")},
    "lam": (0, True, 1),
}
_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
               "list": "a list", "dict": "a mapping"}
_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,), "dict": (dict,)}

PositiveInt = Annotated[int, Field(gt=0, strict=True)]
Section = dict[str, Any]


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
    jobs: PositiveInt = 1
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
                    raise RecipeError(f"{path}, line {line}: duplicate key {dotted!r} (also at line {seen[key]}); "
                                      "YAML would keep only the last: write it once")
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
# Notebook parameters
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _notebook_parameters(name: str) -> tuple[tuple[str, str, str], ...]:
    import papermill

    params = papermill.inspect_notebook(str(NOTEBOOKS_DIR / f"{name}.ipynb"))
    return tuple((k, v["inferred_type_name"], v["default"]) for k, v in params.items())


def notebook_parameters(name: str) -> dict[str, dict]:
    """The typed parameters of a notebook's `parameters` cell (papermill's own inference):
    name -> {"type": "int" | "float" | "str" | "bool" | "list" | ..., "default": python literal text}."""
    return {k: {"type": t, "default": d} for k, t, d in _notebook_parameters(name)}


def notebook_default(notebook: str, param: str) -> Any:
    """A parameter's default value as the notebook writes it ("'ca'" -> 'ca')."""
    import ast

    text = notebook_parameters(notebook)[param]["default"]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parameter_problem(param: str, value: Any, type_name: str) -> str | None:
    """What is wrong with `value` for a notebook parameter of type `type_name`, or None."""
    allowed = _TYPES.get(type_name)
    if allowed is not None:
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            return f"expected {_TYPE_WORDS[type_name]}, got {value!r}"
    if param in PARAMETER_RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
        low, inclusive, high = PARAMETER_RANGES[param]
        if value != value or (value < low if inclusive else value <= low) or (high is not None and value > high):
            bound = f"{'>=' if inclusive else '>'} {low}" + (f" and <= {high}" if high is not None else "")
            return f"expected a value {bound}, got {value!r}"
    return None


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
            if key in ("languages", "budgets", "methods") and isinstance(value, str):
                got = f"the string {value!r}" + (f"; write [{value}]" if key == "languages" else "")
            else:
                got = repr(e["input"]) + (f" at {_dotted(loc)}" if len(loc) > 1 else "")
            problems.add(loc, f"{key}: expected {EXPECTED.get(key, e['msg'])}, got {got}")


def check_section(section: str, params: dict, notebooks: tuple[str, ...], problems: _Problems,
                  keys: tuple | None = None) -> None:
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
            problems.add(where, f"{label} is not a parameter of {' or '.join(notebooks)}; "
                                f"known: {', '.join(sorted(known))}")
        elif param in RUNNER_PARAMETERS:
            problems.add(where, f"{label} is set by the runner for each stage; remove it"
                                + (" (the recipe's top-level seed sets it)" if param == "seed" else ""))
        elif problem := parameter_problem(param, value, known[param][1]):
            problems.add(where, f"{label}: {problem} ({known[param][1]} parameter of {known[param][0]})")


def load_recipe(path: str | os.PathLike, languages: list[str] | None = None) -> dict:
    """Read and check a recipe: every key known, every value of its type and range, every
    parameter a notebook parameter. `languages` replaces the recipe's languages (the runner's
    --language). Relative paths are taken from the repository root."""
    from .languages import get_language

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
    recipe = {k: (v if v is not None or k in ("name", "languages") else RecipeSchema.model_fields[k].default)
              for k, v in recipe.items()}
    _schema_problems(recipe, problems)
    problems.raise_if_any()

    recipe.setdefault("budgets", [])
    recipe.setdefault("methods", [])
    for key in ("languages", "budgets", "methods"):
        for i, item in enumerate(recipe[key]):
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
    for section, notebooks in SECTIONS.items():
        check_section(section, recipe.get(section) or {}, notebooks, problems)
    for method, params in (recipe.get("method_params") or {}).items():
        try:
            _, notebook, _ = split_method(method)
        except ValueError as err:
            problems.add(("method_params", method), str(err))
            continue
        check_section(f"method_params.{method}", params or {}, (notebook,), problems, ("method_params", method))
    evaluate = recipe.get("evaluate") or {}
    if evaluate.get("judge_backend", "none") != "none":
        runs = {"base-0"} | {f"{m}-{n}" for m in recipe["methods"] for n in recipe["budgets"]}
        if evaluate.get("judge_baseline") not in runs:
            problems.add(("evaluate", "judge_baseline"), f"judge_baseline {evaluate.get('judge_baseline')!r} is not "
                                                         f"a run of this recipe; one of {sorted(runs)}")
    problems.raise_if_any()
    recipe["_path"] = str(path)
    recipe["_lines"] = lines
    return recipe


# ----------------------------------------------------------------------------------------------
# Pre-flight: translators, models, the hub, data size
# ----------------------------------------------------------------------------------------------


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=1)
def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be used now, or None: HF_HUB_OFFLINE set, or no HTTP answer
    from the endpoint within `timeout` seconds (name lookup included)."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    outcome: list[BaseException | None] = []

    def probe():
        import httpx

        try:
            httpx.head(endpoint, timeout=timeout)
            outcome.append(None)
        except Exception as err:  # any transport failure means: not reachable
            outcome.append(err)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if not outcome:
        return f"{endpoint} did not answer within {timeout:.0f} s"
    if outcome[0] is not None:
        return f"{endpoint} is not reachable ({outcome[0].__class__.__name__})"
    return None


def _hub_cached(repo_id: str, repo_type: str = "model") -> bool:
    from huggingface_hub import try_to_load_from_cache

    filename = "config.json" if repo_type == "model" else "README.md"
    try:
        return isinstance(try_to_load_from_cache(repo_id, filename, repo_type=repo_type), str)
    except Exception:  # an id that is not a valid repo name is not in the cache either
        return False


def is_local_path(model_id: str) -> bool:
    text = str(model_id)
    return text.startswith(("/", ".", "~")) or Path(text).expanduser().exists() or run_path(text).exists()


def model_kind(model_id: str) -> str:
    """"embedded", "local" or "hub"."""
    if str(model_id).startswith("embedded:"):
        return "embedded"
    return "local" if is_local_path(model_id) else "hub"


def check_model_id(model_id: str, label: str) -> str:
    """One line saying where `model_id` comes from; a model that cannot be had raises RecipeError."""
    from .models import EMBEDDED_MODELS

    kind = model_kind(model_id)
    if kind == "embedded":
        spec = EMBEDDED_MODELS.get(model_id)
        if spec is None:
            raise RecipeError(f"{label}: unknown embedded model {model_id!r}; known: {', '.join(EMBEDDED_MODELS)}")
        if importlib.util.find_spec(spec["package"]) is None:
            raise RecipeError(f"{label}: {model_id} needs the PyPI package {spec['package']!r}: {spec['pip']}")
        return f"{label}: {model_id} (embedded, package {spec['package']} installed)"
    if kind == "local":
        found = [p for p in (Path(model_id).expanduser(), run_path(model_id)) if p.is_dir()]
        if not found:
            raise RecipeError(f"{label}: {model_id!r} looks like a local folder but no such folder exists")
        return f"{label}: {found[0]} (local folder)"
    offline = hub_unreachable()
    if offline is None:
        return f"{label}: {model_id} (hub)"
    if _hub_cached(model_id):
        return f"{label}: {model_id} (hub, in the local cache; {offline})"
    raise RecipeError(f"{label}: {model_id!r} is a hub id and the hub cannot be used ({offline}), and it is not in "
                      f"the local cache: on a machine with network run `hf download {model_id}` and copy "
                      "~/.cache/huggingface/hub here, or set it to a local folder or an embedded: model")


def _value(recipe: dict, section: str, param: str, notebook: str, method: str | None = None) -> Any:
    if method is not None and param in ((recipe.get("method_params") or {}).get(method) or {}):
        return recipe["method_params"][method][param]
    if param in (recipe.get(section) or {}):
        return recipe[section][param]
    return notebook_default(notebook, param)


def recipe_models(recipe: dict) -> dict[str, str]:
    """label -> model id, for every model the recipe loads (training, evaluation, data tokenizer)."""
    models = {}
    if recipe["budgets"] and recipe["methods"]:
        for method in recipe["methods"]:
            _, notebook, _ = split_method(method)
            overrides = (recipe.get("method_params") or {}).get(method) or {}
            where = f"method_params.{method}" if "model_id" in overrides else "train"
            models.setdefault(f"{where}.model_id", _value(recipe, "train", "model_id", notebook, method))
    models["evaluate.base_model_id"] = _value(recipe, "evaluate", "base_model_id", NB_EVAL)
    tokenizer_id = _value(recipe, "data", "tokenizer_id", NB_DATA)
    if tokenizer_id:
        models["data.tokenizer_id"] = tokenizer_id
    return models


def uses_only_offline_models(recipe: dict) -> bool:
    """True when every model and the data source need no hub: the runner then sets HF_HUB_OFFLINE
    for its stages, so nothing waits on network retries."""
    from .translate import BACKENDS

    if any(model_kind(m) == "hub" for m in recipe_models(recipe).values()):
        return False
    translator = _value(recipe, "data", "translator", NB_DATA)
    if translator != "apertium" and translator in BACKENDS:
        model = _value(recipe, "data", "translator_model", NB_DATA)
        if not model or model_kind(model) == "hub":
            return False
    source = _value(recipe, "data", "data_source", NB_DATA)
    return source in ("default", "smoke") or is_local_path(source)


def _line_of(recipe: dict, *keys) -> str:
    lines = recipe.get("_lines") or {}
    line = next((lines[keys[:n]] for n in range(len(keys), 0, -1) if keys[:n] in lines), None)
    return f"{recipe['_path']}, line {line}" if line else recipe["_path"]


def check_translator(recipe: dict) -> list[str]:
    """The translator builds for every language (Apertium: its pair installed; M2M100/NLLB: a code
    for the language); its model id, when it has one, resolves."""
    from .translate import TranslatorError, get_translator

    translator = _value(recipe, "data", "translator", NB_DATA)
    model = _value(recipe, "data", "translator_model", NB_DATA) or None
    where = _line_of(recipe, "data", "translator")
    out = []
    for lang in recipe["languages"]:
        options = {"n_procs": 1} if translator == "apertium" else {"device": "cpu"}
        try:
            mt = get_translator(translator, lang, model=model, **options)
        except (TranslatorError, ValueError) as err:
            raise RecipeError(f"{where}: data.translator {translator!r} cannot translate English -> {lang}: "
                              f"{err}") from None
        out.append(f"translator {lang}: {mt.label}")
        model_id = getattr(mt, "model_id", None)
        if model_id:
            try:
                out.append(check_model_id(model_id, f"data.translator_model ({lang})"))
            except RecipeError as err:
                raise RecipeError(f"{where}: {err}") from None
    return out


def resolve_data_source(source: str) -> str:
    if source == "default":
        from . import data

        return data.default_data_source()
    return source


def check_data_size(recipe: dict) -> str:
    """The English rows left after dedup and the token-length filter cover the largest budget plus
    the held-out set. Hub datasets are counted by the data stage (a download)."""
    from .data import LOCAL_SUFFIXES, OASST_SOURCES, SMOKE_SOURCE, prepare_english_rows

    source = resolve_data_source(_value(recipe, "data", "data_source", NB_DATA))
    n_eval = _value(recipe, "data", "n_eval", NB_DATA)
    need_train = max(recipe["budgets"]) if recipe["budgets"] else _value(recipe, "data", "n_seeds", NB_DATA)
    local = source == SMOKE_SOURCE or Path(source).suffix.lower() in LOCAL_SUFFIXES or run_path(source).exists()
    where = _line_of(recipe, "data", "data_source")
    if not local:
        repo = "OpenAssistant/oasst1" if source in OASST_SOURCES else source
        offline = hub_unreachable()
        if offline and not _hub_cached(repo, "dataset"):
            not_a_file = "" if source in OASST_SOURCES else (f" is not a file ({run_path(source)}) and, read as a "
                                                             "hub dataset,")
            raise RecipeError(f"{where}: data.data_source {source!r}{not_a_file} needs the hub, which cannot be used "
                              f"({offline}), and it is not in the local cache: "
                              f"give a .jsonl/.json/.csv/.parquet file, or on a machine with network run "
                              f"`hf download --repo-type dataset {repo}` and copy ~/.cache/huggingface/hub here")
        return (f"data: {source} (hub dataset: its rows are counted by the data stage); the recipe needs "
                f"{need_train} training + {n_eval} held-out = {need_train + n_eval}")
    if source != SMOKE_SOURCE:
        source = str(run_path(source))
        if not Path(source).is_file():
            raise RecipeError(f"{where}: data.data_source: no such file: {source}")
    tokenizer_id = _value(recipe, "data", "tokenizer_id", NB_DATA)
    max_prompt = _value(recipe, "data", "max_prompt_tokens", NB_DATA)
    max_response = _value(recipe, "data", "max_response_tokens", NB_DATA)
    tokenizer = None
    if tokenizer_id:
        from .models import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_id, require_chat_template=False)
    has_column_map = "column_map" in notebook_parameters(NB_DATA)
    column_map = _value(recipe, "data", "column_map", NB_DATA) if has_column_map else None
    try:
        rows, counts = prepare_english_rows(source, tokenizer, max_prompt, max_response,
                                            **({"column_map": column_map} if column_map else {}))
        have = len(rows)
    except ValueError as err:
        if "longer than" not in str(err):
            raise RecipeError(f"{where}: data.data_source: {err}") from None
        have, counts = 0, {}
    limits = (f"max_prompt_tokens={max_prompt}, max_response_tokens={max_response} in {tokenizer_id} tokens"
              if tokenizer_id else "no length filter")
    need = need_train + n_eval
    if have < need:
        raise RecipeError(f"{_line_of(recipe, 'budgets')}: the data holds too few rows: {source} has {have:,} rows "
                          f"after dedup and the token-length filter ({limits}); the recipe needs {need_train:,} "
                          f"training (largest budget) + {n_eval:,} held-out (data.n_eval) = {need:,}. Lower the "
                          "budgets or n_eval, raise the token limits, or use a larger data_source")
    return (f"data: {source}: {have:,} rows after dedup and the token-length filter ({limits}); the recipe needs "
            f"{need_train:,} training + {n_eval:,} held-out = {need:,}")


def preflight(recipe: dict, needs: tuple[str, ...] = ("data", "train", "eval")) -> list[str]:
    """What the stages about to run need from this machine, checked before any of them runs; returns
    one line per check (printed by the runner), raises RecipeError on the first that fails.
    `needs`: the stage kinds that will run ("data": translator and data size; "train": training
    models; "eval": the evaluated base model)."""
    out = []
    for label, model_id in recipe_models(recipe).items():
        kind = {"data": "data", "evaluate": "eval"}.get(label.split(".", 1)[0], "train")
        if kind not in needs:
            continue
        section, param = label.rsplit(".", 1)
        keys = (*section.split(".", 1), param)
        try:
            out.append(check_model_id(model_id, label))
        except RecipeError as err:
            raise RecipeError(f"{_line_of(recipe, *keys)}: {err}") from None
    if "data" in needs:
        out += check_translator(recipe)
        out.append(check_data_size(recipe))
    return out
