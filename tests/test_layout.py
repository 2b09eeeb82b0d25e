"""The package layout: the method at the top, machinery in folders that import only earlier ones."""

import ast
from pathlib import Path

import clo_utils

PACKAGE = Path(clo_utils.__file__).resolve().parent
# Import order of the layers: each may import itself and any layer before it, never one after.
LAYERS = ("common", "core", "translation", "evaluation", "analysis", "pipeline")


def layer_of(module: str) -> str:
    """'clo_utils.evaluation.metrics' -> 'evaluation'; a top-level module -> 'core'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else "core"


def module_name(path: Path) -> str:
    return ".".join(("clo_utils", *path.relative_to(PACKAGE).with_suffix("").parts))


def existing_modules() -> set[str]:
    return {module_name(p) for p in PACKAGE.rglob("*.py")} | {
        ".".join(("clo_utils", *p.parent.relative_to(PACKAGE).parts)) for p in PACKAGE.rglob("__init__.py")
    }


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every clo_utils module that `source` (module `module`) imports: relative imports resolved, lazy ones too."""
    own = module.split(".")
    package = own if is_package else own[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            if target.startswith("clo_utils"):
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("clo_utils"))
    existing = existing_modules()
    return {m for m in found if m in existing and m != "clo_utils"}


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    here = layer_of(module)
    return [
        f"{module} ({here}) imports {target} ({layer_of(target)})"
        for target in sorted(imported_modules(source, module, is_package))
        if LAYERS.index(layer_of(target)) > LAYERS.index(here)
    ]


def test_no_module_imports_a_later_layer() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        upward += upward_imports(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
    assert upward == []


def test_the_check_finds_upward_imports_relative_absolute_and_lazy() -> None:
    lazy = "def f():\n    from ..analysis import tables\n"
    assert upward_imports(lazy, "clo_utils.evaluation.metrics") == [
        "clo_utils.evaluation.metrics (evaluation) imports clo_utils.analysis.tables (analysis)"
    ]
    assert upward_imports("from clo_utils.pipeline.runs import save_run\n", "clo_utils.train") == [
        "clo_utils.train (core) imports clo_utils.pipeline.runs (pipeline)"
    ]
    assert upward_imports("from .translation import seeds\n", "clo_utils.data") != []
    assert upward_imports("from ..common.text import count_words\n", "clo_utils.evaluation.metrics") == []
    assert upward_imports("from .metrics import DIRECTIONS\n", "clo_utils.evaluation.judge") == []


def test_the_method_sits_at_the_top_and_the_machinery_in_five_folders() -> None:
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == sorted(LAYERS[:1] + LAYERS[2:])
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert {"data", "losses", "train", "train_config", "reference", "models"} <= top
    for folder in folders:  # each folder says what it holds
        assert ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text(encoding="utf-8")))
