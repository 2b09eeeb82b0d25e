"""A plain clone: the checkout's files alone in a scratch folder, nothing beside it.

The demo recipe's data stage (notebook 01 with params/demo.yaml's data section) runs there, with
the kernel started in notebooks/ as JupyterLab starts it, and must give the recipe's counts: the
largest budget of training seeds and at least the held-out prompts evaluation uses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def checkout_files() -> list[str]:
    """What a clone holds: tracked files plus files git would add (untracked, not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    return [name for name in listed.stdout.decode().split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def plain_clone(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to list its files")
    clone = tmp_path_factory.mktemp("alone") / "clo-kit"
    for name in checkout_files():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, clone / name)
    assert not (clone.parent / "shared").exists()
    return clone


@pytest.mark.slow
def test_demo_data_stage_in_a_plain_clone(plain_clone, tmp_path):
    from clo_utils.translation.translate import ApertiumTranslator, TranslatorError

    recipe = yaml.safe_load((plain_clone / "params" / "demo.yaml").read_text(encoding="utf-8"))
    lang = recipe["languages"][0]
    try:
        ApertiumTranslator(lang)
    except TranslatorError as err:
        pytest.skip(f"the demo translates with Apertium: {err}")
    out = f"runs/{recipe['name']}/{lang}/data"
    params = {
        **recipe["data"],
        "language": lang,
        "n_seeds": max(recipe["budgets"]),
        "seed": recipe.get("seed", 0),
        "output_dir": out,
    }
    # The clone's own package, not the editable install this test runs from; caches in the scratch folder.
    env = {
        **os.environ,
        "PYTHONPATH": str(plain_clone),
        "CLO_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    executed = tmp_path / "01.ipynb"
    command = [
        sys.executable,
        "-m",
        "papermill",
        "notebooks/01_translate_data.ipynb",
        str(executed),
        "--cwd",
        "notebooks",
        "-k",
        "python3",
        "--no-progress-bar",
        "-y",
        json.dumps(params),
    ]
    done = subprocess.run(command, cwd=plain_clone, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    data = plain_clone / out
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    n_train = sum(1 for _ in open(data / "seeds_train.jsonl", encoding="utf-8"))
    n_eval = sum(1 for _ in open(data / "seeds_eval.jsonl", encoding="utf-8"))
    assert n_train == max(recipe["budgets"])
    assert recipe["evaluate"]["max_prompts"] <= n_eval <= recipe["data"]["n_eval"]
    assert (
        Path(manifest["data_source"]).resolve()
        == (plain_clone / "clo_utils" / "assets" / "english_sft.jsonl").resolve()
    )
