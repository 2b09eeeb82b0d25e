"""The stages of a recipe: data, then per run a training and an evaluation stage, then the analysis.

`plan_stages` turns a loaded recipe into `Stage`s in execution order, each with its notebook, its
working folder, the file it writes last and the notebook parameters it runs with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..common.methods import split_method
from ..common.runfiles import run_path
from .recipe import judge_baseline_for, run_folders, train_seeds
from .stage_notebooks import NB_ANALYSIS, NB_DATA, NB_EVAL, notebook_parameters


class StageFailed(RuntimeError):
    pass


@dataclass
class Stage:
    lang: str
    name: str  # e.g. "data", "clo-100 train", "clo-100 eval"
    notebook: str
    workdir: Path  # where outputs and the executed notebook go
    done_file: Path  # the notebook's last output
    parameters: dict = field(default_factory=dict)
    kind: str = ""  # data | train | eval | analysis
    reads: tuple[str, ...] = ()  # keys of the stages whose outputs this one reads
    fingerprint: str = ""  # set by assess_stages
    read_fingerprints: dict = field(default_factory=dict)  # fingerprints of the stages it reads
    code: dict = field(default_factory=dict)  # {file: code hash} of what it runs (set by assess_stages)
    state: str = ""  # complete | stale | missing (set by assess_stages)
    why: str = ""  # what made it stale, or that it was interrupted
    launch: dict | None = None  # train.launch: run under `accelerate launch` (runner.launch_command)

    @property
    def key(self) -> str:
        return f"{self.lang}/{self.name}"

    @property
    def record_path(self) -> Path:
        return self.workdir / f"stage-{self.kind}.json"

    @property
    def aside(self) -> Path:
        """Where the outputs of a stale stage wait until the rerun completes."""
        return (
            self.workdir / ".stale-eval"
            if self.kind == "eval"
            else self.workdir.with_name(self.workdir.name + ".stale")
        )


def _only(params: dict, notebook: str) -> dict:
    known = notebook_parameters(notebook)
    return {k: v for k, v in params.items() if k in known}


def _training_order(recipe: dict) -> list[tuple[str, int, int, str]]:
    """(method, budget, training seed, folder) of every trained run (recipe.run_folders: seed, then
    budget, then method); a judge baseline's run goes right before the first run judged against it,
    because every evaluation stage judges its answers against the baseline's (judge_runs skips runs
    whose baseline has no answers yet)."""
    order = run_folders(recipe)
    if (recipe.get("evaluate") or {}).get("judge_backend", "none") == "none":
        return order
    by_folder = {run[3]: run for run in order}
    out = []
    for run in order:
        baseline = by_folder.get(judge_baseline_for(recipe, run[2]))
        out += [x for x in (baseline, run) if x is not None and x not in out]
    return out


# Parameters in which an SFT+DPO run may differ from the SFT run whose model starts its DPO stage.
_DPO_STAGE_ONLY = frozenset(
    {
        "method",
        "output_dir",
        "then_dpo",
        "dpo_beta",
        "dpo_learning_rate",
        "dpo_epochs",
        "dpo_trainer",
        "sft_run_dir",
        "ref_cache_dir",
        "num_threads",
    }
)


def _start_dpo_from_sft_runs(runs: dict[str, tuple[str, dict]]) -> dict[str, tuple[str, dict]]:
    """The runs in execution order, each SFT+DPO run given `sft_run_dir` when the recipe trains an SFT run
    with the same parameters otherwise (same budget, seed, trainable set, overrides), and placed after it:
    its DPO stage then starts from that run's model instead of training the same SFT stage again."""
    out: dict[str, tuple[str, dict]] = {}
    for folder, (notebook, params) in runs.items():
        if params.get("then_dpo"):
            same = {k: v for k, v in params.items() if k not in _DPO_STAGE_ONLY}
            for sft_folder, (sft_notebook, sft) in runs.items():
                if sft_notebook == notebook and not sft.get("then_dpo"):
                    if {k: v for k, v in sft.items() if k not in _DPO_STAGE_ONLY} == same:
                        out.setdefault(sft_folder, (sft_notebook, sft))  # the SFT run goes first
                        params = {**params, "sft_run_dir": sft["output_dir"]}
                        break
        out.setdefault(folder, (notebook, params))
    return out


def recipe_runs_root(recipe: dict, runs_root: str | None = None) -> Path:
    """The folder holding every recipe's runs (--runs-root, else the recipe's runs_root, else runs/); a
    relative one is taken from the repository root in a checkout, else from the working folder."""
    return run_path(runs_root or recipe.get("runs_root") or "runs")


