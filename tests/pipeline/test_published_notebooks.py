"""The executed notebooks under docs/notebooks/: published from a run, with the code of notebooks/."""

from __future__ import annotations

import base64
import importlib.util
import json
import posixpath
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("publish_notebooks", ROOT / "scripts" / "publish_notebooks.py")
publish_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(publish_notebooks)
CHAIN = publish_notebooks.CHAIN
MACHINE = "/home/someone/clo-kit"  # the fake runs' repository root: must not reach a published copy
PNG = base64.b64encode(bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")).decode()


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def write(path: Path, notebook: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(notebook, indent=1), encoding="utf-8")


def executed_copy(name: str, run_dir: str) -> dict:
    """The source notebook as papermill leaves it: parameters injected after the `parameters` cell
    (absolute paths, as the runner passes them), outputs in every code cell, papermill's metadata."""
    notebook = read(ROOT / "notebooks" / f"{name}.ipynb")
    notebook["metadata"]["papermill"] = {
        "input_path": f"{MACHINE}/notebooks/{name}.ipynb",
        "output_path": f"{MACHINE}/{run_dir}/{name}.ipynb",
        "parameters": {"output_dir": f"{MACHINE}/{run_dir}"},
    }
    notebook["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"x": "y" * 5000}}}
    for cell in notebook["cells"]:
        cell["metadata"]["papermill"] = {"duration": 1.0, "status": "completed"}
        if cell["cell_type"] != "code":
            continue
        cell["execution_count"] = 1
        cell["outputs"] = [
            {"output_type": "stream", "name": "stderr", "text": ["  0%|  | 0/8\r 50%|# | 4/8\r100%|##| 8/8\n"]},
            {"output_type": "stream", "name": "stdout", "text": [f"line {i}\n" for i in range(300)]},
            {
                "output_type": "display_data",
                "metadata": {},
                "data": {"image/png": PNG, "text/plain": ["<Figure size 640x480 with 2 Axes>"]},
            },
            {
                "output_type": "display_data",
                "metadata": {},
                "data": {"text/markdown": [f"| row {i} |\n" for i in range(200)], "text/plain": ["<Markdown>"]},
            },
            {
                "output_type": "execute_result",
                "execution_count": 1,
                "metadata": {},
                "data": {"text/plain": [f"'data: {MACHINE}/{run_dir}; cache: /home/someone/.cache/clo-kit'"]},
            },
            {
                "output_type": "display_data",
                "metadata": {},
                "data": {
                    "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2},
                    "text/plain": ["  0%|          | 0/8 [00:00<?, ?it/s]"],
                },
            },
        ]
    at = next(i for i, c in enumerate(notebook["cells"]) if "parameters" in c["metadata"].get("tags", []))
    injected = {
        "cell_type": "code",
        "execution_count": 2,
        "id": "injected",
        "metadata": {"tags": ["injected-parameters"]},
        "outputs": [],
        "source": [f'output_dir = "{MACHINE}/{run_dir}"\n', 'run_dirs = ["runs/demo/ca/clo-100"]\n'],
    }
    notebook["cells"].insert(at + 1, injected)
    return notebook


@pytest.fixture
def demo_runs(tmp_path) -> Path:
    """A runs/demo tree holding the five executed copies of the Catalan 100-seed chain."""
    runs = tmp_path / "runs" / "demo"
    for name, folder in CHAIN.items():
        run_dir = folder.format(lang="ca", n=100)
        write(runs / run_dir / f"{name}.ipynb", executed_copy(name, posixpath.normpath(f"runs/demo/{run_dir}")))
    write(runs / "ca" / "clo-50" / "03_clo_training.ipynb", executed_copy("03_clo_training", "x"))  # another budget
    return runs


def test_publish_keeps_outputs_and_the_code_of_notebooks(demo_runs, tmp_path):
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")  # a repository: notebooks/ beside docs/notebooks/
    out = tmp_path / "docs" / "notebooks"
    sizes = publish_notebooks.publish(demo_runs, "ca", 100, out, source_dir=tmp_path / "notebooks")
    assert sorted(sizes) == sorted(f"{name}.ipynb" for name in CHAIN)
    assert sorted(p.name for p in out.iterdir()) == sorted(sizes)
    assert publish_notebooks.check(out) == []
    for name in CHAIN:
        path = out / f"{name}.ipynb"
        text = path.read_text(encoding="utf-8")
        assert (
            "/home/someone" not in text and "application/vnd.jupyter.widget" not in text and "0/8 [00:00" not in text
        ), name
        notebook = json.loads(text)
        nbformat.validate(nbformat.from_dict(notebook))  # what GitHub's renderer expects
        assert "widgets" not in notebook["metadata"]
        assert f"(../docs/notebooks/{name}.ipynb)" not in text and f"]({name}.ipynb)" not in text  # no self-link
        run_dir = posixpath.normpath(f"runs/demo/{CHAIN[name].format(lang='ca', n=100)}")
        assert notebook["metadata"]["papermill"] == {"parameters": {"output_dir": run_dir}}
        header = notebook["cells"][0]
        assert header["metadata"]["tags"] == ["published-header"]
        assert f"(../../notebooks/{name}.ipynb)" in "".join(header["source"])
        assert (out / "../../notebooks" / f"{name}.ipynb").resolve() == (tmp_path / "notebooks" / f"{name}.ipynb")
        injected = [c for c in notebook["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert len(injected) == 1 and injected[0]["source"][0] == f'output_dir = "{run_dir}"\n'
        code = [c for c in notebook["cells"] if c["cell_type"] == "code" and c not in injected]
        outputs = code[0]["outputs"]
        progress, long_output, figure, report, result = outputs  # the widget output is gone
        assert len(report["data"]["text/markdown"]) == 200  # a rendered report is kept whole
        assert progress["text"] == ["100%|##| 8/8\n"]  # the last redraw of the progress bar only
        kept = "".join(long_output["text"])
        assert kept.startswith("line 0\n") and kept.endswith("line 299\n") and "line 150\n" not in kept
        assert "[... 245 lines left out of the published copy ...]" in kept
        assert figure["data"]["image/png"] == PNG
        assert result["data"]["text/plain"] == [f"'data: {run_dir}; cache: ~/.cache/clo-kit'"]
        assert "papermill" not in code[0]["metadata"]
    assert sum(sizes.values()) < publish_notebooks.LIMIT_BYTES


def test_publish_refuses_a_copy_whose_code_drifted(demo_runs, tmp_path):
    path = demo_runs / "ca" / "clo-100" / "03_clo_training.ipynb"
    notebook = read(path)
    cell = next(c for c in notebook["cells"] if "train_clo(model" in "".join(c["source"]))
    cell["source"] = ["trainer = None\n"]
    write(path, notebook)
    out = tmp_path / "out"
    with pytest.raises(publish_notebooks.PublishError, match=r"03_clo_training: code cell \d+ differs"):
        publish_notebooks.publish(demo_runs, "ca", 100, out)
    assert not out.exists()


def test_publish_names_the_missing_executed_notebook(demo_runs, tmp_path):
    (demo_runs / "05_analysis.ipynb").unlink()
    with pytest.raises(publish_notebooks.PublishError, match=r"runs/demo/05_analysis\.ipynb.*make demo"):
        publish_notebooks.publish(demo_runs, "ca", 100, tmp_path / "out")
    with pytest.raises(publish_notebooks.PublishError, match=r"ca/sft-7/02_sft_baseline\.ipynb"):
        publish_notebooks.publish(demo_runs, "ca", 7, tmp_path / "out")


def test_publish_refuses_copies_over_the_size_limit(demo_runs, tmp_path):
    with pytest.raises(publish_notebooks.PublishError, match="over the 10,000 limit"):
        publish_notebooks.publish(demo_runs, "ca", 100, tmp_path / "out", limit_bytes=10_000)
    assert not (tmp_path / "out").exists()


def test_check_names_missing_drifted_and_stray_copies(demo_runs, tmp_path):
    out = tmp_path / "published"
    publish_notebooks.publish(demo_runs, "ca", 100, out)
    (out / "01_translate_data.ipynb").unlink()
    notebook = read(out / "04_evaluate.ipynb")
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    code[-1]["source"] = code[-1]["source"] + ["print('changed')\n"]
    notebook["cells"].remove(code[1])
    write(out / "04_evaluate.ipynb", notebook)
    write(out / "06_extra.ipynb", notebook)
    problems = publish_notebooks.check(out)
    assert any("01_translate_data.ipynb: missing" in p for p in problems)
    assert any(re.search(r"04_evaluate.ipynb: \d+ code cells, its source has \d+", p) for p in problems)
    assert any("06_extra.ipynb: not a notebook of the chain" in p for p in problems)
    assert publish_notebooks.main(["--check", "--out", str(out)]) == 1


def test_published_notebooks_have_the_code_of_notebooks():
    """The committed executed copies: all five, each with its source notebook's code cells."""
    published = ROOT / "docs" / "notebooks"
    if not published.exists():
        pytest.skip("docs/notebooks/ is not published yet: `make demo`, then `make publish-notebooks`")
    assert publish_notebooks.check(published) == []
    size = sum(p.stat().st_size for p in published.glob("*.ipynb"))
    assert size < publish_notebooks.LIMIT_BYTES, f"docs/notebooks/ holds {size:,} bytes"


def test_links_of_notebook_markdown_resolve_from_the_published_folder():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in read(path)["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            source = "".join(cell["source"])
            moved = publish_notebooks._relink(source, ROOT / "notebooks", publish_notebooks.PUBLISHED_DIR)
            for before, after in zip(links(source), links(moved)):
                assert (ROOT / "notebooks" / before).resolve() == (publish_notebooks.PUBLISHED_DIR / after).resolve()
                if not after.endswith(".ipynb"):  # the published copies themselves may not exist yet
                    assert Path(posixpath.normpath(publish_notebooks.PUBLISHED_DIR / after)).exists(), (
                        path.name,
                        after,
                    )
    assert publish_notebooks._relink(
        "[m](../docs/method.md#2-objective)", ROOT / "notebooks", ROOT / "docs" / "notebooks"
    ) == ("[m](../method.md#2-objective)")
    assert publish_notebooks._relink("[w](https://x.org/a.md) [a](#top)", ROOT, ROOT / "docs") == (
        "[w](https://x.org/a.md) [a](#top)"
    )


def links(markdown: str) -> list[str]:
    found = [m.group(2).partition("#")[0] for m in publish_notebooks.LINK_RE.finditer(markdown)]
    return [t for t in found if t and not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


def test_every_notebook_opens_with_its_colab_badge_and_executed_copy():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        first = "".join(read(path)["cells"][0]["source"])
        assert re.search(
            rf"\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
            rf"\(https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/[\w./-]+/notebooks/{path.name}\)",
            first,
        ), path.name
        assert f"(../docs/notebooks/{path.name})" in first, path.name


def test_set_kit_source_rewrites_readme_badges_and_published_copies(demo_runs, tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "set_kit_source.py", repo / "scripts")
    shutil.copytree(ROOT / "notebooks", repo / "notebooks")
    shutil.copy(ROOT / "README.md", repo)
    publish_notebooks.publish(demo_runs, "ca", 100, repo / "docs" / "notebooks")
    script = [sys.executable, str(repo / "scripts" / "set_kit_source.py")]
    before = subprocess.run([*script, "--show"], capture_output=True, text=True, check=True).stdout
    assert len(before.splitlines()) == 11 and "none found" not in before
    after = subprocess.run([*script, "me/fork", "dev"], capture_output=True, text=True, check=True).stdout
    assert after.count("me/fork@dev") == 11, after
    for path in [*(repo / "notebooks").glob("*.ipynb"), *(repo / "docs" / "notebooks").glob("*.ipynb")]:
        text = path.read_text(encoding="utf-8")
        assert "colab.research.google.com/github/me/fork/blob/dev/notebooks/" in text, path
        assert "git+https://github.com/me/fork@dev" in text, path
    code = {p.name: publish_notebooks.code_cells(read(p)) for p in (repo / "notebooks").glob("*.ipynb")}
    for path in (repo / "docs" / "notebooks").glob("*.ipynb"):
        assert publish_notebooks.code_cells(read(path)) == code[path.name]  # still the same code
