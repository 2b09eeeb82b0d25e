"""The code a stage runs, as hashes: its notebook's code cells and every clo_utils file they import.

A stage's fingerprint covers this code, so a fix to `losses.py` or to the evaluation makes the stages
that import it stale. The files are found statically: the `import` statements of the notebook's code
cells, then of every clo_utils module reached, at module level or inside functions (a function runs
only when called, so the set is on the safe side: it can hold a module a stage never runs, never
miss one it imports by name), plus the `__init__.py` of every package on the way. Imports built
at run time from strings (importlib) are not followed; the kit has none.

Each file is hashed by its code, not its text: Python's syntax tree without comments, docstrings,
line numbers or layout. A comment, a docstring or a reformatting changes nothing a stage computes
and makes nothing stale; any change to a statement or an expression does. The `parameters` cell
is left out: the stage's parameters, the notebook's defaults included, are fingerprinted one by one.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

PACKAGE = "clo_utils"
PACKAGE_DIR = Path(__file__).resolve().parent.parent


def normalized_code(text: str) -> str:
    """The code of Python source as its syntax tree without docstrings, comments, line numbers or
    layout; source that does not parse (an IPython magic) is its text with comment lines dropped."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        lines = [line.rstrip() for line in text.splitlines()]
        return "\n".join(line for line in lines if line.strip() and not line.lstrip().startswith("#"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def code_hash(text: str) -> str:
    return hashlib.sha256(normalized_code(text).encode()).hexdigest()[:16]


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute dotted names a module's import statements may load: `from a import b` names both
    `a` and `a.b` (b may be a submodule)."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] if node.level > 1 else parts)
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names if alias.name != "*")
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


def _module_file(name: str, package_dir: Path) -> tuple[Path, bool] | None:
    """(file, is a package) of a clo_utils module name, or None when it names no module (an attribute)."""
    folder = package_dir.joinpath(*name.split(".")[1:])
    if (folder / "__init__.py").is_file():
        return folder / "__init__.py", True
    if folder.with_suffix(".py").is_file():
        return folder.with_suffix(".py"), False
    return None


def kit_files(modules: set[str], package_dir: Path = PACKAGE_DIR) -> dict[str, str]:
    """{module name: source text} of the clo_utils modules reached from `modules` through imports,
    with the packages holding them (importing a.b.c runs a/__init__.py and a/b/__init__.py)."""
    found: dict[str, str] = {}
    todo = sorted(modules)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) not in found]
        if name in found or (where := _module_file(name, package_dir)) is None:
            continue
        path, is_package = where
        found[name] = text = path.read_text(encoding="utf-8")
        try:
            tree = ast.parse(text)
        except SyntaxError as err:
            raise SyntaxError(f"{path}: {err}") from None
        todo += sorted(_imported(tree, name, is_package) - set(found))
    return found


def notebook_code_cells(path: Path) -> list[str]:
    """The source of a notebook's code cells, the `parameters` cell left out."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [
        "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        for c in cells
        if c.get("cell_type") == "code" and "parameters" not in (c.get("metadata") or {}).get("tags", [])
    ]


def _cell_imports(source: str) -> set[str]:
    # Cells may hold IPython magics: those lines are dropped before parsing.
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        return _imported(ast.parse("\n".join(lines)), "__main__", False)
    except SyntaxError:
        return set()


def stage_code(notebook_path: Path, package_dir: Path = PACKAGE_DIR) -> dict[str, str]:
    """{file, relative to the checkout: code hash} for the notebook's code cells and every clo_utils
    file they import: what `code_changes` compares between a stage's record and the code now."""
    cells = notebook_code_cells(notebook_path)
    modules = set().union(*(_cell_imports(c) for c in cells)) if cells else set()
    hashes = {f"notebooks/{notebook_path.name}": code_hash("\n\n".join(cells))}
    for name, text in kit_files(modules, package_dir).items():
        path, _ = _module_file(name, package_dir)
        hashes[f"{PACKAGE}/{path.relative_to(package_dir).as_posix()}"] = code_hash(text)
    return dict(sorted(hashes.items()))


def code_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """The files whose code differs, that are new, or that are no longer imported."""
    return sorted(f for f in set(old) | set(new) if old.get(f) != new.get(f))
