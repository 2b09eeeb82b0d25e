"""Publish the executed notebooks of one demo chain under docs/notebooks/, so GitHub shows the work.

    python scripts/publish_notebooks.py                 # = make publish-notebooks: runs/demo, Catalan, 100 seeds
    python scripts/publish_notebooks.py --check         # compare docs/notebooks/ with notebooks/, change nothing

The chain is one language's data (01), SFT and CLO at one budget (02, 03), the evaluation of that CLO
run (04) and the analysis of the whole recipe (05), each the copy the batch runner executed and kept
(docs/run-layout.md). Outputs and images stay inline; what only bloats a page goes: widget state,
progress-bar redraws (a carriage return keeps the last redraw of a line), the middle of very long
outputs, execution timestamps and the machine's absolute paths. Markdown links are rewritten for the
new folder, and a first cell names the source notebook and the run folder.

The code cells of a published copy stay those of its source notebook, apart from papermill's
`injected-parameters` cell (the run's own parameters): `--check`, and tests/pipeline/test_published_notebooks.py,
refuse copies whose code has drifted from notebooks/. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = ROOT / "notebooks"
PUBLISHED_DIR = ROOT / "docs" / "notebooks"
# notebook -> its run folder under the runs root ({lang}, {n}: the language and the budget)
CHAIN = {
    "01_translate_data": "{lang}/data",
    "02_sft_baseline": "{lang}/sft-{n}",
    "03_clo_training": "{lang}/clo-{n}",
    "04_evaluate": "{lang}/clo-{n}",
    "05_analysis": ".",
}
WHAT = {
    "01_translate_data": "the data folder of `{lang}`",
    "02_sft_baseline": "SFT on {n} seeds",
    "03_clo_training": "CLO on {n} seeds",
    "04_evaluate": "the evaluation of CLO on {n} seeds",
    "05_analysis": "the analysis of the whole recipe",
}
INJECTED = "injected-parameters"  # papermill's tag on the cell it adds after `parameters`
HEADER = "published-header"  # the tag of the cell this script puts first
LIMIT_BYTES = 2_000_000  # all published notebooks together
MAX_LINES = 60  # a longer text output keeps its first HEAD and last TAIL lines
HEAD, TAIL = 40, 15
MAX_MARKDOWN_LINES = 600  # a rendered report (05 shows REPORT.md) is what the reader came for: cut only beyond this
MAX_HTML = 40_000  # a longer HTML output (a wide table) keeps only its text/plain form
DROPPED_MIME = ("application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json")
HOME_RE = re.compile(r"(?<![\w.~-])(?:/home|/Users)/[^/\s\"']+|(?<![\w.~-])/root(?=/)")
LINK_RE = re.compile(r"(\]\(|<img [^>]*src=\"|<a [^>]*href=\")([^)\"\s]+)")


class PublishError(Exception):
    pass


def code_cells(notebook: dict) -> list[str]:
    """The source of every code cell but papermill's injected-parameters cell, in order."""
    return [
        _text(cell["source"])
        for cell in notebook["cells"]
        if cell["cell_type"] == "code" and INJECTED not in cell.get("metadata", {}).get("tags", [])
    ]


def drift(published: Path, source: Path) -> list[str]:
    """What differs between the code cells of a published copy and its source notebook ([] when none)."""
    return _code_drift(published.name, _read(published), _read(source))


def check(published_dir: Path = PUBLISHED_DIR, source_dir: Path = SOURCE_DIR) -> list[str]:
    """Every notebook of the chain present in `published_dir`, each with the code of its source."""
    problems = []
    for name in CHAIN:
        path = published_dir / f"{name}.ipynb"
        if not path.exists():
            problems.append(f"{path}: missing (run `make demo`, then `make publish-notebooks`)")
        else:
            problems += drift(path, source_dir / f"{name}.ipynb")
    extra = sorted(p.name for p in published_dir.glob("*.ipynb") if p.stem not in CHAIN)
    problems += [f"{published_dir / name}: not a notebook of the chain {list(CHAIN)}" for name in extra]
    return problems


