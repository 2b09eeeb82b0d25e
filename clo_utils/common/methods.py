"""The methods the kit trains and reports: one table read by the batch runner, the figures and the report.

A method name in a recipe is a row of METHODS, optionally with a trainable-set suffix
(`clo_full` is `clo` with trainable="full"). A run folder is `<method>-<n_seeds>` (docs/run-layout.md).
Adding a method means adding one row here (and, for a new training notebook, the notebook).

Colours are indices into seaborn's "colorblind" palette, so this table needs no plotting library
and CLO is the same orange in every figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NB_SFT, NB_CLO = "02_sft_baseline", "03_clo_training"
PALETTE = "colorblind"  # seaborn palette the colour indices refer to
FALLBACK_COLOUR_INDICES = (6, 8, 1)  # for method names outside the table, in order of appearance
TRAINABLE_SUFFIXES = {"_full": "full", "_lora": "lora", "_attention": "attention"}


@dataclass(frozen=True)
class Method:
    name: str
    notebook: str | None  # the notebook that trains it; None: evaluated only, or not trained by the kit
    fixed: dict = field(default_factory=dict)  # notebook parameters the method fixes
    label: str = ""  # name in legends and tables
    colour_index: int = 0  # index into the seaborn "colorblind" palette
    family: str = ""  # "base", "sft", "dpo" or "clo": the kind of training


# In legend and table order: the untouched model, the SFT family, the preference baselines, then CLO.
METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("base", None, {}, "untouched model", 7, "base"),
        Method("sft_en", NB_SFT, {"variant": "en"}, "SFT-en", 9, "sft"),
        Method("sft_tgt", NB_SFT, {"variant": "tgt"}, "SFT-tgt", 2, "sft"),
        Method("sft", NB_SFT, {"variant": "both"}, "SFT", 0, "sft"),
        Method("sft_dpo", NB_SFT, {"variant": "both", "then_dpo": True}, "SFT+DPO", 4, "dpo"),
        Method("dpo", None, {}, "DPO", 4, "dpo"),
        Method("clo", NB_CLO, {}, "CLO", 3, "clo"),
        Method("clo_nll_both", NB_CLO, {"nll_on": "both"}, "CLO (NLL on both)", 5, "clo"),
    ]
}
METHOD_ORDER = tuple(METHODS)
TRAINED_METHODS = tuple(name for name, m in METHODS.items() if m.notebook)


def split_method(name: str) -> tuple[str, str, dict]:
    """'clo_full' -> ('clo', notebook, {'trainable': 'full'}): the method a recipe asks to train,
    its notebook and the parameters it fixes. Unknown or untrainable names are a clear error."""
    base, trainable = name, None
    for suffix, value in TRAINABLE_SUFFIXES.items():
        if name.endswith(suffix) and name[: -len(suffix)] in METHODS:
            base, trainable = name[: -len(suffix)], value
            break
    method = METHODS.get(base)
    if method is None or method.notebook is None:
        raise ValueError(
            f"unknown method {name!r}; known: {sorted(TRAINED_METHODS)} with optional suffixes "
            f"{sorted(TRAINABLE_SUFFIXES)}"
        )
    fixed = dict(method.fixed)
    if trainable is not None:
        fixed["trainable"] = trainable
    return base, method.notebook, fixed


def method_family(name: str, trainable: str | None = None) -> str:
    """The table row a run belongs to: `clo_full` trained with trainable=full is `clo` (the ablation's
    naming); `-` also separates the suffix. Names outside the table come back unchanged."""
    for separator in ("_", "-"):
        suffix = f"{separator}{trainable}"
        if trainable and name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def method_label(name: str) -> str:
    """The legend label: the table's label, with the trainable set for a suffixed name ('CLO (full)')."""
    if name in METHODS:
        return METHODS[name].label
    for suffix, trainable in TRAINABLE_SUFFIXES.items():
        if name.endswith(suffix) and name[: -len(suffix)] in METHODS:
            return f"{METHODS[name[: -len(suffix)]].label} ({trainable})"
    return name
