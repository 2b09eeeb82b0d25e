"""The batch runner: recipe validation, and a real (tiny) two-language, two-budget run, killed and resumed."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_models import save_tiny_llama, tiny_recipe

from clo_utils.common.languages import PAPER_LANGUAGES
from clo_utils.pipeline import runner as pipeline
from clo_utils.pipeline.preflight import preflight, uses_only_offline_models
from clo_utils.pipeline.runner import load_recipe, plan_stages, split_method

REPO = Path(__file__).resolve().parents[2]


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
    with pytest.raises(ValueError, match=r"r\.yaml, line 2: unknown language code 'xx'"):
        load_recipe(path)
    path.write_text("name: x\nlanguages: [ca]\nbudgets: [4]\nmethods: [clo_dpo]\n")
    with pytest.raises(ValueError, match="unknown method 'clo_dpo'"):
        load_recipe(path)


def test_language_id_is_a_recipe_parameter_with_two_choices(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nlanguages: [ca]\nbudgets: [4]\nmethods: [clo]\nevaluate:\n  language_id: fasttext\n")
    stages = plan_stages(load_recipe(path), runs_root=str(tmp_path / "runs"))
    evaluated = [s for s in stages if s.notebook == "04_evaluate"]
    assert evaluated and all(s.parameters["language_id"] == "fasttext" for s in evaluated)
    path.write_text("name: x\nlanguages: [ca]\nbudgets: [4]\nmethods: [clo]\nevaluate:\n  language_id: cld3\n")
    with pytest.raises(ValueError, match=r"line 6: evaluate\.language_id.*one of '' \| 'lingua' \| 'fasttext'"):
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
    recipe = load_recipe(
        _write(tmp_path / "r.yaml", {"name": "t", "languages": ["ca"], "budgets": [8, 4], "methods": ["sft", "clo"]})
    )
    stages = plan_stages(recipe, runs_root=str(tmp_path))
    data = [s for s in stages if s.name == "data"]
    assert len(data) == 1 and data[0].parameters["n_seeds"] == 8
    trains = [s for s in stages if s.name.endswith("train")]
    assert [s.name for s in trains] == ["sft-4 train", "clo-4 train", "sft-8 train", "clo-8 train"]
    assert all(s.parameters["data_dir"] == data[0].parameters["output_dir"] for s in trains)


def test_the_judge_baseline_is_trained_and_evaluated_before_the_runs_judged_against_it(tmp_path):
    recipe = {
        "name": "t",
        "languages": ["ca"],
        "budgets": [4, 8],
        "methods": ["sft", "clo"],
        "evaluate": {"judge_backend": "openai", "judge_model": "m", "judge_baseline": "sft-8"},
    }
    stages = plan_stages(load_recipe(_write(tmp_path / "r.yaml", recipe)), runs_root=str(tmp_path))
    names = [s.name for s in stages if s.name.endswith(("train", "eval")) and s.name != "base-0 eval"]
    assert names[:2] == ["sft-8 train", "sft-8 eval"]
    assert sorted(names[2:]) == sorted(
        f"{m}-{n} {k}" for m in ("sft", "clo") for n in (4, 8) for k in ("train", "eval") if f"{m}-{n}" != "sft-8"
    )
    recipe["evaluate"]["judge_baseline"] = "sft-6400"
    with pytest.raises(ValueError, match=r"r\.yaml, line \d+: judge_baseline 'sft-6400' is not a run of this recipe"):
        load_recipe(_write(tmp_path / "r.yaml", recipe))


# --------------------------------------------------------------------------- training seeds

SEEDED = {"name": "t", "languages": ["ca"], "budgets": [4], "methods": ["sft", "clo"], "seed": 7}


def _stages(tmp_path, recipe: dict) -> dict:
    stages = plan_stages(load_recipe(_write(tmp_path / "r.yaml", recipe)), runs_root=str(tmp_path / "runs"))
    pipeline.assess_stages(stages)
    return {s.name: s for s in stages}


def test_each_training_seed_is_its_own_run_sharing_the_data_and_the_untouched_model(tmp_path):
    stages = _stages(tmp_path, {**SEEDED, "seeds": [0, 3]})
    assert list(stages) == [
        "data",
        "base-0 eval",
        "sft-4-s0 train",
        "sft-4-s0 eval",
        "clo-4-s0 train",
        "clo-4-s0 eval",
        "sft-4-s3 train",
        "sft-4-s3 eval",
        "clo-4-s3 train",
        "clo-4-s3 eval",
    ]
    root = tmp_path / "runs" / "t" / "ca"
    for seed in (0, 3):
        train, evaluation = stages[f"clo-4-s{seed} train"], stages[f"clo-4-s{seed} eval"]
        assert train.workdir == evaluation.workdir == root / f"clo-4-s{seed}"
        assert train.parameters["seed"] == seed and train.parameters["output_dir"] == str(root / f"clo-4-s{seed}")
        assert evaluation.parameters["seed"] == 7
        assert evaluation.parameters["run_dirs"] == [str(root / f"clo-4-s{seed}")]
    # the sampling seed draws the data and seeds the evaluations
    assert stages["data"].parameters["seed"] == 7 and stages["base-0 eval"].parameters["seed"] == 7
    fingerprints = {name: s.fingerprint for name, s in stages.items()}
    assert fingerprints["clo-4-s0 train"] != fingerprints["clo-4-s3 train"]
    assert fingerprints["clo-4-s0 eval"] != fingerprints["clo-4-s3 eval"]
    assert len(set(fingerprints.values())) == len(fingerprints)
    # the shared stages are those of a one-seed recipe
    one_seed = _stages(tmp_path, SEEDED)
    assert fingerprints["data"] == one_seed["data"].fingerprint
    assert fingerprints["base-0 eval"] == one_seed["base-0 eval"].fingerprint


def test_one_training_seed_keeps_the_run_folders_and_fingerprints_of_a_recipe_without_seeds(tmp_path):
    before = _stages(tmp_path, {**SEEDED, "seed": 0})
    for stage in before.values():
        _complete(stage)
    listed = _stages(tmp_path, {**SEEDED, "seed": 0, "seeds": [0]})
    assert (
        list(listed)
        == list(before)
        == ["data", "base-0 eval", "sft-4 train", "sft-4 eval", "clo-4 train", "clo-4 eval"]
    )
    assert {s.state for s in listed.values()} == {"complete"}
    # another single training seed: same folders, the training (and what reads it) reruns
    other = _stages(tmp_path, {**SEEDED, "seed": 0, "seeds": [5]})
    assert list(other) == list(before) and other["clo-4 train"].parameters["seed"] == 5
    assert {n: s.state for n, s in other.items()} == {
        "data": "complete",
        "base-0 eval": "complete",
        "sft-4 train": "stale",
        "sft-4 eval": "stale",
        "clo-4 train": "stale",
        "clo-4 eval": "stale",
    }
    assert "seed: 0 -> 5" in other["clo-4 train"].why
    # several seeds: every trained run is a new folder, the shared stages stay complete
    several = _stages(tmp_path, {**SEEDED, "seed": 0, "seeds": [0, 1]})
    assert {n: s.state for n, s in several.items() if s.state == "complete"} == {
        "data": "complete",
        "base-0 eval": "complete",
    }


def test_each_seeded_run_is_judged_against_the_baseline_of_its_own_training_seed(tmp_path):
    judge = {"judge_backend": "openai", "judge_model": "m", "judge_baseline": "sft-8"}
    recipe = {**SEEDED, "budgets": [4, 8], "seeds": [0, 1], "evaluate": judge}
    stages = _stages(tmp_path, recipe)
    names = [n for n in stages if n.endswith("train")]
    assert names == [
        "sft-8-s0 train",
        "sft-4-s0 train",
        "clo-4-s0 train",
        "clo-8-s0 train",
        "sft-8-s1 train",
        "sft-4-s1 train",
        "clo-4-s1 train",
        "clo-8-s1 train",
    ]
    assert stages["clo-4-s1 eval"].parameters["judge_baseline"] == "sft-8-s1"
    assert "ca/sft-8-s1 eval" in stages["clo-4-s1 eval"].reads
    assert "ca/sft-8-s0 eval" not in stages["clo-4-s1 eval"].reads
    # one seeded folder, or base-0, is one baseline for every run
    fixed = _stages(tmp_path, {**recipe, "evaluate": {**judge, "judge_baseline": "sft-8-s0"}})
    assert [n for n in fixed if n.endswith("train")][0] == "sft-8-s0 train"
    assert {s.parameters["judge_baseline"] for s in fixed.values() if s.kind == "eval"} == {"sft-8-s0"}
    assert "ca/sft-8-s0 eval" in fixed["clo-4-s1 eval"].reads
    with pytest.raises(ValueError, match=r"r\.yaml, line \d+: judge_baseline 'sft-8-s2' is not a run of this recipe"):
        load_recipe(_write(tmp_path / "r.yaml", {**recipe, "evaluate": {**judge, "judge_baseline": "sft-8-s2"}}))


@pytest.mark.parametrize(
    "seeds,expected",
    [
        ("[0, 1, 0]", r"line 5: seeds: 0 is listed twice"),
        ("[]", r"line 5: seeds: expected a list of distinct integers >= 0, e\.g\. \[0, 1, 2\], got \[\]"),
        ("[0, -1]", r"line 5: seeds: expected a list of distinct integers >= 0, .*got -1 at seeds\[1\]"),
        ("[0, one]", r"line 5: seeds: expected a list of distinct integers >= 0, .*got 'one' at seeds\[1\]"),
        ("[0, true]", r"line 5: seeds: expected a list of distinct integers >= 0, .*got True at seeds\[1\]"),
        ("2", r"line 5: seeds: expected a list of distinct integers >= 0, e\.g\. \[0, 1, 2\], got 2"),
    ],
    ids=["repeated", "empty", "negative", "a word", "a boolean", "a number"],
)
def test_bad_training_seeds_are_one_line_naming_the_file_and_line(tmp_path, seeds, expected):
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\nlanguages: [ca]\nbudgets: [4]\nmethods: [clo]\nseeds: {seeds}\n")
    with pytest.raises(ValueError) as err:
        load_recipe(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}, line 5: "), message
    assert re.search(expected, message), message


# --------------------------------------------------------------------------- pre-flight probes


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


TINY_YAML = """name: probe
languages: [ca]
budgets: [4, 8]
methods: [sft, clo]
seed: 0

