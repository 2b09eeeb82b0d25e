"""Scale-out on CPU: `accelerate launch` with 2 gloo processes gives the losses of 1 process.

The batching unit of CLO is the seed (4 sequences), so a global batch of 4 seeds is 4 seeds on one
process or 2 + 2 on two. What is checked, on a tiny random Llama saved to disk:

- CLO and SFT (TRL SFTTrainer) per-step losses of the 2-process run equal those of the 1-process
  run at the same global batch (per_device_train_batch_size 2 x 2 processes vs 4 x 1), within
  float tolerance, over several optimizer steps (so the all-reduced gradients agree too);
- the four sequences of a seed (both triples) stay on one process, and per epoch the seeds seen by
  the two processes are disjoint and together complete;
- 1 process with gradient accumulation 2 gives the same losses as the doubled batch;
- CLOTrainer._nll_over_window: the mean of the per-process (rescaled) NLL terms is the
  global token-mean NLL of the 1-process run, which a mean of per-process token means is not.

Sample order: the Trainer's sampler is accelerate's SeedableRandomSampler, seeded with `seed` (no
`data_seed` given) identically on every process; with the default `split_batches=False` the
1-process run takes batch [p0..p3] of the permutation and the 2-process run gives process 0
[p0, p1] and process 1 [p2, p3] (accelerate's BatchSamplerShard hands out consecutive batches of
per_device_train_batch_size). So one global step sees the same 4 seeds either way and nothing has
to be set beyond the same `seed`; the test checks the seed sets per step rather than trusting this.

Launching: `accelerate launch --cpu --num_processes 2` does NOT start two processes (accelerate
1.15 sends --cpu to its "simple" launcher, which only fans out through mpirun; without
--mpirun_hostfile it runs ONE process, silently). params/accelerate/cpu-2proc.yaml therefore says
distributed_type MULTI_GPU (torchrun fan-out) with use_cpu: true, and the training arguments' use_cpu
makes each process pick the gloo backend. The launcher script below asserts world_size == 2.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import make_model, make_tokenizer

REPO = Path(__file__).resolve().parents[2]
CPU_2PROC = REPO / "params" / "accelerate" / "cpu-2proc.yaml"

LAUNCHER = r'''
import json, os, sys
import torch
from clo_utils.data import build_cross_lingual_pairs, build_sft_rows
from clo_utils.models import select_trainable
from clo_utils.train import CLOConfig, CLOTrainer, sft_config, tokenize_clo_pairs, train_sft
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

sys.path.insert(0, os.environ["CLO_TESTS_DIR"])
from tiny_models import seed_rows

args = json.loads(sys.argv[1])
torch.set_num_threads(1)
model_dir, out = args["model_dir"], args["out"]
tok = AutoTokenizer.from_pretrained(model_dir)


class Recording(CLOTrainer):
    """Records, per optimizer step, the seeds this process trained on and its local loss terms."""

    steps = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels, segments = inputs["labels"][:, 1:], inputs.get("segment_ids")
        n_seqs = 4 * len(inputs["seed_index"])
        if segments is None:  # padded: one row per sequence
            counts = (labels != -100).sum(-1).view(-1, 4)
            seqs = list(inputs["input_ids"])
        else:  # packed (padding_free): the sequences of one row, told apart by segment_ids
            counts = segments[:, 1:][labels != -100].bincount(minlength=n_seqs).view(-1, 4)
            seqs = [inputs["input_ids"][segments == k] for k in range(n_seqs)]
        self.steps.append({
            "step": self.state.global_step + 1,
            "seeds": [self.train_dataset[int(i)]["seed_id"] for i in inputs["seed_index"]],
            # The four sequences of a seed, decoded: they must all belong to that seed (checked by the test).
            "texts": [tok.decode(seq, skip_special_tokens=True) for seq in seqs],
            "loss": float(loss.detach()),
            "nll": self._stored_metrics["nll_loss"][-1],
            "cl": self._stored_metrics["cl_loss"][-1],
            "target_tokens": int(counts[:, 2].sum()),
        })
        return loss


rows = seed_rows(8)
model, _ = select_trainable(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), "full")
examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(rows), tok, 256)
config = CLOConfig(output_dir=os.path.join(out, "clo"), per_device_train_batch_size=args["per_device"],
                   gradient_accumulation_steps=args["ga"], max_steps=args["steps"], learning_rate=5e-3,
                   logging_steps=1, save_strategy="no",
                   use_cpu=True, seed=0, ref_cache_dir=os.path.join(out, "ref"), report_to="none",
                   disable_tqdm=True, lr_scheduler_type="constant")  # length-grouped seeds, the default
trainer = Recording(model, config, examples, processing_class=tok)
world = trainer.accelerator.num_processes
rank = trainer.accelerator.process_index
assert world == args["expect_world"], f"expected {args['expect_world']} processes, got {world}"
trainer.train()
clo_history = trainer.state.log_history

# SFT baseline, same process group: TRL SFTTrainer on both languages (2 rows per seed).
sft_model, _ = select_trainable(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), "full")
cfg = sft_config(os.path.join(out, "sft"), max_length=256, device="cpu", max_steps=args["steps"],
                 learning_rate=5e-3, per_device_train_batch_size=args["per_device"], save_strategy="no",
                 gradient_accumulation_steps=args["ga"],
                 logging_steps=1, disable_tqdm=True, seed=0, lr_scheduler_type="constant")
sft_trainer, _ = train_sft(sft_model, tok, build_sft_rows(rows, "both"), cfg)

with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"rank": rank, "world": world, "clo_steps": Recording.steps, "clo_history": clo_history,
               "sft_history": sft_trainer.state.log_history}, f)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accelerate_launch(*args: str) -> list[str]:
    """`accelerate launch` with two CPU processes on a free port, running `args`."""
    accelerate = Path(sys.executable).with_name("accelerate")
    return [
        str(accelerate),
        "launch",
        "--config_file",
        str(CPU_2PROC),
        "--main_process_port",
        str(_free_port()),
        *args,
    ]


def _env() -> dict:
    env = {
        **os.environ,
        "CLO_TESTS_DIR": str(Path(__file__).resolve().parents[1]),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "ACCELERATE_DISABLE_RICH": "1",
    }
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 1-process and one 2-process run of the launcher (CLO then SFT in each)."""
    root = tmp_path_factory.mktemp("mp")
    tok = make_tokenizer()
    make_model("llama", len(tok)).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    script = root / "launch_train.py"
    script.write_text(LAUNCHER)
    steps = 4  # 8 seeds, 4 per global batch: two epochs

    def args(out, per_device, world, ga=1):
        return json.dumps(
            {
                "model_dir": str(root / "model"),
                "out": str(out),
                "per_device": per_device,
                "steps": steps,
                "expect_world": world,
                "ga": ga,
            }
        )

    one, two, accumulated = root / "one", root / "two", root / "ga2"
    one.mkdir(), two.mkdir(), accumulated.mkdir()
    single = subprocess.Popen(
        [sys.executable, str(script), args(one, 4, 1)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ga2 = subprocess.Popen(
        [sys.executable, str(script), args(accumulated, 2, 1, ga=2)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    cmd = _accelerate_launch(str(script), args(two, 2, 2))
    double = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    out_single = single.communicate(timeout=240)[0]
    assert single.returncode == 0, out_single[-4000:]
    out_ga2 = ga2.communicate(timeout=240)[0]
    assert ga2.returncode == 0, out_ga2[-4000:]
    assert double.returncode == 0, (double.stdout + double.stderr)[-4000:]
    one_rank = json.loads((one / "rank0.json").read_text())
    two_ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in range(2)]
    ga2_rank = json.loads((accumulated / "rank0.json").read_text())
    return {"one": one_rank, "two": two_ranks, "ga2": ga2_rank, "steps": steps}


def _losses(history, key="loss"):
    return [(h["step"], h[key]) for h in history if key in h and "train_runtime" not in h]


def test_the_config_really_starts_two_gloo_processes(runs):
    assert [r["world"] for r in runs["two"]] == [2, 2]
    assert sorted(r["rank"] for r in runs["two"]) == [0, 1]


def test_clo_losses_match_one_process_at_the_same_global_batch(runs):
    one, two = runs["one"]["clo_history"], runs["two"][0]["clo_history"]
    for key in ("loss", "nll_loss", "cl_loss", "rewards/margins", "rewards_tgt/margins"):
        a, b = _losses(one, key), _losses(two, key)
        assert len(a) == runs["steps"] and [s for s, _ in a] == [s for s, _ in b], key
        for (step, x), (_, y) in zip(a, b):
            assert y == pytest.approx(x, rel=1e-5, abs=1e-6), f"{key} at step {step}: 1 process {x}, 2 processes {y}"
    # The run really trained (otherwise equal losses would prove little).
    losses = [x for _, x in _losses(one)]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("method", ["clo", "sft"])
def test_one_process_with_accumulation_matches_the_same_global_batch(runs, method):
    """1 process x GA 2 x 2 seeds == 1 process x GA 1 x 4 seeds (== 2 processes x GA 1, above): the
    NLL is the token mean over the accumulated batch, not a mean of per-micro-batch means."""
    keys = ("loss", "nll_loss", "cl_loss", "rewards/margins") if method == "clo" else ("loss",)
    for key in keys:
        a, b = _losses(runs["one"][f"{method}_history"], key), _losses(runs["ga2"][f"{method}_history"], key)
        assert len(a) == runs["steps"] and [s for s, _ in a] == [s for s, _ in b], key
        for (step, x), (_, y) in zip(a, b):
            assert y == pytest.approx(x, rel=1e-5, abs=1e-6), f"{method} {key} at step {step}: GA 1 {x}, GA 2 {y}"


def test_both_triples_of_a_seed_stay_on_one_process_and_seeds_are_disjoint_and_complete(runs):
    one_steps = runs["one"]["clo_steps"]
    per_rank = [r["clo_steps"] for r in runs["two"]]
    all_ids = {f"s{i}" for i in range(8)}
    for rank_steps in per_rank:
        for rec in rank_steps:
            # Each seed's four rows are on this process, in SEQUENCE_ORDER, and carry this seed's text.
            assert len(rec["texts"]) == 4 * len(rec["seeds"])
            for k, seed in enumerate(rec["seeds"]):
                i = int(seed[1:]) % 4
                en_c, en_r, tgt_c, tgt_r = rec["texts"][4 * k : 4 * k + 4]
                from tiny_models import seed_rows

                row = seed_rows(4)[i]
                assert row["prompt_en"] in en_c and row["response_en"] in en_c
                assert row["prompt_en"] in en_r and row["response_tgt"] in en_r
                assert row["prompt_tgt"] in tgt_c and row["response_tgt"] in tgt_c
                assert row["prompt_tgt"] in tgt_r and row["response_en"] in tgt_r
    for step in range(1, runs["steps"] + 1):
        seen = [
            {seed for rec in rank_steps if rec["step"] == step for seed in rec["seeds"]} for rank_steps in per_rank
        ]
        assert seen[0] and seen[1] and not seen[0] & seen[1], f"step {step}: a seed on both processes {seen}"
        single = {seed for rec in one_steps if rec["step"] == step for seed in rec["seeds"]}
        assert seen[0] | seen[1] == single, f"step {step}: 2 processes saw {seen}, 1 process {single}"
    for epoch_steps in ((1, 2), (3, 4)):  # 8 seeds / 4 per step: each epoch covers every seed once
        epoch = [
            seed
            for rank_steps in per_rank
            for rec in rank_steps
            if rec["step"] in epoch_steps
            for seed in rec["seeds"]
        ]
        assert sorted(epoch) == sorted(all_ids), epoch


def test_token_mean_nll_across_processes_is_the_global_token_mean(runs):
    """The claim in CLOTrainer._nll_over_window, on the recorded numbers."""
    one = {rec["step"]: rec for rec in runs["one"]["clo_steps"]}
    per_rank = [{rec["step"]: rec for rec in r["clo_steps"]} for r in runs["two"]]
    differs = False
    for step, ref in one.items():
        a, b = per_rank[0][step], per_rank[1][step]
        assert (a["nll"] + b["nll"]) / 2 == pytest.approx(ref["nll"], rel=1e-5), step
        assert (a["cl"] + b["cl"]) / 2 == pytest.approx(ref["cl"], rel=1e-5), step
        assert a["target_tokens"] + b["target_tokens"] == ref["target_tokens"]
        # Undo the rescaling: the per-process token means, and their plain mean.
        total = ref["target_tokens"]
        means = [r["nll"] * total / (2 * r["target_tokens"]) for r in (a, b)]
        if abs(sum(means) / 2 - ref["nll"]) > 1e-3 * abs(ref["nll"]):
            differs = True
    # The token counts differ between the processes, so a mean of means would have been wrong.
    assert differs


def test_sft_losses_match_one_process_at_the_same_global_batch(runs):
    a, b = _losses(runs["one"]["sft_history"]), _losses(runs["two"][0]["sft_history"])
    assert len(a) == runs["steps"] and [s for s, _ in a] == [s for s, _ in b]
    for (step, x), (_, y) in zip(a, b):
        assert y == pytest.approx(x, rel=1e-5, abs=1e-6), f"SFT loss at step {step}: 1 process {x}, 2 processes {y}"
    assert all(math.isfinite(x) for _, x in a)


def test_the_clo_notebook_under_accelerate_launch_trains_on_two_processes_and_saves_once(tmp_path):
    """The README's multi-GPU command, on CPU: `accelerate launch -m clo_utils.pipeline.launch` runs notebook 03
    on two gloo processes; one executed notebook per process, the weights and train.json once."""
    from tiny_models import seed_rows

    tok = make_tokenizer()
    model_dir, data_dir, out = tmp_path / "model", tmp_path / "data", tmp_path / "clo-8"
    make_model("llama", len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data_dir.mkdir()
    (data_dir / "seeds_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in seed_rows(8)))
    (data_dir / "manifest.json").write_text(json.dumps({"lang": "ca", "translator": {"backend": "test"}}))
    params = {
        "data_dir": data_dir,
        "output_dir": out,
        "n_seeds": 8,
        "model_id": model_dir,
        "batch_seeds": 2,
        "device": "cpu",
        "dtype": "float32",
        "max_length": 256,
        "num_threads": 1,
        "ref_cache_dir": tmp_path / "ref",
    }
    cmd = _accelerate_launch(
        "-m",
        "clo_utils.pipeline.launch",
        str(REPO / "notebooks" / "03_clo_training.ipynb"),
        str(out / "03.ipynb"),
        "--log-output",
        "-k",
        "python3",
    )
    for name, value in params.items():
        cmd += ["-p", name, str(value)]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=480, cwd=REPO)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert (out / "03.ipynb").exists() and (out / "03.rank1.ipynb").exists()
    train = json.loads((out / "train.json").read_text())
    steps = [h["step"] for h in train["history"] if "loss" in h and "train_runtime" not in h]
    assert steps == [1, 2]  # 8 seeds, 2 per process, 2 processes: 2 steps (1 process would take 4)
    assert (out / "model" / "model.safetensors").exists() and (out / "model" / "tokenizer.json").exists()
    assert not list(out.glob("checkpoints*"))


def test_the_runner_launches_a_training_stage_on_two_processes_saves_once_and_matches_one_process(
    tmp_path, monkeypatch
):
    """A recipe's train.launch: the batch runner starts the CLO stage through `accelerate launch` with
    cpu-2proc.yaml (two gloo processes, 2 seeds each); the run is saved once, its per-step losses equal
    those of notebook 03 run in one process with the same global batch (4 seeds), and a rerun finds the
    stage complete."""
    import papermill
    import yaml
    from tiny_models import save_tiny_llama, tiny_recipe

    from clo_utils.pipeline import runner
    from clo_utils.pipeline.stage_notebooks import NOTEBOOKS_DIR

    for name, value in _env().items():  # inherited by accelerate, the processes and their kernels
        monkeypatch.setenv(name, value)
    model_dir = save_tiny_llama(tmp_path / "model")
    recipe = tiny_recipe(model_dir, languages=["ca"], budgets=[12], methods=["clo"])
    recipe["train"]["ref_cache_dir"] = str(tmp_path / "ref")
    recipe["train"]["launch"] = {"config": str(CPU_2PROC), "main_process_port": _free_port()}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    runs_root = str(tmp_path / "runs")

    records = runner.run_recipe(path, runs_root=runs_root)
    assert {r["stage"]: r["status"] for r in records}["clo-12 train"] == "done"
    run = tmp_path / "runs" / "tiny" / "ca" / "clo-12"
    assert (run / "03_clo_training.ipynb").exists() and (run / "03_clo_training.rank1.ipynb").exists()
    assert "--config_file" in (run / "launch.log").read_text().splitlines()[0]
    assert yaml.safe_load((run / "launch-parameters.yaml").read_text())["n_seeds"] == 12
    assert sorted(p.name for p in (run / "model").glob("*.safetensors")) == ["model.safetensors"]
    assert not list(run.glob("checkpoints*")) and (run / "metrics.json").exists()
    two = json.loads((run / "train.json").read_text())
    assert two["summary"]["precision"]["mode"] == "fp32"

    stage = next(s for s in runner.plan_stages(runner.load_recipe(path), runs_root) if s.kind == "train")
    one_dir = tmp_path / "one" / "clo-12"
    papermill.execute_notebook(
        str(NOTEBOOKS_DIR / "03_clo_training.ipynb"),
        str(tmp_path / "one.ipynb"),
        parameters={**stage.parameters, "batch_seeds": 4, "output_dir": str(one_dir)},
        kernel_name="python3",
        progress_bar=False,
        cwd=str(REPO),
    )
    one = json.loads((one_dir / "train.json").read_text())
    kept = two["summary"]["seeds_kept"]  # the seeds within max_length, 4 per global step
    assert kept == one["summary"]["seeds_kept"] and kept > 4
    for key in ("loss", "nll_loss", "cl_loss"):
        a, b = _losses(one["history"], key), _losses(two["history"], key)
        assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, math.ceil(kept / 4) + 1)), key
        for (step, x), (_, y) in zip(a, b):
            assert y == pytest.approx(x, rel=1e-5, abs=1e-6), f"{key} at step {step}: 1 process {x}, 2 processes {y}"

    again = runner.run_recipe(path, runs_root=runs_root)
    assert {r["stage"]: r["status"] for r in again}["clo-12 train"] == "skipped (complete)"


def test_train_launch_is_checked_and_becomes_the_accelerate_command(tmp_path):
    import yaml

    from clo_utils.pipeline import runner
    from clo_utils.pipeline.recipe import RecipeError

    base = {"name": "x", "languages": ["ca"], "budgets": [4], "methods": ["clo"]}

    def load(launch):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump({**base, "train": {"launch": launch}}, sort_keys=False))
        return runner.load_recipe(path)

    with pytest.raises(RecipeError, match=r"r\.yaml, line \d+: train.launch.config: no such accelerate config file"):
        load({"config": "params/accelerate/missing.yaml"})
    with pytest.raises(RecipeError, match=r"train.launch.num_process: Extra inputs are not permitted"):
        load({"config": str(CPU_2PROC), "num_process": 2})
    with pytest.raises(RecipeError, match=r"train.launch: expected a mapping \{config: "):
        load("params/accelerate/cpu-2proc.yaml")
    recipe = load({"config": "params/accelerate/ddp-multigpu.yaml", "num_processes": 8, "main_process_port": 29600})
    stages = runner.plan_stages(recipe, str(tmp_path / "runs"))
    train = [s for s in stages if s.kind == "train"]
    assert train and all(s.launch["num_processes"] == 8 for s in train)
    assert all(s.launch is None for s in stages if s.kind != "train")
    assert "launch" not in train[0].parameters  # not a notebook parameter
    cmd = runner.launch_command(train[0].launch, Path("nb.ipynb"), Path("out.ipynb"), Path("p.yaml"), "/repo")
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[3:9] == [
        "--config_file",
        str(REPO / "params" / "accelerate" / "ddp-multigpu.yaml"),
        "--num_processes",
        "8",
        "--main_process_port",
        "29600",
    ]
    assert cmd[9:13] == ["-m", "clo_utils.pipeline.launch", "nb.ipynb", "out.ipynb"]
    assert cmd[13:15] == ["-f", "p.yaml"] and cmd[cmd.index("--cwd") + 1] == "/repo"
