"""The batch runner: recipe validation, and a real (tiny) two-language, two-budget run, killed and resumed."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clo_utils.pipeline import load_recipe, plan_stages, split_method
from tiny_models import make_model, make_tokenizer

REPO = Path(__file__).resolve().parent.parent


def _write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_recipe_key_typo_names_the_file_line_and_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nlanguages: [ca]\nbudgets: [4]\nmethods: [clo]\nlangauges: [es]\n")
    with pytest.raises(ValueError, match=r"r\.yaml, line 5: unknown key 'langauges'"):
        load_recipe(path)
    path.write_text("name: x\nlanguages: [ca]\nbudgets: [4]\nmethods: [clo]\ntrain:\n  learnig_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"line 6: train\.learnig_rate is not a parameter"):
        load_recipe(path)
    path.write_text("name: x\nlanguages: [xx]\n")
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        load_recipe(path)
    path.write_text("name: x\nlanguages: [ca]\nbudgets: [4]\nmethods: [clo_dpo]\n")
    with pytest.raises(ValueError, match="unknown method 'clo_dpo'"):
        load_recipe(path)


def test_every_shipped_recipe_is_valid():
    recipes = sorted((REPO / "params").glob("*.yaml"))
    assert any(p.name == "demo.yaml" for p in recipes)
    for path in recipes:
        recipe = load_recipe(path)
        assert plan_stages(recipe), path


def test_method_suffixes_choose_the_trainable_set():
    assert split_method("clo_full") == ("clo", "03_clo_training", {"trainable": "full"})
    assert split_method("sft_dpo")[2] == {"variant": "both", "then_dpo": True}


def test_budgets_share_one_data_folder_sized_for_the_largest(tmp_path):
    recipe = load_recipe(_write(tmp_path / "r.yaml", {"name": "t", "languages": ["ca"], "budgets": [8, 4],
                                                       "methods": ["sft", "clo"]}))
    stages = plan_stages(recipe, runs_root=str(tmp_path))
    data = [s for s in stages if s.name == "data"]
    assert len(data) == 1 and data[0].parameters["n_seeds"] == 8
    trains = [s for s in stages if s.name.endswith("train")]
    assert [s.name for s in trains] == ["sft-4 train", "clo-4 train", "sft-8 train", "clo-8 train"]
    assert all(s.parameters["data_dir"] == data[0].parameters["output_dir"] for s in trains)


def test_the_judge_baseline_is_trained_and_evaluated_before_the_runs_judged_against_it(tmp_path):
    recipe = {"name": "t", "languages": ["ca"], "budgets": [4, 8], "methods": ["sft", "clo"],
              "evaluate": {"judge_backend": "openai", "judge_model": "m", "judge_baseline": "sft-8"}}
    stages = plan_stages(load_recipe(_write(tmp_path / "r.yaml", recipe)), runs_root=str(tmp_path))
    names = [s.name for s in stages if s.name.endswith(("train", "eval")) and s.name != "base-0 eval"]
    assert names[:2] == ["sft-8 train", "sft-8 eval"]
    assert sorted(names[2:]) == sorted(f"{m}-{n} {k}" for m in ("sft", "clo") for n in (4, 8) for k in ("train", "eval")
                                       if f"{m}-{n}" != "sft-8")
    recipe["evaluate"]["judge_baseline"] = "sft-6400"
    with pytest.raises(ValueError, match=r"r\.yaml, line \d+: judge_baseline 'sft-6400' is not a run of this recipe"):
        load_recipe(_write(tmp_path / "r.yaml", recipe))


@pytest.mark.slow
def test_tiny_recipe_runs_is_killed_and_resumes_only_unfinished_stages(tmp_path):
    if shutil.which("apertium") is None:
        pytest.skip("Debian's apertium is not installed (make test installs it when apt is available)")
    model_dir = tmp_path / "tiny-llama"
    tok = make_tokenizer()
    make_model("llama", vocab_size=len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    recipe = {
        "name": "tiny", "languages": ["ca", "es"], "budgets": [2, 4], "methods": ["sft", "clo"], "seed": 0,
        "data": {"data_source": "smoke", "n_eval": 3, "tokenizer_id": str(model_dir), "apertium_procs": 1},
        "train": {"model_id": str(model_dir), "device": "cpu", "batch_seeds": 2, "max_length": 512,
                  "learning_rate": 1e-3},
        "evaluate": {"base_model_id": str(model_dir), "max_prompts": 3, "max_new_tokens": 8, "batch_size": 3},
        "analysis": {"formats": ["png"]},
    }
    path = _write(tmp_path / "tiny.yaml", recipe)
    env = {**os.environ, "CLO_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "clo_utils.pipeline", str(path), "--runs-root", str(tmp_path / "runs"), "--jobs", "1"]

    # First invocation: kill it (the whole process group, kernels included) once 3 stages are done.
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    done_before_kill = []
    stage_done = re.compile(r"^\[\d+/\d+\] (.+?): done in")
    for line in proc.stdout:
        if match := stage_done.match(line):
            done_before_kill.append(match.group(1))
            if len(done_before_kill) == 3:
                os.killpg(proc.pid, signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert len(done_before_kill) == 3, "the run ended before 3 stages were done"

    # Second invocation: the 3 finished stages are skipped, everything else runs to completion.
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    skipped = [m.group(1) for m in map(re.compile(r"^\[\d+/\d+\] (.+?): skipped \(complete\)").match,
                                         out.stdout.splitlines()) if m]
    assert skipped == done_before_kill
    root = tmp_path / "runs" / "tiny"
    for lang in ("ca", "es"):
        assert (root / lang / "data" / "manifest.json").exists()
        for run in ("base-0", "sft-2", "sft-4", "clo-2", "clo-4"):
            metrics = json.loads((root / lang / run / "metrics.json").read_text())
            assert set(metrics["eval"]) == {"tgt", "en"}, (lang, run)
        train = json.loads((root / lang / "clo-4" / "train.json").read_text())
        assert train["run"]["n_seeds"] == 4 and train["run"]["lang"] == lang
        assert (root / lang / "clo-4" / "03_clo_training.ipynb").exists()  # provenance
    assert (root / "REPORT.md").exists() and list((root / "figures").glob("*.png"))
    timings = json.loads((root / "timings.json").read_text())
    assert len(timings["invocations"]) == 2 and timings["wall_seconds"] == pytest.approx(
        sum(i["wall_seconds"] for i in timings["invocations"]))
    assert {(r["lang"], r["stage"]) for r in timings["stages"]} >= {(d.split(" ", 1)[0], d.split(" ", 1)[1])
                                                                     for d in done_before_kill}
    assert "## Wall time" in (root / "REPORT.md").read_text() and "wall time not recorded" not in (root / "REPORT.md").read_text()
