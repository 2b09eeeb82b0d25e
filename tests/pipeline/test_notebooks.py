"""The notebooks as a user meets them: one setup cell, one smoke chain, shared training arguments."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from clo_utils.pipeline import notebook_setup
from clo_utils.pipeline.notebook_setup import parse_column_map, plot_loss_curves, report_to_list, training_arguments

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def parameters(path: Path) -> dict:
    """name -> default, read from the `parameters` cell as papermill reads it."""
    cell = next(c for c in cells(path) if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse(source(cell))
    return {node.target.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.AnnAssign)}


def notebook(prefix: str) -> Path:
    return next(p for p in NOTEBOOKS if p.name.startswith(prefix))


def test_five_notebooks_committed_without_outputs():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]
    for path in NOTEBOOKS:
        for cell in cells(path):
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, path.name


def test_every_notebook_opens_with_the_same_setup_cell_then_parameters():
    setups = [source(cells(p)[1]) for p in NOTEBOOKS]
    assert len(set(setups)) == 1, "the setup cells differ"
    assert "KIT_SOURCE" in setups[0] and "google.colab" in setups[0]
    for path in NOTEBOOKS:
        assert "parameters" in cells(path)[2]["metadata"].get("tags", []), path.name


def test_no_notebook_edits_sys_path_or_reads_shared():
    for path in NOTEBOOKS:
        text = "".join(source(c) for c in cells(path) if c["cell_type"] == "code")
        assert "sys.path" not in text and "../shared" not in text and "shared/data" not in text, path.name


def test_setup_cell_installs_only_what_colab_lacks():
    """The kit without the notebooks extra (Colab has its own Jupyter and widgets), torch held at Colab's build."""
    setup = source(cells(NOTEBOOKS[0])[1])
    installs = re.findall(r"subprocess\.run\(\[\*pip, (.*)\], check=True\)", setup)
    assert installs[0] == '"-c", keep_torch, f"clo-utils @ {KIT_SOURCE}"'
    assert "jupyterlab" not in setup.lower() and "[notebooks]" not in setup
    assert not re.search(r"\btorch\b[^=]*\$", setup)  # torch appears only in the constraint that keeps it


def test_setup_cell_installs_the_pinned_embedded_package():
    pins = [
        line.strip()
        for line in (ROOT / "requirements-embedded.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    setup = source(cells(NOTEBOOKS[0])[1])
    installed = re.findall(r'"--no-deps", "([^"]+)"', setup)
    assert installed == pins


def test_kit_source_and_colab_links_are_one_setting():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "set_kit_source.py"), "--show"],
        capture_output=True,
        text=True,
        check=True,
    )
    settings = {line.split(": ", 1)[1] for line in done.stdout.splitlines()}
    assert len(settings) == 1 and "none found" not in settings, done.stdout
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"colab\.research\.google\.com/github/[^)]*/notebooks/(\w+)\.ipynb", readme))
    assert linked == {p.stem for p in NOTEBOOKS}


def test_defaults_form_one_smoke_chain():
    data = parameters(notebook("01"))["output_dir"]
    sft, clo, evaluate, analysis = (parameters(notebook(n)) for n in ("02", "03", "04", "05"))
    assert sft["data_dir"] == clo["data_dir"] == evaluate["data_dir"] == data
    root = Path(data).parent
    assert [Path(d) for d in evaluate["run_dirs"]] == [
        root / "base-0",
        Path(sft["output_dir"]),
        Path(clo["output_dir"]),
    ]
    assert Path(sft["output_dir"]).parent == Path(clo["output_dir"]).parent == root
    assert Path(analysis["recipe_dir"]) == root.parent
    assert {parameters(p)["runs_root"] for p in NOTEBOOKS} == {"runs"}  # one runs root, the first part of every path
    assert all(
        Path(path).parts[0] == "runs" for path in (data, sft["output_dir"], clo["output_dir"], *evaluate["run_dirs"])
    )
    assert evaluate["judge_baseline"] == Path(sft["output_dir"]).name


def test_training_notebooks_declare_the_shared_parameters_alike():
    sft, clo = parameters(notebook("02")), parameters(notebook("03"))
    shared = set(sft) & set(clo)
    assert set(notebook_setup.TRAINING_PARAMETERS) <= shared
    assert {name: sft[name] for name in shared if name not in ("output_dir", "method")} == {
        name: clo[name] for name in shared if name not in ("output_dir", "method")
    }


def test_no_parameter_shadows_a_module_the_notebook_imports():
    for path in NOTEBOOKS:
        imported = set()
        for cell in cells(path):
            if cell["cell_type"] != "code":
                continue
            for node in ast.walk(ast.parse(source(cell))):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    imported |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        assert not imported & set(parameters(path)), path.name