def recipe_root(recipe: dict, runs_root: str | None = None) -> Path:
    """<runs_root>/<name>."""
    return recipe_runs_root(recipe, runs_root) / recipe["name"]


def plan_stages(recipe: dict, runs_root: str | None = None, num_threads: int = 0) -> list[Stage]:
    """Every stage of the recipe but the analysis, in execution order. The data stage, base-0 and
    every evaluation take the sampling `seed`; each training stage takes its training seed."""
    root = recipe_root(recipe, runs_root)
    seed = recipe.get("seed", 0)
    budgets = sorted(recipe["budgets"])
    # Every notebook gets the runs root too (its paths are absolute already): one value, whichever notebook.
    common = {"seed": seed, "num_threads": num_threads, "runs_root": str(recipe_runs_root(recipe, runs_root))}
    several_seeds = len(train_seeds(recipe)) > 1
    evaluate = recipe.get("evaluate") or {}
    judged = evaluate.get("judge_backend", "none") != "none"
    stages = []
    for lang in recipe["languages"]:
        data_dir = root / lang / "data"
        data_params = {
            **(recipe.get("data") or {}),
            "language": lang,
            "output_dir": str(data_dir),
            **({"n_seeds": budgets[-1]} if budgets else {}),
            **common,
        }
        stages.append(
            Stage(
                lang, "data", NB_DATA, data_dir, data_dir / "manifest.json", _only(data_params, NB_DATA), kind="data"
            )
        )
        data_key = f"{lang}/data"
        eval_common = {**evaluate, "data_dir": str(data_dir), "language": lang, **common}

        def eval_params(run_dir: Path, train_seed: int | None) -> dict:
            baseline = (
                {"judge_baseline": judge_baseline_for(recipe, train_seed)}
                if several_seeds and "judge_baseline" in evaluate
                else {}
            )
            return _only({**eval_common, **baseline, "run_dirs": [str(run_dir)]}, NB_EVAL)  # noqa: B023 (used in this pass)

        base_dir = root / lang / "base-0"
        stages.append(
            Stage(
                lang,
                "base-0 eval",
                NB_EVAL,
                base_dir,
                base_dir / "metrics.json",
                eval_params(base_dir, None),
                kind="eval",
                reads=(data_key,),
            )
        )
        trained = {}  # folder -> (notebook, parameters) of every trained run, in execution order
        for method, n, train_seed, folder in _training_order(recipe):
            _, notebook, fixed = split_method(method)
            overrides = (recipe.get("method_params") or {}).get(method) or {}
            params = {
                **(recipe.get("train") or {}),
                **fixed,
                **overrides,
                "data_dir": str(data_dir),
                "output_dir": str(root / lang / folder),
                "n_seeds": n,
                "method": method,
                "recipe": recipe["name"],
                **common,
                "seed": train_seed,
            }
            trained[folder] = (notebook, _only(params, notebook))
        for folder, (notebook, params) in _start_dpo_from_sft_runs(trained).items():
            run_dir = root / lang / folder
            sft_folder = Path(params.get("sft_run_dir", "")).name
            train = Stage(
                lang,
                f"{folder} train",
                notebook,
                run_dir,
                run_dir / "train.json",
                params,
                kind="train",
                reads=(data_key,) + ((f"{lang}/{sft_folder} train",) if sft_folder else ()),
                launch=(recipe.get("train") or {}).get("launch"),
            )
            baseline = judge_baseline_for(recipe, params["seed"])
            reads = (data_key, train.key) + ((f"{lang}/{baseline} eval",) if judged and folder != baseline else ())
            stages += [
                train,
                Stage(
                    lang,
                    f"{folder} eval",
                    NB_EVAL,
                    run_dir,
                    run_dir / "metrics.json",
                    eval_params(run_dir, params["seed"]),
                    kind="eval",
                    reads=reads,
                ),
            ]
    return stages


def analysis_stage(recipe: dict, runs_root: str | None = None, stages: list[Stage] = ()) -> Stage:
    root = recipe_root(recipe, runs_root)
    params = {
        **(recipe.get("analysis") or {}),
        "runs_root": str(recipe_runs_root(recipe, runs_root)),
        "recipe_dir": str(root),
    }
    return Stage(
        "all",
        "analysis",
        NB_ANALYSIS,
        root,
        root / "REPORT.md",
        _only(params, NB_ANALYSIS),
        kind="analysis",
        reads=tuple(s.key for s in stages if s.kind == "eval"),
    )
