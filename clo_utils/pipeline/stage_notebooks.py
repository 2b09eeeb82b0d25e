"""The stage notebooks: their names and folder, their typed `parameters` cells (papermill's own
inference) and the values each parameter accepts."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NB_DATA, NB_EVAL, NB_ANALYSIS = "01_translate_data", "04_evaluate", "05_analysis"

# Ranges of notebook parameters whose type alone allows nonsense: name -> (lowest, lowest allowed?, highest).
PARAMETER_RANGES = {
    **dict.fromkeys(
        (
            "learning_rate",
            "num_train_epochs",
            "batch_seeds",
            "max_length",
            "gradient_accumulation_steps",
            "lora_r",
            "beta",
            "dpo_beta",
            "n_eval",
            "max_new_tokens",
            "max_prompt_tokens",
            "max_response_tokens",
            "apertium_procs",
        ),
        (0, False, None),
    ),
    **dict.fromkeys(
        (
            "warmup",
            "save_steps",
            "dpo_learning_rate",
            "dpo_epochs",
            "batch_size",
            "max_prompts",
            "min_words",
            "translate_margin",
            "knowledge_limit",
        ),
        (0, True, None),
    ),
    "lam": (0, True, 1),
}
# Text parameters that take one of a few values ("" where the notebook picks a default).
PARAMETER_CHOICES = {"language_id": ("", "lingua", "fasttext")}
_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "list": "a list",
    "dict": "a mapping",
}
_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,), "dict": (dict,)}


@functools.cache
def _notebook_parameters(name: str) -> tuple[tuple[str, str, str], ...]:
    import papermill

    path = NOTEBOOKS_DIR / f"{name}.ipynb"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the batch runner executes the notebooks of a checkout, and an installed "
            "wheel carries the package only. Clone the repository and run `python -m clo_utils.pipeline "
            "RECIPE.yaml` from the clone's root (or run the notebooks one by one with papermill)."
        )
    params = papermill.inspect_notebook(str(path))
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
    if param in PARAMETER_CHOICES and value not in PARAMETER_CHOICES[param]:
        return f"expected one of {' | '.join(repr(c) for c in PARAMETER_CHOICES[param])}, got {value!r}"
    return None