def executed_paths(runs_root: Path, lang: str, n_seeds: int) -> dict[str, Path]:
    """notebook name -> the executed copy the batch runner kept for it."""
    paths = {name: runs_root / folder.format(lang=lang, n=n_seeds) / f"{name}.ipynb" for name, folder in CHAIN.items()}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise PublishError(
            f"no executed notebook at {', '.join(missing)}: run the recipe first (`make demo` writes runs/demo), "
            "or name another with --runs / --lang / --seeds"
        )
    return paths


def publish(
    runs_root: Path,
    lang: str = "ca",
    n_seeds: int = 100,
    out_dir: Path = PUBLISHED_DIR,
    source_dir: Path = SOURCE_DIR,
    limit_bytes: int = LIMIT_BYTES,
) -> dict[str, int]:
    """Write the cleaned copies into `out_dir`; returns {file name: bytes}. Nothing is written when a
    copy's code differs from its source (rerun the recipe) or the copies together exceed `limit_bytes`."""
    texts = {}
    for name, path in executed_paths(runs_root, lang, n_seeds).items():
        notebook = clean(_read(path), path, out_dir, source_dir, name)
        rel_run = posixpath.normpath(f"{_repo_relative(runs_root)}/{CHAIN[name].format(lang=lang, n=n_seeds)}")
        header = (
            f"*Executed copy of [`notebooks/{name}.ipynb`]({_relative(source_dir / f'{name}.ipynb', out_dir)}): "
            f"{WHAT[name].format(lang=lang, n=n_seeds)}, as the batch runner ran it in `{rel_run}/` "
            "(`make publish-notebooks` refreshes it). Its code cells are the source's; the cell tagged "
            "`injected-parameters` holds the run's parameters, and long outputs are shortened.*"
        )
        notebook["cells"].insert(0, {"cell_type": "markdown", "id": "published", "metadata": {"tags": [HEADER]},
                                     "source": header.splitlines(keepends=True)})  # fmt: skip
        texts[name] = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
    problems = [
        p
        for name, text in texts.items()
        for p in _code_drift(name, json.loads(text), _read(source_dir / f"{name}.ipynb"))
    ]
    if problems:
        raise PublishError(
            "the executed notebooks are not those of notebooks/ (rerun the recipe):\n  " + "\n  ".join(problems)
        )
    sizes = {f"{name}.ipynb": len(text.encode("utf-8")) for name, text in texts.items()}
    if sum(sizes.values()) > limit_bytes:
        raise PublishError(f"{sum(sizes.values()):,} bytes in all, over the {limit_bytes:,} limit: {sizes}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (out_dir / f"{name}.ipynb").write_text(text, encoding="utf-8")
    return sizes


def clean(notebook: dict, path: Path, out_dir: Path, source_dir: Path, name: str) -> dict:
    """The executed notebook without what only bloats a page or names the machine, links fixed for `out_dir`
    (a line of markdown that links the published copy itself goes: the copy is what the reader has open)."""
    itself = _relative(out_dir / f"{name}.ipynb", source_dir)
    roots = _machine_roots(notebook, path)
    notebook["metadata"].pop("widgets", None)
    papermill = notebook["metadata"].pop("papermill", None) or {}
    if "parameters" in papermill:  # the run's parameters, with paths relative to the repository
        parameters = json.loads(_strip_roots(json.dumps(papermill["parameters"]), roots))
        notebook["metadata"]["papermill"] = {"parameters": parameters}
    for cell in notebook["cells"]:
        cell.get("metadata", {}).pop("papermill", None)
        cell.get("metadata", {}).pop("execution", None)
        if cell["cell_type"] == "markdown":
            lines = [line for line in _split(_text(cell["source"])) if f"]({itself})" not in line]
            cell["source"] = _split(_relink("".join(lines), source_dir, out_dir))
        if cell["cell_type"] == "code":
            if INJECTED in cell.get("metadata", {}).get("tags", []):
                cell["source"] = _split(_strip_roots(_text(cell["source"]), roots))
            cell["outputs"] = [o for o in (_clean_output(o, roots) for o in cell.get("outputs", [])) if o is not None]
    return notebook


def _clean_output(output: dict, roots: list[str]) -> dict | None:
    if output.get("output_type") == "stream":
        output["text"] = _split(_shorten(_strip_roots(_last_redraw(_text(output["text"])), roots)))
        return output if _text(output["text"]).strip() else None
    data = output.get("data")
    if data is None:
        return output
    if any(mime in data for mime in DROPPED_MIME):
        return None  # a live widget (a progress bar): its text/plain is only a placeholder of its first state
    if len(_text(data.get("text/html", ""))) > MAX_HTML and "text/plain" in data:
        data.pop("text/html")
    for mime in [m for m in data if m.startswith("text/")]:
        text = _strip_roots(_text(data[mime]), roots)
        if mime == "text/markdown":
            text = _shorten(text, MAX_MARKDOWN_LINES, head=MAX_MARKDOWN_LINES - TAIL)
        elif mime != "text/html":
            text = _shorten(text)
        data[mime] = _split(text)
    return output if data else None


def _last_redraw(text: str) -> str:
    """Each line as a terminal shows it last: a progress bar redraws with carriage returns."""
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))


