"""The kit as a pip user meets it: a wheel built from this checkout, installed into a throwaway
environment, and the five notebooks run on their defaults from an empty folder outside any checkout.

The environment reuses this one's packages (torch and the rest, through a .pth line: this
environment's own .pth files, the editable install of the kit among them, are not read), so only
the wheel is installed. Each notebook must find what the one before wrote under <folder>/runs/smoke;
then notebook 05 runs again from a second empty folder with runs_root pointing at the first one's
runs/, as a Colab session with a Drive folder does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import venv
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from test_colab_setup import purelib_of
from test_plain_clone import checkout_files

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ["01_translate_data", "02_sft_baseline", "03_clo_training", "04_evaluate", "05_analysis"]
SFT_SHA256 = "fff4375400f852a8d2ec77be9c6f3c14ee5d7949fb53421520073624e141395c"


def build_wheel(where: Path) -> Path:
    """A wheel of the checkout's files, built in a copy (the build leaves nothing in the working tree)."""
    source = where / "source"
    for name in checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    # The build backend installed here when it is recent enough (no download), else pip's isolated build.
    try:
        local_backend = int(version("setuptools").split(".")[0]) >= 68  # pyproject.toml's build requirement
    except PackageNotFoundError:
        local_backend = False
    isolation = ["--no-build-isolation"] if local_backend else []
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation]
    built = subprocess.run([*pip_wheel, "-w", where / "dist", source], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (where / "dist").glob("clo_utils-*.whl")
    return wheel


def venv_reusing_these_packages(where: Path, wheel: Path) -> Path:
    """A fresh environment whose only own package is the kit's wheel; everything else comes from here."""
    venv.EnvBuilder(with_pip=False).create(where)
    python = where / "bin" / "python"
    site = purelib_of(python)
    here = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz_reuse_packages.pth").write_text("".join(f"{path}\n" for path in here))
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    kernel = where / "share" / "jupyter" / "kernels" / "python3"
    kernel.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (kernel / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
    return python


def lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


@pytest.mark.slow
def test_five_notebooks_from_a_wheel_install_in_an_empty_folder(tmp_path):
    from clo_utils.translation.translate import ApertiumTranslator, TranslatorError

    try:
        ApertiumTranslator("ca")  # notebook 01's default translator
    except TranslatorError as err:
        pytest.skip(f"notebook 01's defaults translate with Apertium: {err}")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to list its files")
    start = time.perf_counter()
    wheel = build_wheel(tmp_path / "build")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"clo_utils/assets/english_sft.jsonl", "clo_utils/assets/english_sft.LICENCES.md"} <= names
    python = venv_reusing_these_packages(tmp_path / "env", wheel)
    built = time.perf_counter() - start

    folder = tmp_path / "empty"  # the user's working folder: no checkout above it, nothing in it
    folder.mkdir()
    env = {
        **os.environ,
        "CLO_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONNOUSERSITE": "1",
        "JUPYTER_PATH": str(tmp_path / "env" / "share" / "jupyter"),
    }
    env.pop("PYTHONPATH", None)

    def papermill(name: str, cwd: Path, *params: str) -> float:
        began = time.perf_counter()
        done = subprocess.run(
            [python, "-m", "papermill", ROOT / "notebooks" / f"{name}.ipynb", tmp_path / f"{name}-{cwd.name}.ipynb"]
            + ["--cwd", cwd, "-k", "python3", "--no-progress-bar", *params],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert done.returncode == 0, f"{name}: " + done.stderr[-3000:]
        return time.perf_counter() - began

    seconds = {name: papermill(name, folder) for name in NOTEBOOKS[:1]}
    smoke = folder / "runs" / "smoke"
    data = smoke / "ca" / "data"
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    shipped = Path(manifest["data_source"])
    assert shipped.name == "english_sft.jsonl" and shipped.is_relative_to(tmp_path / "env")  # the wheel's copy
    assert manifest["data_source_sha256"] == SFT_SHA256 and manifest["counts"]["loaded"] == 2481
    counts = manifest["counts"]
    assert lines(data / "seeds_train.jsonl") == counts["train_kept"] == 16  # n_seeds
    assert 4 <= lines(data / "seeds_eval.jsonl") == counts["eval_kept"] <= 8  # n_eval, less the filter's drops
    assert lines(data / "pairs.jsonl") == counts["pairs"] > 0

    first_four = [json.loads(line)["id"] for line in (data / "seeds_train.jsonl").read_text().splitlines()[:4]]
    for name, run in (("02_sft_baseline", "sft-4"), ("03_clo_training", "clo-4")):
        seconds[name] = papermill(name, folder)
        train = json.loads((smoke / "ca" / run / "train.json").read_text(encoding="utf-8"))
        # The first 4 seeds 01 wrote (those over max_length are dropped and counted).
        assert 0 < len(train["run"]["seed_ids"]) and set(train["run"]["seed_ids"]) <= set(first_four)
        assert (smoke / "ca" / run / "model").is_dir()

    seconds["04_evaluate"] = papermill("04_evaluate", folder)
    for run in ("base-0", "sft-4", "clo-4"):
        metrics = json.loads((smoke / "ca" / run / "metrics.json").read_text(encoding="utf-8"))
        assert {d: metrics["eval"][d]["n_prompts"] for d in ("tgt", "en")} == {"tgt": 4, "en": 4}

    seconds["05_analysis"] = papermill("05_analysis", folder)
    report = smoke / "REPORT.md"
    assert "clo-4" in report.read_text(encoding="utf-8") and any((smoke / "figures").glob("*.png"))

    # Another session, another empty folder: runs_root names the first folder's runs/ (a Drive folder on Colab).
    other = tmp_path / "other-session"
    other.mkdir()
    report.unlink()
    seconds["05_analysis, runs_root"] = papermill("05_analysis", other, "-p", "runs_root", str(folder / "runs"))
    assert report.is_file() and not any(other.iterdir())
    print(f"wheel and environment {built:.0f} s; notebooks " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