def test_training_arguments_from_notebook_parameters(tmp_path):
    params = {
        "learning_rate": 1e-4,
        "num_train_epochs": 2.0,
        "gradient_accumulation_steps": 3,
        "warmup": 0.1,
        "lr_scheduler_type": "cosine",
        "save_steps": 0,
        "seed": 7,
        "report_to": "none",
    }
    args = training_arguments(params, tmp_path)
    assert args["learning_rate"] == 1e-4 and args["warmup_steps"] == 0.1 and args["gradient_accumulation_steps"] == 3
    assert args["save_strategy"] == "no" and args["report_to"] == "none" and args["logging_steps"] == 1
    assert training_arguments({**params, "save_steps": 5}, tmp_path)["save_strategy"] == "steps"
    with pytest.raises(KeyError, match="report_to"):
        training_arguments({k: v for k, v in params.items() if k != "report_to"}, tmp_path)


def test_report_to_names_the_missing_extra(monkeypatch):
    assert report_to_list("none") == []
    monkeypatch.setattr(notebook_setup.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"tensorboard.*pip install -e '\.\[tensorboard\]'"):
        report_to_list("tensorboard")


def test_report_to_tensorboard_logs_inside_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(notebook_setup.importlib.util, "find_spec", lambda name: object())
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    params = {
        "learning_rate": 1e-4,
        "num_train_epochs": 1.0,
        "gradient_accumulation_steps": 1,
        "warmup": 0.0,
        "lr_scheduler_type": "linear",
        "save_steps": 0,
        "seed": 0,
        "report_to": "tensorboard",
    }
    assert training_arguments(params, tmp_path)["report_to"] == ["tensorboard"]
    assert notebook_setup.os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tensorboard")


def test_parse_column_map():
    assert parse_column_map("") is None
    assert parse_column_map("dolly") == "dolly"
    assert parse_column_map('{"output": "answer"}') == {"output": "answer"}
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_column_map('{"output": answer}')
    with pytest.raises(ValueError, match="strings"):
        parse_column_map('{"output": 3}')


def test_loss_curves_plot_losses_and_margins_per_direction():
    history = [
        {
            "step": s,
            "loss": 1.0 / s,
            "nll_loss": 2.0 / s,
            "cl_loss": 0.69 / s,
            "rewards_en/margins": 0.1 * s,
            "rewards_tgt/margins": 0.2 * s,
        }
        for s in (1, 2, 3)
    ] + [{"step": 3, "train_runtime": 1.0}]
    figure = plot_loss_curves({"clo": history})
    losses, margins = figure.axes
    assert {line.get_label() for line in losses.lines} == {"total loss", "target NLL", "cross-lingual loss"}
    tgt = next(line for line in margins.lines if line.get_label() == "margin, target triples")
    assert list(tgt.get_xdata()) == [1, 2, 3] and list(tgt.get_ydata()) == pytest.approx([0.2, 0.4, 0.6])


def test_loss_curves_continue_steps_across_stages():
    sft = [{"step": s, "loss": 1.0} for s in (1, 2)]
    dpo = [{"step": s, "loss": 0.7, "rewards/margins": 0.1} for s in (1, 2)]
    figure = plot_loss_curves({"sft": sft, "dpo": dpo})
    dpo_loss = next(line for line in figure.axes[0].lines if line.get_label() == "dpo: total loss")
    assert list(dpo_loss.get_xdata()) == [3, 4]


def test_runs_root_on_drive_mounts_it_on_colab_only(tmp_path, monkeypatch):
    drive = tmp_path / "content" / "drive"
    monkeypatch.setattr(notebook_setup, "COLAB_DRIVE", drive)
    wanted = drive / "MyDrive" / "clo-runs"
    assert notebook_setup.runs_root_folder(str(tmp_path / "local")) == tmp_path / "local"  # not Drive: no mount
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    with pytest.raises(FileNotFoundError, match=r"runs_root=.*clo-runs.*not mounted.*drive\.mount"):
        notebook_setup.runs_root_folder(str(wanted))
    assert not drive.exists()  # nothing created on the local disk in Drive's place

    mounted = []

    def mount(where):
        mounted.append(where)
        (Path(where) / "MyDrive").mkdir(parents=True)

    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=mount)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    assert notebook_setup.runs_root_folder(str(wanted)) == wanted and mounted == [str(drive)]
    assert notebook_setup.runs_root_folder(str(wanted)) == wanted and len(mounted) == 1  # mounted once