def _shorten(text: str, max_lines: int = MAX_LINES, head: int = HEAD, tail: int = TAIL) -> str:
    lines = text.splitlines(keepends=True)
    if len(lines) <= max_lines:
        return text
    cut = len(lines) - head - tail
    return "".join(lines[:head]) + f"[... {cut} lines left out of the published copy ...]\n" + "".join(lines[-tail:])


def _machine_roots(notebook: dict, path: Path) -> list[str]:
    """Absolute repository roots the run may have written into its outputs (longest first)."""
    roots = {str(ROOT)}
    input_path = (notebook["metadata"].get("papermill") or {}).get("input_path")
    if input_path and Path(input_path).parent.name == "notebooks":
        roots.add(str(Path(input_path).parent.parent))
    for parent in path.resolve().parents:
        if (parent / "notebooks").is_dir() and (parent / "clo_utils").is_dir():
            roots.add(str(parent))
            break
    return sorted((r for r in roots if r not in ("/", "")), key=len, reverse=True)


def _strip_roots(text: str, roots: list[str]) -> str:
    """Paths inside the repository made relative to it; other paths under a home folder start with ~."""
    for root in roots:
        text = text.replace(root + "/", "").replace(root, ".")
    return HOME_RE.sub("~", text)


def _relink(markdown: str, source_dir: Path, out_dir: Path) -> str:
    """Relative links of a source notebook's markdown, made relative to `out_dir` instead."""

    def fix(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target, re.I):
            return match.group(0)
        path, _, anchor = target.partition("#")
        moved = _relative(source_dir / path, out_dir)
        return match.group(1) + moved + (f"#{anchor}" if anchor else "")

    return LINK_RE.sub(fix, markdown)


def _relative(target: Path, start: Path) -> str:
    return posixpath.relpath(posixpath.normpath(target.resolve().as_posix()), start.resolve().as_posix())


def _repo_relative(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return path.as_posix()


def _code_drift(name: str, published: dict, source: dict) -> list[str]:
    ours, theirs = code_cells(published), code_cells(source)
    problems = []
    if len(ours) != len(theirs):
        problems.append(f"{name}: {len(ours)} code cells, its source has {len(theirs)}")
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            first = next((line for line in b.splitlines() if line.strip()), "")
            problems.append(f"{name}: code cell {i + 1} differs from the source's (which starts {first!r})")
    return problems


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise PublishError(f"{path}: not a notebook (invalid JSON at line {err.lineno}: {err.msg})") from err


def _text(source) -> str:
    return "".join(source) if isinstance(source, list) else source


def _split(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/demo", help="the recipe's runs root (relative to the repository)")
    parser.add_argument("--lang", default="ca", help="the language of the chain")
    parser.add_argument("--seeds", type=int, default=100, help="the budget of the SFT and CLO runs")
    parser.add_argument("--out", default=str(PUBLISHED_DIR.relative_to(ROOT)), help="where the copies go")
    parser.add_argument("--check", action="store_true", help="only compare the published copies with notebooks/")
    args = parser.parse_args(argv)
    out = ROOT / args.out
    if args.check:
        problems = check(out)
        print("\n".join(problems) or f"{out}: the published notebooks match notebooks/")
        return 1 if problems else 0
    try:
        sizes = publish(ROOT / args.runs, args.lang, args.seeds, out)
    except PublishError as err:
        print(f"publish-notebooks: {err}", file=sys.stderr)
        return 1
    for name, size in sizes.items():
        print(f"{out / name}: {size / 1e3:,.0f} kB")
    print(f"{sum(sizes.values()) / 1e6:.2f} MB in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