data:
  data_source: smoke
  n_eval: 8
  translator: apertium
  tokenizer_id: {model}
  max_prompt_tokens: 256
  max_response_tokens: 256

train:
  model_id: {model}
  batch_seeds: 4
  device: cpu

evaluate:
  base_model_id: {model}
"""

# (probe, edit of TINY_YAML, the one-line message it gets)
PROBES = [
    (
        "budgets: [0, 100]",
        ("budgets: [4, 8]", "budgets: [0, 100]"),
        r"line 3: budgets: expected a list of positive integers, e\.g\. \[50, 100\], got 0 at budgets\[0\]",
    ),
    ("duplicated seed", ("seed: 0\n", "seed: 0\nseed: 1\n"), r"line 6: duplicate key 'seed' \(also at line 5\)"),
    (
        "batch_seeds: four",
        ("batch_seeds: 4", "batch_seeds: four"),
        r"line 17: train\.batch_seeds: expected an integer, got 'four' \(int parameter of 02_sft_baseline\)",
    ),
    (
        "unknown embedded id",
        ("  model_id: {model}", "  model_id: embedded:smollm2"),
        r"line 16: train\.model_id: unknown embedded model 'embedded:smollm2'; known: embedded:smollm2-135m-instruct",
    ),
    (
        "translator: deepl",
        ("translator: apertium", "translator: deepl"),
        r"line 10: data\.translator 'deepl' cannot translate English -> ca: unknown translation backend 'deepl'; "
        r"known backends: apertium, m2m100",
    ),
    (
        "languages: [de] with Apertium",
        ("languages: [ca]", "languages: [de]"),
        r"line 10: data\.translator 'apertium' cannot translate English -> de: no Apertium pair English -> German",
    ),
    (
        "budgets beyond the data",
        ("budgets: [4, 8]", "budgets: [4, 5000]"),
        r"line 3: the data holds too few rows: smoke has \d+ rows after dedup and the token-length filter "
        r"\(max_prompt_tokens=256, .*\); the recipe needs 5,000 training \(largest budget\) \+ 8 held-out",
    ),
    (
        "budgets: [50, 1OO]",
        ("budgets: [4, 8]", "budgets: [50, 1OO]"),
        r"line 3: budgets: expected a list of positive integers, e\.g\. \[50, 100\], got '1OO' at budgets\[1\]",
    ),
    ("budgets: 100", ("budgets: [4, 8]", "budgets: 100"), r"line 3: budgets: expected a list of positive integers"),
    (
        "a tab",
        ("  batch_seeds: 4", "\tbatch_seeds: 4"),
        r"probe\.yaml, line 17, column 1: YAML syntax error: a tab character: YAML indents with spaces only",
    ),
    (
        "languages: ca",
        ("languages: [ca]", "languages: ca"),
        r"line 2: languages: expected a list of language codes, e\.g\. \[ca, es\], got the string 'ca'; write \[ca\]",
    ),
    (
        "data source not a file",
        ("data_source: smoke", "data_source: no_such_file.jsonl"),
        r"line 8: data\.data_source: no such file: .*no_such_file\.jsonl",
    ),
]


@pytest.mark.parametrize("edit,expected", [p[1:] for p in PROBES], ids=[p[0] for p in PROBES])
def test_each_recipe_probe_is_one_line_naming_file_line_and_key_before_any_stage(
    tmp_path, tiny_model_dir, capsys, edit, expected
):
    if "apertium" in edit[0] + edit[1] and shutil.which("apertium") is None:
        pytest.skip("Debian's apertium is not installed")
    text = TINY_YAML.replace(*edit).replace("{model}", str(tiny_model_dir))
    path = tmp_path / "probe.yaml"
    path.write_text(text)
    for args in (["--dry-run"], []):
        assert pipeline.main([str(path), "--runs-root", str(tmp_path / "runs"), *args]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith(f"error: {path}, line "), err
        assert re.search(expected, err), err
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_a_hub_model_offline_fails_at_once_saying_how_to_get_it(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    recipe = load_recipe(
        _write(
            tmp_path / "r.yaml",
            {
                "name": "t",
                "languages": ["ca"],
                "budgets": [4],
                "methods": ["clo"],
                "train": {"model_id": "org/not-cached"},
            },
        )
    )
    with pytest.raises(
        ValueError,
        match=r"r\.yaml, line \d+: train\.model_id: 'org/not-cached' is a hub id and "
        r"the hub cannot be used \(HF_HUB_OFFLINE is set\).*`hf download org/not-",
    ):
        preflight(recipe, needs=("train",))


def test_the_hub_probe_answers_within_seconds_without_network(monkeypatch):
    from clo_utils.pipeline import preflight as rc

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    silent = socket.socket()  # accepts connections (the backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    rc.hub_unreachable.cache_clear()
    try:
        start = time.perf_counter()
        reason = rc.hub_unreachable(timeout=1.0)
        assert reason and "127.0.0.1" in reason and time.perf_counter() - start < 3
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        rc.hub_unreachable.cache_clear()
        assert rc.hub_unreachable() == "HF_HUB_OFFLINE is set"
    finally:
        silent.close()
        rc.hub_unreachable.cache_clear()


def test_only_local_models_let_the_runner_go_offline():
    assert uses_only_offline_models(load_recipe(REPO / "params" / "demo.yaml"))
    assert not uses_only_offline_models(load_recipe(REPO / "params" / "paper.yaml"))


def test_paths_resolve_from_the_repository_root_whatever_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("params/demo.yaml")
    assert Path(recipe["_path"]) == REPO / "params" / "demo.yaml"
    stages = plan_stages(recipe)
    assert stages[0].workdir == REPO / "runs" / "demo" / "ca" / "data"


def test_one_paper_recipe_with_a_language_override(tmp_path):
    recipe = load_recipe(REPO / "params" / "paper.yaml", languages=["sw"])
    stages = plan_stages(recipe, runs_root=str(tmp_path))
    assert {s.lang for s in stages} == {"sw"} and stages[0].workdir == tmp_path / "paper" / "sw" / "data"
    assert stages[0].parameters["translator"] == "m2m100"
    assert sorted(load_recipe(REPO / "params" / "paper.yaml")["languages"]) == sorted(PAPER_LANGUAGES)
    with pytest.raises(ValueError, match=r"--language: unknown language code 'xx'"):
        load_recipe(REPO / "params" / "paper.yaml", languages=["xx"])


# --------------------------------------------------------------------------- fingerprints


def _complete(stage) -> None:
    """What run_stage leaves behind, without running the notebook."""
    stage.workdir.mkdir(parents=True, exist_ok=True)
    stage.done_file.write_text("{}")
    (stage.workdir / "output.txt").write_text(stage.fingerprint)
    pipeline.write_record(stage, complete=True)


def _planned(tmp_path, recipe: dict, reuse_stale: bool = False, runs_root=None, package_dir=None):
    loaded = load_recipe(_write(tmp_path / "r.yaml", recipe))
    stages = plan_stages(loaded, runs_root=str(runs_root or tmp_path / "runs"))
    pipeline.assess_stages(stages, reuse_stale=reuse_stale, package_dir=package_dir)
    return {s.key: s for s in stages}


TINY = {
    "name": "t",
    "languages": ["ca"],
    "budgets": [4],
    "methods": ["sft", "clo"],
    "train": {"learning_rate": 1.0e-4},
    "evaluate": {"max_new_tokens": 8},
}


def test_a_changed_parameter_makes_its_stage_and_every_reader_stale_and_nothing_else(tmp_path):
    stages = _planned(tmp_path, TINY)
    assert {s.state for s in stages.values()} == {"missing"}
    for stage in stages.values():
        _complete(stage)
    assert {s.state for s in _planned(tmp_path, TINY).values()} == {"complete"}
    # jobs (thread counts) and the runs folder do not determine outputs
    assert {s.state for s in _planned(tmp_path, {**TINY, "jobs": 2}).values()} == {"complete"}

    changed = _planned(tmp_path, {**TINY, "train": {"learning_rate": 2.0e-4}})
    states = {k: s.state for k, s in changed.items()}
    assert states == {
        "ca/data": "complete",
        "ca/base-0 eval": "complete",
        "ca/sft-4 train": "stale",
        "ca/sft-4 eval": "stale",
        "ca/clo-4 train": "stale",
        "ca/clo-4 eval": "stale",
    }
    assert "learning_rate: 0.0001 -> 0.0002" in changed["ca/clo-4 train"].why
    assert "input changed: ca/clo-4 train" in changed["ca/clo-4 eval"].why

    data_changed = _planned(tmp_path, {**TINY, "data": {"translator": "m2m100"}})
    assert {s.state for s in data_changed.values()} == {"stale"}
    # --reuse-stale keeps the data: what reads it is then complete against the data it really read
    reused = _planned(tmp_path, {**TINY, "data": {"translator": "m2m100"}}, reuse_stale=True)
    assert reused["ca/data"].state == "stale"
    assert {s.state for k, s in reused.items() if k != "ca/data"} == {"complete"}


WITH_SFT_DPO = {**TINY, "methods": ["sft", "sft_dpo", "clo"]}


def _kit_copy(tmp_path) -> Path:
    """A copy of the clo_utils package to edit: the code of the stages assessed against it."""
    from clo_utils.pipeline.code_fingerprint import PACKAGE_DIR

    copy = tmp_path / "kit" / "clo_utils"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_a_code_change_makes_the_stages_that_import_it_stale_and_names_the_file(tmp_path):
    kit = _kit_copy(tmp_path)
    for stage in _planned(tmp_path, WITH_SFT_DPO, package_dir=kit).values():
        _complete(stage)
    assert {s.state for s in _planned(tmp_path, WITH_SFT_DPO, package_dir=kit).values()} == {"complete"}

    losses = kit / "losses.py"
    original = losses.read_text()
    # comments, docstrings and layout are not code: nothing turns stale
    losses.write_text(original.replace('"""The CLO objective', '"""The  CLO  objective') + "\n# a note\n\n")
    assert {s.state for s in _planned(tmp_path, WITH_SFT_DPO, package_dir=kit).values()} == {"complete"}

    losses.write_text(original + "\n\ndef unused(x):\n    return x + 1\n")
    stages = _planned(tmp_path, WITH_SFT_DPO, package_dir=kit)
    states = {k: s.state for k, s in stages.items()}
    assert states == {
        "ca/data": "complete",  # 01 and 04 import no losses.py
        "ca/base-0 eval": "complete",
        "ca/sft-4 train": "stale",
        "ca/sft-4 eval": "stale",
        "ca/sft_dpo-4 train": "stale",
        "ca/sft_dpo-4 eval": "stale",
        "ca/clo-4 train": "stale",
        "ca/clo-4 eval": "stale",
    }
    for run in ("sft", "sft_dpo", "clo"):
        assert stages[f"ca/{run}-4 train"].why.startswith("code changed: clo_utils/losses.py")
        assert stages[f"ca/{run}-4 eval"].why == f"input changed: ca/{run}-4 train"
    # an evaluation fix: the evaluations go stale, the trained runs do not
    losses.write_text(original)
    metrics = kit / "evaluation" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\n\nFIXED = True\n")
    stages = _planned(tmp_path, WITH_SFT_DPO, package_dir=kit)
    assert {k for k, s in stages.items() if s.state == "stale"} == {
        "ca/base-0 eval",
        "ca/sft-4 eval",
        "ca/sft_dpo-4 eval",
        "ca/clo-4 eval",
    }
    assert "code changed: clo_utils/evaluation/metrics.py" in stages["ca/clo-4 eval"].why


def test_moving_the_runs_root_leaves_every_stage_complete(tmp_path):
    for stage in _planned(tmp_path, WITH_SFT_DPO, runs_root=tmp_path / "A").values():
        _complete(stage)
    record = json.loads((tmp_path / "A" / "t" / "ca" / "sft_dpo-4" / "stage-train.json").read_text())
    assert record["parameters"]["sft_run_dir"] == "sft-4"  # which run, not where it lay
    assert str(tmp_path) not in json.dumps({k: v for k, v in record.items() if k != "code"})
    shutil.move(tmp_path / "A", tmp_path / "B")
    moved = _planned(tmp_path, WITH_SFT_DPO, runs_root=tmp_path / "B")
    assert moved["ca/sft_dpo-4 train"].parameters["sft_run_dir"] == str(tmp_path / "B" / "t" / "ca" / "sft-4")
    assert {k: s.state for k, s in moved.items()} == dict.fromkeys(moved, "complete")


def test_the_dpo_stage_settings_determine_sft_dpo_only(tmp_path):
    for stage in _planned(tmp_path, WITH_SFT_DPO).values():
        _complete(stage)
    for key in ("dpo_learning_rate", "dpo_epochs", "dpo_beta"):
        stages = _planned(tmp_path, {**WITH_SFT_DPO, "train": {**TINY["train"], key: 0.5}})
        assert {k for k, s in stages.items() if s.state == "stale"} == {"ca/sft_dpo-4 train", "ca/sft_dpo-4 eval"}
        assert stages["ca/sft_dpo-4 train"].why == f"{key}: {0.0 if key != 'dpo_beta' else 0.1} -> 0.5"
        # its DPO stage still starts from the recipe's SFT run
        assert stages["ca/sft_dpo-4 train"].parameters["sft_run_dir"].endswith("sft-4")
    with pytest.raises(ValueError, match=r"train\.dpo_learning_rate: expected a value >= 0, got -1"):
        _planned(tmp_path, {**WITH_SFT_DPO, "train": {"dpo_learning_rate": -1.0}})


def test_a_completion_record_written_before_the_output_is_not_complete(tmp_path):
    stages = _planned(tmp_path, TINY)
    stage = stages["ca/clo-4 train"]
    stage.workdir.mkdir(parents=True)
    pipeline.write_record(stage, complete=False)  # the runner writes this when the stage starts
    assert _planned(tmp_path, TINY)["ca/clo-4 train"].state == "missing"
    assert _planned(tmp_path, TINY)["ca/clo-4 train"].why == "interrupted: resumes"
    # interrupted with other parameters: its partial output must not be resumed
    assert _planned(tmp_path, {**TINY, "train": {"learning_rate": 3e-4}})["ca/clo-4 train"].state == "stale"


def test_a_stale_stage_keeps_its_old_outputs_aside_until_the_new_ones_are_complete(tmp_path):
    for stage in _planned(tmp_path, TINY).values():
        _complete(stage)
    stages = _planned(tmp_path, {**TINY, "train": {"learning_rate": 2.0e-4}})
    train, evaluation = stages["ca/clo-4 train"], stages["ca/clo-4 eval"]
    old = (train.workdir / "output.txt").read_text()
    assert old != train.fingerprint
    pipeline.set_aside(train)
    assert not train.workdir.exists() and (train.aside / "train.json").exists()
    pipeline.set_aside(evaluation)  # its outputs went aside with the run folder
    # killed here and run again: the aside (the last complete output) is kept, the partial output dropped
    train.workdir.mkdir()
    (train.workdir / "partial").write_text("x")
    pipeline.set_aside(train)
    assert not train.workdir.exists() and (train.aside / "output.txt").exists()
    train.workdir.mkdir()
    _complete(train)
    pipeline.drop_aside(train)
    assert not train.aside.exists() and (train.workdir / "output.txt").read_text() == train.fingerprint
    # an evaluation alone goes aside file by file: the trained model next to it stays
    for stage in _planned(tmp_path, {**TINY, "train": {"learning_rate": 2.0e-4}}).values():
        _complete(stage)
    evaluation = _planned(tmp_path, {**TINY, "train": {"learning_rate": 2.0e-4}, "evaluate": {"max_new_tokens": 9}})[
        "ca/clo-4 eval"
    ]
    assert evaluation.state == "stale"
    pipeline.set_aside(evaluation)
    assert (evaluation.aside / "metrics.json").exists() and (evaluation.workdir / "train.json").exists()


def test_analysis_refuses_to_mix_runs_made_on_different_data(tmp_path):
    for stage in _planned(tmp_path, TINY).values():
        _complete(stage)
    root = tmp_path / "runs" / "t"
    pipeline.check_one_data_version(root)
    data = _planned(tmp_path, {**TINY, "data": {"n_eval": 9}})["ca/data"]
    _complete(data)  # the data stage reran; the runs still record the old data
    with pytest.raises(pipeline.StageFailed, match=r"analysis refuses to mix runs made on different data: .*sft-4"):
        pipeline.check_one_data_version(root)


def test_dry_run_lists_complete_stale_and_missing_with_the_reason(tmp_path, tiny_model_dir, capsys):
    if shutil.which("apertium") is None:
        pytest.skip("Debian's apertium is not installed")
    text = TINY_YAML.replace("{model}", str(tiny_model_dir)).replace("budgets: [4, 8]", "budgets: [4]")
    path = tmp_path / "probe.yaml"
    path.write_text(text)
    recipe = load_recipe(path)
    stages = plan_stages(recipe, runs_root=str(tmp_path / "runs"))
    pipeline.assess_stages(stages)
    for stage in stages[:3]:  # data, base-0 eval, sft-4 train
        _complete(stage)
    path.write_text(text.replace("  device: cpu", "  device: cpu\n  learning_rate: 0.001"))
    assert pipeline.main([str(path), "--runs-root", str(tmp_path / "runs"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "check  train.model_id: " in out and "check  data:" not in out  # the data stage will not run
    assert re.search(r"ca +data +01_translate_data +complete\n", out)
    assert re.search(r"ca +sft-4 train .* stale \(learning_rate: 5e-05 -> 0\.001\)", out)
    assert re.search(r"ca +clo-4 train +03_clo_training +missing\n", out)


def test_a_run_trained_by_hand_with_the_recipe_parameters_is_adopted(tmp_path):
    stages = _planned(tmp_path, TINY)
    train = stages["ca/clo-4 train"]
    train.workdir.mkdir(parents=True)
    train.done_file.write_text("{}")
    executed = {"cells": [], "metadata": {"papermill": {"parameters": {**train.parameters}, "duration": 3.0}}}
    (train.workdir / "03_clo_training.ipynb").write_text(json.dumps(executed))
    assert _planned(tmp_path, TINY)["ca/clo-4 train"].state == "complete"
    executed["metadata"]["papermill"]["parameters"]["learning_rate"] = 5e-5
    (train.workdir / "03_clo_training.ipynb").write_text(json.dumps(executed))
    stale = _planned(tmp_path, TINY)["ca/clo-4 train"]
    assert stale.state == "stale" and "learning_rate: 5e-05 -> 0.0001" in stale.why


@pytest.mark.slow
def test_tiny_recipe_runs_is_killed_and_resumes_only_unfinished_stages(tmp_path):
    if shutil.which("apertium") is None:
        pytest.skip("Debian's apertium is not installed (make test installs it when apt is available)")
    model_dir = save_tiny_llama(tmp_path / "tiny-llama")
    recipe = tiny_recipe(model_dir, languages=["ca", "es"], budgets=[2, 4], methods=["sft", "clo"])
    path = _write(tmp_path / "tiny.yaml", recipe)
    env = {**os.environ, "CLO_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "clo_utils.pipeline", str(path), "--runs-root", str(tmp_path / "runs"), "--jobs", "1"]

    # First invocation: kill it (the whole process group, kernels included) once 3 stages are done.
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
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
    skipped = [
        m.group(1)
        for m in map(re.compile(r"^\[\d+/\d+\] (.+?): skipped \(complete\)").match, out.stdout.splitlines())
        if m
    ]
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
        sum(i["wall_seconds"] for i in timings["invocations"])
    )
    assert {(r["lang"], r["stage"]) for r in timings["stages"]} >= {
        (d.split(" ", 1)[0], d.split(" ", 1)[1]) for d in done_before_kill
    }
    assert (
        "## Wall time" in (root / "REPORT.md").read_text()
        and "wall time not recorded" not in (root / "REPORT.md").read_text()
    )


# --------------------------------------------------------------------------- stages side by side


def _timed_stage(stage, force=False, reuse_stale=False):
    """Stands in for run_stage in the scheduler tests (top level: worker processes unpickle it by name)."""
    start = time.time()
    if stage.name == "fails":  # at once, while the other worker's stage still runs
        raise pipeline.StageFailed(f"stage '{stage.name}' failed")
    time.sleep(0.5)
    return {"lang": stage.lang, "stage": stage.name, "status": "done", "seconds": 0.5, "t": (start, time.time())}


def _chain(lang: str, names: list[str], tmp_path) -> list:
    stages, previous = [], ()
    for name in names:
        stages.append(pipeline.Stage(lang, name, "nb", tmp_path, tmp_path / "x", reads=previous))
        previous = (stages[-1].key,)
    return stages


def test_side_by_side_stages_start_once_what_they_read_is_done(tmp_path):
    stages = _chain("ca", ["data", "train", "eval"], tmp_path) + _chain("es", ["data", "train"], tmp_path)
    stages.append(pipeline.Stage("ca", "s1 train", "nb", tmp_path, tmp_path / "x", reads=("ca/data",)))
    records = pipeline.run_side_by_side(stages, jobs=2, threads=1, run=_timed_stage)
    times = {f"{r['lang']}/{r['stage']}": r["t"] for r in records}
    assert set(times) == {s.key for s in stages}
    for stage in stages:
        for read in stage.reads:
            assert times[read][1] <= times[stage.key][0], (read, stage.key)
    spans = sorted(times.values())
    assert any(a[1] > b[0] for a, b in zip(spans, spans[1:]))  # two workers: some stages overlap
    assert max(end for _, end in spans) - min(start for start, _ in spans) < 6 * 0.5  # not one after another


def test_a_failed_stage_stops_new_ones_and_lets_running_ones_finish(tmp_path, capsys):
    stages = _chain("ca", ["fails", "after"], tmp_path) + _chain("es", ["data", "train"], tmp_path)
    with pytest.raises(pipeline.StageFailed, match="stage 'fails' failed"):
        pipeline.run_side_by_side(stages, jobs=2, threads=1, run=_timed_stage)
    out = capsys.readouterr().out
    assert "es data: done" in out  # started beside the failing stage, finished and recorded
    assert "ca after" not in out and "es train" not in out  # nothing new starts after the failure


def test_every_stage_gets_the_runs_root_and_moving_it_makes_nothing_stale(tmp_path):
    recipe = load_recipe(
        _write(tmp_path / "r.yaml", {"name": "t", "languages": ["ca"], "budgets": [4], "methods": ["sft", "clo"]})
    )
    first, moved = tmp_path / "local" / "runs", tmp_path / "drive" / "clo-runs"
    stages = plan_stages(recipe, runs_root=str(first))
    stages.append(pipeline.analysis_stage(recipe, str(first), stages))
    assert {s.parameters["runs_root"] for s in stages} == {str(first)}
    assert (
        stages[-1].parameters["recipe_dir"] == str(first / "t") and stages[-1].done_file == first / "t" / "REPORT.md"
    )
    assert all(Path(s.parameters.get("output_dir", s.workdir)).is_relative_to(first / "t") for s in stages)
    again = plan_stages(recipe, runs_root=str(moved))
    again.append(pipeline.analysis_stage(recipe, str(moved), again))
    assert {s.parameters["runs_root"] for s in again} == {str(moved)}
    assert [pipeline.stage_fingerprint(s, {}) for s in stages] == [pipeline.stage_fingerprint(s, {}) for s in again]


def test_the_runner_outside_a_checkout_says_it_needs_the_notebooks(tmp_path, monkeypatch):
    from clo_utils.pipeline import stage_notebooks

    monkeypatch.setattr(stage_notebooks, "NOTEBOOKS_DIR", tmp_path / "notebooks")
    stage_notebooks._notebook_parameters.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match=r"01_translate_data\.ipynb not found: .*checkout.*Clone"):
            stage_notebooks.notebook_parameters("01_translate_data")
    finally:
        stage_notebooks._notebook_parameters.cache_clear()


def test_the_number_of_launched_processes_determines_the_training_stages(tmp_path):
    """Under `accelerate launch` the global batch is the per-process batch times the processes: training
    on 2 processes and then on 4 is not the same run."""
    config = REPO / "params" / "accelerate" / "cpu-2proc.yaml"  # num_processes: 2
    launched = {**TINY, "train": {**TINY["train"], "launch": {"config": str(config)}}}
    for stage in _planned(tmp_path, launched).values():
        _complete(stage)
    assert {s.state for s in _planned(tmp_path, launched).values()} == {"complete"}
    four = {**TINY, "train": {**TINY["train"], "launch": {"config": str(config), "num_processes": 4}}}
    stages = _planned(tmp_path, four)
    assert stages["ca/clo-4 train"].state == "stale"
    assert stages["ca/clo-4 train"].why == "launch.num_processes: 2 -> 4"
    assert stages["ca/data"].state == "complete"
