"""SFT+DPO: the DPO stage starts from the recipe's SFT run of the same settings instead of training SFT again."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from tiny_models import make_model, make_tokenizer, save_tiny_llama, tiny_recipe

from clo_utils.common.runfiles import write_train
from clo_utils.pipeline.recipe import load_recipe
from clo_utils.pipeline.runs import SFT_SETTINGS, check_sft_run
from clo_utils.pipeline.stages import plan_stages

REPO = Path(__file__).resolve().parent.parent


def _plan(tmp_path, recipe: dict) -> dict:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "languages": ["ca"], **recipe}, sort_keys=False))
    return {s.name: s for s in plan_stages(load_recipe(path), runs_root=str(tmp_path / "runs"))}


def test_sft_dpo_starts_from_the_same_budget_and_seed_sft_run_which_goes_first(tmp_path):
    stages = _plan(tmp_path, {"budgets": [4, 8], "methods": ["sft_dpo", "clo", "sft"], "seeds": [0, 1]})
    names = list(stages)
    for n in (4, 8):
        for seed in (0, 1):
            dpo, sft = stages[f"sft_dpo-{n}-s{seed} train"], stages[f"sft-{n}-s{seed} train"]
            assert dpo.parameters["sft_run_dir"] == sft.parameters["output_dir"]
            assert sft.key in dpo.reads  # a retrained SFT run makes the SFT+DPO run stale
            assert names.index(sft.name) < names.index(dpo.name)
            assert "sft_run_dir" not in sft.parameters


def test_sft_dpo_trains_its_own_sft_stage_when_no_sft_run_matches(tmp_path):
    alone = _plan(tmp_path, {"budgets": [4], "methods": ["sft_dpo", "clo"]})
    assert "sft_run_dir" not in alone["sft_dpo-4 train"].parameters
    other_lr = _plan(
        tmp_path,
        {"budgets": [4], "methods": ["sft", "sft_dpo"], "method_params": {"sft_dpo": {"learning_rate": 1e-5}}},
    )
    assert "sft_run_dir" not in other_lr["sft_dpo-4 train"].parameters
    other_trainable = _plan(tmp_path, {"budgets": [4], "methods": ["sft_full", "sft_dpo"]})
    assert "sft_run_dir" not in other_trainable["sft_dpo-4 train"].parameters
    # the DPO stage's own knobs do not stop it
    own_beta = _plan(
        tmp_path, {"budgets": [4], "methods": ["sft", "sft_dpo"], "method_params": {"sft_dpo": {"dpo_beta": 0.3}}}
    )
    assert own_beta["sft_dpo-4 train"].parameters["sft_run_dir"].endswith("sft-4")


def _settings(**changes) -> dict:
    return {**dict.fromkeys(SFT_SETTINGS, 1), "data_dir": "/d", **changes}


def test_check_sft_run_names_the_file_and_what_differs(tmp_path):
    run = {"variant": "both", "then_dpo": False, "sft_settings": _settings(), "seed_ids": ["a", "b"]}
    write_train(tmp_path, {"run": run, "history": [], "summary": {}})
    assert check_sft_run(tmp_path, _settings(), ["a", "b"])["run"] == run
    with pytest.raises(ValueError, match=r"train\.json: .*learning_rate: 1 there, 0\.5 here"):
        check_sft_run(tmp_path, _settings(learning_rate=0.5), ["a", "b"])
    with pytest.raises(ValueError, match=r"train\.json: the SFT run trained on other seeds"):
        check_sft_run(tmp_path, _settings(), ["a", "c"])
    write_train(tmp_path, {"run": {**run, "then_dpo": True}, "history": [], "summary": {}})
    with pytest.raises(ValueError, match="not a plain SFT run"):
        check_sft_run(tmp_path, _settings(), ["a", "b"])
    write_train(tmp_path, {"run": {k: v for k, v in run.items() if k != "sft_settings"}, "history": [], "summary": {}})
    with pytest.raises(ValueError, match="retrain that SFT run"):
        check_sft_run(tmp_path, _settings(), ["a", "b"])
    with pytest.raises(FileNotFoundError, match=r"nothing[/\\]train\.json: sft_run_dir holds no finished SFT run"):
        check_sft_run(tmp_path / "nothing", _settings(), ["a"])


def test_a_tiny_recipe_trains_sft_once_and_dpo_from_it(tmp_path):
    if shutil.which("apertium") is None:
        pytest.skip("Debian's apertium is not installed (make test installs it when apt is available)")
    model_dir = save_tiny_llama(tmp_path / "tiny-llama")
    recipe = tiny_recipe(model_dir, languages=["ca"], budgets=[4], methods=["sft", "sft_dpo"])
    recipe["data"]["n_eval"] = recipe["evaluate"]["max_prompts"] = 2
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    env = {**os.environ, "CLO_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "clo_utils.pipeline", str(path), "--runs-root", str(tmp_path / "runs"), "--jobs", "1"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    root = tmp_path / "runs" / "tiny" / "ca"
    sft, dpo = (json.loads((root / run / "train.json").read_text()) for run in ("sft-4", "sft_dpo-4"))
    assert dpo["run"]["sft_run_dir"] == str(root / "sft-4") and dpo["run"]["dpo_trainer"] == "kit"
    assert [h for h in dpo["history"] if h["stage"] == "sft"] == sft["history"]  # SFT was not trained again
    assert dpo["summary"]["sft"]["train_seconds"] == sft["summary"]["train_seconds"]
    assert {h["stage"] for h in dpo["history"]} == {"sft", "dpo"}
    assert dpo["summary"]["dpo"]["reference_seeds_computed"] == 4  # the SFT model scored as the reference
    before, after = (load_file(root / run / "model" / "model.safetensors") for run in ("sft-4", "sft_dpo-4"))
    attention = [k for k in before if any(p in k for p in ("q_proj", "k_proj", "v_proj", "o_proj"))]
    assert attention and all(not before[k].equal(after[k]) for k in attention)  # the DPO stage trained them
    assert all(before[k].equal(after[k]) for k in before if k not in attention)  # and nothing else
    assert json.loads((root / "sft_dpo-4" / "metrics.json").read_text())["eval"]["tgt"]["n_prompts"] == 2


def test_lora_sft_dpo_saves_merged_weights_that_give_the_trained_models_logits(tmp_path):
    """With LoRA the DPO stage trains a fresh adapter on SFT-merged weights: the run saves the merged
    model, since an adapter alone would load onto the untouched base and lose the SFT stage."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from clo_utils.models import select_trainable
    from clo_utils.pipeline.runs import save_run, sft_model_for_dpo

    tok = make_tokenizer()
    sft, _ = select_trainable(make_model("llama", vocab_size=len(tok)), "lora", lora_r=4)
    for name, p in sft.named_parameters():  # an SFT stage that moved its adapter
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    model = sft_model_for_dpo(sft, "lora", lora_r=4)
    assert not hasattr(sft_model_for_dpo(make_model("llama", vocab_size=len(tok)), "attention", 4), "peft_config")
    for name, p in model.named_parameters():  # and a DPO stage that moved the fresh one
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    ids = torch.tensor([[1, 5, 9, 12, 3]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    trainer = Trainer(
        model=model, args=TrainingArguments(str(tmp_path / "ckpt"), report_to="none"), processing_class=tok
    )
    save_run(tmp_path / "run", trainer, {"method": "sft_dpo_lora"}, {}, {}, merge_lora=True)
    saved = tmp_path / "run" / "model"
    assert (saved / "model.safetensors").exists() and not (saved / "adapter_config.json").exists()
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(saved)(input_ids=ids).logits
    assert torch.allclose(logits, expected, atol=1e-5)
