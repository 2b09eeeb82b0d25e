"""SFT+DPO: the DPO stage starts from the recipe's SFT run of the same settings instead of training SFT again."""

import json
import os
import re
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
    assert dpo["run"]["sft_run_dir"] == "sft-4" and dpo["run"]["dpo_trainer"] == "kit"  # relative: runs folders move
    # the DPO stage's own settings default to the SFT stage's, and are recorded
    assert dpo["run"]["dpo_settings"] == {"learning_rate": 1e-3, "num_train_epochs": 1.0, "beta": 0.1}
    assert dpo["run"]["seeds_sha256"] == sft["run"]["seeds_sha256"]
    assert [h for h in dpo["history"] if h["stage"] == "sft"] == sft["history"]  # SFT was not trained again
    assert dpo["summary"]["sft"]["train_seconds"] == sft["summary"]["train_seconds"]
    assert {h["stage"] for h in dpo["history"]} == {"sft", "dpo"}
    assert dpo["summary"]["dpo"]["reference_seeds_computed"] == 4  # the SFT model scored as the reference
    before, after = (load_file(root / run / "model" / "model.safetensors") for run in ("sft-4", "sft_dpo-4"))
    attention = [k for k in before if any(p in k for p in ("q_proj", "k_proj", "v_proj", "o_proj"))]
    assert attention and all(not before[k].equal(after[k]) for k in attention)  # the DPO stage trained them
    assert all(before[k].equal(after[k]) for k in before if k not in attention)  # and nothing else
    assert json.loads((root / "sft_dpo-4" / "metrics.json").read_text())["eval"]["tgt"]["n_prompts"] == 2

    # the runs root moved: every stage is complete, and a rerun runs none
    shutil.move(tmp_path / "runs", tmp_path / "moved")
    cmd[cmd.index(str(tmp_path / "runs"))] = str(tmp_path / "moved")
    dry = subprocess.run([*cmd, "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    states = [line.split()[-1] for line in dry.stdout.splitlines() if line.startswith(("ca ", "all "))]
    assert len(states) == 7 and set(states) == {"complete"}, dry.stdout
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    statuses = re.findall(r"^\[(?:analysis )?\d+/\d+\] \S+ .+?: (.+)$", again.stdout, flags=re.M)
    assert statuses == ["skipped (complete)"] * 7, again.stdout


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


def test_sft_settings_and_check_sft_run_compare_the_data_by_content_not_by_path(tmp_path):
    from clo_utils.pipeline.runs import seeds_digest, sft_settings

    params = {**dict.fromkeys(SFT_SETTINGS, 1), "data_dir": "/old/runs/t/ca/data"}
    assert sft_settings(params) == sft_settings({**params, "data_dir": "/new/runs/t/ca/data"})
    assert "data_dir" not in SFT_SETTINGS
    seeds = [{"id": "a", "prompt_tgt": "Hola"}, {"id": "b", "prompt_tgt": "Adéu"}]
    run = {"variant": "both", "then_dpo": False, "sft_settings": _settings(), "seed_ids": ["a", "b"]}
    write_train(tmp_path, {"run": {**run, "seeds_sha256": seeds_digest(seeds)}, "history": [], "summary": {}})
    assert check_sft_run(tmp_path, _settings(), ["a", "b"], seeds_digest(seeds))
    retranslated = [seeds[0], {**seeds[1], "prompt_tgt": "Adeu"}]  # same ids, other content
    assert seeds_digest(retranslated) != seeds_digest(seeds)
    with pytest.raises(ValueError, match=r"train\.json: the SFT run's seeds differ in content"):
        check_sft_run(tmp_path, _settings(), ["a", "b"], seeds_digest(retranslated))


def test_the_dpo_stage_settings_default_to_the_sft_stages():
    from clo_utils.pipeline.runs import dpo_stage_settings

    params = {"learning_rate": 5e-5, "num_train_epochs": 2.0, "dpo_beta": 0.1}
    assert dpo_stage_settings({**params, "dpo_learning_rate": 0.0, "dpo_epochs": 0.0}) == {
        "learning_rate": 5e-5,
        "num_train_epochs": 2.0,
        "beta": 0.1,
    }
    assert dpo_stage_settings({**params, "dpo_learning_rate": 1e-6, "dpo_epochs": 3.0}) == {
        "learning_rate": 1e-6,
        "num_train_epochs": 3.0,
        "beta": 0.1,
    }


def _save_sft_run(model, tok, run_dir: Path) -> dict:
    model.save_pretrained(run_dir / "model")
    tok.save_pretrained(run_dir / "model")
    return load_file(run_dir / "model" / "model.safetensors")


def test_the_kit_dpo_stage_starts_from_the_sft_run_and_scores_its_reference_with_it(tmp_path):
    """The notebook's path from a finished SFT run: load it, choose the trainable set, train with the kit's
    trainer at lam = 0. At step 0 the trainable weights are the SFT run's saved ones (not the base model's),
    and the reference log-probs are the SFT model's, computed here independently."""
    import torch
    from tiny_models import clo_config, seed_rows
    from transformers import AutoModelForCausalLM, TrainerCallback

    from clo_utils.data import build_cross_lingual_pairs
    from clo_utils.losses import sequence_logps
    from clo_utils.models import load_model_and_tokenizer, select_trainable
    from clo_utils.pipeline.runs import load_sft_run_model
    from clo_utils.train import tokenize_clo_pairs, train_clo

    base, tok = load_model_and_tokenizer(str(save_tiny_llama(tmp_path / "base")), dtype="float32")
    base_weights = {k: v.clone() for k, v in base.state_dict().items()}
    torch.manual_seed(0)
    with torch.no_grad():  # an SFT stage that moved the attention weights
        for name, p in base.named_parameters():
            if "self_attn" in name:
                p.add_(0.05 * torch.randn_like(p))
    saved = _save_sft_run(base, tok, tmp_path / "sft-4")

    class AtStepZero(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    model, tok = load_sft_run_model(tmp_path / "sft-4", dtype="float32")
    model, _ = select_trainable(model, "attention")
    pairs = build_cross_lingual_pairs(seed_rows(2))
    start = AtStepZero()
    trainer, summary = train_clo(model, tok, pairs, clo_config(tmp_path, lam=0.0, max_steps=1), callbacks=[start])
    attention = [k for k in saved if "self_attn" in k]
    assert sorted(start.weights) == sorted(attention)
    for name in attention:
        assert torch.equal(start.weights[name], saved[name]), name
        assert not torch.equal(start.weights[name], base_weights[name]), name
    assert summary["reference_seeds_computed"] == 2

    sft = AutoModelForCausalLM.from_pretrained(tmp_path / "sft-4" / "model").eval()
    untouched = AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    examples, _ = tokenize_clo_pairs(pairs, tok, 512)

    def logps(m, ex):
        with torch.no_grad():
            return [
                sequence_logps(m(input_ids=torch.tensor([ids])).logits, torch.tensor([labels]))[0].item()
                for ids, labels in zip(ex["input_ids"], ex["labels"])
            ]

    ref = {row["index"]: row["ref_logps"] for row in trainer.train_dataset}
    for ex in examples:
        assert ref[ex["index"]] == pytest.approx(logps(sft, ex), abs=1e-4)
        assert ref[ex["index"]] != pytest.approx(logps(untouched, ex), abs=1e-2)


def test_a_bf16_reload_of_the_sft_run_keeps_its_fp32_master_weights(tmp_path):
    """On a GPU the SFT stage trains fp32 masters of bf16 weights and saves them in fp32; the DPO stage loads
    the run in bf16, which would round them. load_sft_run_model puts the saved fp32 values back."""
    import torch
    from transformers import AutoModelForCausalLM

    from clo_utils.models import load_model_and_tokenizer, select_trainable
    from clo_utils.pipeline.runs import load_sft_run_model

    model, tok = load_model_and_tokenizer(str(save_tiny_llama(tmp_path / "base")), dtype="bfloat16")
    model, _ = select_trainable(model, "attention")
    for p in model.parameters():  # prepare_mixed_precision, then updates smaller than a bf16 step
        if p.requires_grad:
            p.data = p.data.float() + 1e-5
    saved = _save_sft_run(model, tok, tmp_path / "sft-4")
    attention = [k for k in saved if "self_attn" in k]
    assert attention and all(saved[k].dtype == torch.float32 for k in attention)
    assert all(saved[k].dtype == torch.bfloat16 for k in saved if k not in attention)

    rounded = dict(
        AutoModelForCausalLM.from_pretrained(tmp_path / "sft-4" / "model", dtype=torch.bfloat16).named_parameters()
    )
    assert any(not torch.equal(rounded[k].float(), saved[k]) for k in attention)  # what a plain reload loses

    kept, _ = load_sft_run_model(tmp_path / "sft-4", dtype="bfloat16")
    kept = dict(kept.named_parameters())
    for name in attention:
        assert kept[name].dtype == torch.float32 and torch.equal(kept[name], saved[name]), name
    for name in set(saved) - set(attention):
        assert kept[name].dtype == torch.bfloat16 and torch.equal(kept[name], saved[name]), name
