"""The repository's documents as GitHub renders them: every relative link resolves inside the repository,
and environment.yml installs what `make` installs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [
    ROOT / "README.md",
    ROOT / "papers.md",
    ROOT / "data" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")
PUBLISHED = ROOT / "docs" / "notebooks"


def relative_links(markdown: str) -> list[str]:
    targets = [a or b for a, b in LINK.findall(markdown)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", t, re.I)]


def markdown_of(path: Path) -> str:
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text(encoding="utf-8")


def test_relative_links_resolve_inside_the_repository():
    broken = []
    for path in DOCUMENTS + NOTEBOOKS:
        for target in relative_links(markdown_of(path)):
            resolved = (path.parent / target.partition("#")[0]).resolve()
            if not resolved.is_relative_to(ROOT):
                broken.append(f"{path.relative_to(ROOT)}: {target} points outside the repository")
            elif resolved.parent == PUBLISHED and not PUBLISHED.exists():
                continue  # the executed copies, before `make publish-notebooks` first writes them
            elif not resolved.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} does not exist")
    assert not broken, "\n".join(broken)


def test_readme_links_every_notebook_and_its_executed_copy():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        assert f"](notebooks/{path.name})" in readme, path.name
        assert f"](docs/notebooks/{path.name})" in readme, path.name


def test_relative_links_leave_out_urls_and_anchors():
    links = relative_links(
        "[a](docs/method.md#2-objective) [b](https://x.org) [c](#top) ![d](img.png) [e](../shared/x)"
    )
    assert links == ["docs/method.md#2-objective", "img.png", "../shared/x"]


def test_environment_yml_installs_what_make_installs():
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    extras = re.search(r"-e '\.\[([\w,]+)\]'", makefile).group(1).split(",")
    kit = next(line for line in pip if line.startswith("-e ."))
    assert sorted(re.search(r"\[([\w,]+)\]", kit).group(1).split(",")) == sorted(extras)
    assert "-r requirements-embedded.txt" in pip and "requirements-embedded.txt" in makefile
    assert "-c constraints.txt" in pip and "ipykernel" in pip
    # The embedded package's declared dependencies come from conda, so its pip install builds nothing.
    requires = {"llm", "llama-cpp-python"}
    assert requires <= {re.split(r"[<>=]", d)[0] for d in env["dependencies"] if isinstance(d, str)}
