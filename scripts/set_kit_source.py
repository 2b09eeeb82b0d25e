"""Point the kit at a fork: the one setting a fork changes.

    python scripts/set_kit_source.py <owner>/<repo> [<branch>]   # rewrite every place that names it
    python scripts/set_kit_source.py --show                      # print the current setting

The repository and branch appear in two kinds of place that must agree: `KIT_SOURCE` in the setup
cell that opens every notebook (what Colab installs the kit from) and the "Open in Colab" links in
README.md and in the first cell of every notebook (which notebook Colab opens). The executed copies
under docs/notebooks/ carry both too. This script rewrites them all, so a fork's Colab session opens
the fork's notebooks and installs the fork's code.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_RE = re.compile(
    r'(KIT_SOURCE = os\.environ\.get\("CLO_KIT_SOURCE", "git\+https://github\.com/)'
    r'([\w.-]+/[\w.-]+)@([\w./-]+)(")'
)
LINK_RE = re.compile(r"(https://colab\.research\.google\.com/github/)([\w.-]+/[\w.-]+)/blob/([\w./-]+?)(/notebooks/)")


def notebooks() -> list[Path]:
    """The source notebooks, then the published executed copies (docs/notebooks/, when there are any)."""
    return sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "docs" / "notebooks").glob("*.ipynb"))


def current_settings() -> dict[str, set[tuple[str, str]]]:
    """{file: {(owner/repo, branch), ...}} for every notebook (setup cell and Colab badge) and README Colab link."""
    found = {}
    for path in notebooks():
        text = "".join("".join(cell["source"]) for cell in json.loads(path.read_text(encoding="utf-8"))["cells"])
        settings = [(m.group(2), m.group(3)) for regex in (SOURCE_RE, LINK_RE) for m in regex.finditer(text)]
        found[path.relative_to(ROOT).as_posix()] = set(settings)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found["README.md"] = {(m.group(2), m.group(3)) for m in LINK_RE.finditer(readme)}
    return found


def rewrite(repo: str, branch: str) -> None:
    for path in notebooks():
        notebook = json.loads(path.read_text(encoding="utf-8"))
        for cell in notebook["cells"]:
            source = "".join(cell["source"])
            new = SOURCE_RE.sub(lambda m: f"{m.group(1)}{repo}@{branch}{m.group(4)}", source)
            new = LINK_RE.sub(lambda m: f"{m.group(1)}{repo}/blob/{branch}{m.group(4)}", new)
            if new != source:
                cell["source"] = new.splitlines(keepends=True)
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    readme = ROOT / "README.md"
    text = LINK_RE.sub(lambda m: f"{m.group(1)}{repo}/blob/{branch}{m.group(4)}", readme.read_text(encoding="utf-8"))
    readme.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", nargs="?", help="<owner>/<repo> on GitHub")
    parser.add_argument("branch", nargs="?", default="main")
    parser.add_argument("--show", action="store_true", help="print the current setting of every file")
    args = parser.parse_args()
    if args.repo and not args.show:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", args.repo):
            raise SystemExit(f"expected <owner>/<repo>, got {args.repo!r}")
        rewrite(args.repo, args.branch)
    for name, settings in current_settings().items():
        print(f"{name}: {', '.join(f'{repo}@{branch}' for repo, branch in sorted(settings)) or 'none found'}")


if __name__ == "__main__":
    main()
