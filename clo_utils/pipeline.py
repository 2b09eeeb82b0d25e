"""Batch runner: one recipe YAML -> languages x seed budgets x methods, executed with papermill.

    python -m clo_utils.pipeline params/demo.yaml [--jobs 2] [--dry-run]

Every stage writes into runs/<recipe>/<lang>/... (docs/run-layout.md) and leaves its executed
notebook there as provenance. A stage whose completion file exists is skipped, so a killed run
is resumed by running the same command again; a failed stage stops the run with the path of its
executed notebook and the cell that failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NB_DATA, NB_SFT, NB_CLO, NB_EVAL, NB_ANALYSIS = (
    "01_translate_data", "02_sft_baseline", "03_clo_training", "04_evaluate", "05_analysis")

# Method name -> (notebook, fixed parameters). A suffix _full / _lora trains that parameter set.
METHODS = {
    "sft": (NB_SFT, {"variant": "both"}),
    "sft_en": (NB_SFT, {"variant": "en"}),
    "sft_tgt": (NB_SFT, {"variant": "tgt"}),
    "sft_dpo": (NB_SFT, {"variant": "both", "then_dpo": True}),
    "clo": (NB_CLO, {}),
    "clo_nll_both": (NB_CLO, {"nll_on": "both"}),
}
TRAINABLE_SUFFIXES = {"_full": "full", "_lora": "lora", "_attention": "attention"}
RECIPE_KEYS = {
    "name": "recipe name: outputs go to <runs_root>/<name>/",
    "description": "one line on what the recipe is for",
    "runs_root": "folder holding every recipe's runs (default: runs)",
    "languages": "target languages (ISO codes)",
    "budgets": "seed budgets (nested: smaller budgets are prefixes of the largest)",
    "methods": f"methods to train: {sorted(METHODS)} (+ _full / _lora suffixes)",
    "seed": "random seed of every stage",
    "jobs": "languages run side by side in separate processes (threads are split between them)",
    "data": f"parameters of {NB_DATA}",
    "train": f"parameters shared by {NB_SFT} and {NB_CLO}",
    "method_params": "per-method parameter overrides: {method: {param: value}}",
    "evaluate": f"parameters of {NB_EVAL}",
    "analysis": f"parameters of {NB_ANALYSIS}",
}


def _key_lines(path: Path) -> dict[tuple[str, ...], int]:
    """Line number of every mapping key in a YAML file, so errors can point at the line."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = (*prefix, str(key_node.value))
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)

    walk(yaml.compose(path.read_text(encoding="utf-8")), ())
    return lines


def notebook_parameters(name: str) -> dict:
    """The typed parameters of a notebook's `parameters` cell (papermill's own inference)."""
    import papermill

    return papermill.inspect_notebook(str(NOTEBOOKS_DIR / f"{name}.ipynb"))


def split_method(method: str) -> tuple[str, str, dict]:
    """'clo_full' -> ('clo', notebook, {'trainable': 'full'}); unknown names are a clear error."""
    for suffix, trainable in TRAINABLE_SUFFIXES.items():
        if method.endswith(suffix) and method[: -len(suffix)] in METHODS:
            base = method[: -len(suffix)]
            notebook, fixed = METHODS[base]
            return base, notebook, {**fixed, "trainable": trainable}
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(METHODS)} with optional suffixes "
                         f"{sorted(TRAINABLE_SUFFIXES)}")
    notebook, fixed = METHODS[method]
    return method, notebook, dict(fixed)


def load_recipe(path: str | os.PathLike) -> dict:
    """Read and validate a recipe: every key must be known, every parameter a notebook parameter."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"recipe {path} not found")
    recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    lines = _key_lines(path)

    def fail(keys: tuple[str, ...], message: str):
        line = lines.get(keys)
        where = f"{path}, line {line}" if line else str(path)
        raise ValueError(f"{where}: {message}")

    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping, got {type(recipe).__name__}")
    for key in recipe:
        if key not in RECIPE_KEYS:
            fail((key,), f"unknown key {key!r}; known keys: {', '.join(RECIPE_KEYS)}")
    for key in ("name", "languages"):
        if key not in recipe:
            raise ValueError(f"{path}: missing key {key!r} ({RECIPE_KEYS[key]})")
    recipe.setdefault("budgets", [])
    recipe.setdefault("methods", [])
    if recipe["methods"] and not recipe["budgets"]:
        fail(("methods",), "methods need at least one budget under 'budgets'")
    from .languages import get_language

    for lang in recipe["languages"]:
        try:
            get_language(lang)
        except ValueError as err:
            fail(("languages",), str(err))

    sections = {"data": [NB_DATA], "train": [NB_SFT, NB_CLO], "evaluate": [NB_EVAL], "analysis": [NB_ANALYSIS]}
    for section, notebooks in sections.items():
        known = set().union(*(notebook_parameters(nb) for nb in notebooks))
        for param in recipe.get(section) or {}:
            if param not in known:
                fail((section, param), f"{section}.{param} is not a parameter of {' or '.join(notebooks)}; "
                                       f"known: {', '.join(sorted(known))}")
    for method in recipe["methods"]:
        try:
            split_method(method)
        except ValueError as err:
            fail(("methods",), str(err))
    for method, params in (recipe.get("method_params") or {}).items():
        try:
            _, notebook, _ = split_method(method)
        except ValueError as err:
            fail(("method_params", method), str(err))
        known = notebook_parameters(notebook)
        for param in params or {}:
            if param not in known:
                fail(("method_params", method, param), f"{param} is not a parameter of {notebook}; "
                                                       f"known: {', '.join(sorted(known))}")
    evaluate = recipe.get("evaluate") or {}
    if evaluate.get("judge_backend", "none") != "none":
        runs = {"base-0"} | {f"{m}-{n}" for m in recipe["methods"] for n in recipe["budgets"]}
        if evaluate.get("judge_baseline") not in runs:
            fail(("evaluate", "judge_baseline"), f"judge_baseline {evaluate.get('judge_baseline')!r} is not a run of "
                                                 f"this recipe; one of {sorted(runs)}")
    recipe["_path"] = str(path)
    return recipe


# --------------------------------------------------------------------------- stages


@dataclass
class Stage:
    lang: str
    name: str             # e.g. "data", "clo-100 train", "clo-100 eval"
    notebook: str
    workdir: Path          # where outputs and the executed notebook go
    done_file: Path        # the stage is complete when this exists
    parameters: dict = field(default_factory=dict)


def _only(params: dict, notebook: str) -> dict:
    known = notebook_parameters(notebook)
    return {k: v for k, v in params.items() if k in known}


def _training_order(recipe: dict, budgets: list[int]) -> list[tuple[str, int]]:
    """(method, budget) pairs, smallest budget first; the judge baseline's run goes first of all,
    because every evaluation stage judges its answers against the baseline's (judge_runs skips
    runs whose baseline has no answers yet)."""
    order = [(method, n) for n in budgets for method in recipe["methods"]]
    evaluate = recipe.get("evaluate") or {}
    if evaluate.get("judge_backend", "none") != "none":
        baseline = [(m, n) for m, n in order if f"{m}-{n}" == evaluate.get("judge_baseline")]
        order = baseline + [x for x in order if x not in baseline]
    return order


def plan_stages(recipe: dict, runs_root: str | None = None, num_threads: int = 0) -> list[Stage]:
    """Every stage of the recipe, in execution order."""
    root = Path(runs_root or recipe.get("runs_root", "runs")) / recipe["name"]
    seed = recipe.get("seed", 0)
    budgets = sorted(recipe["budgets"])
    common = {"seed": seed, "num_threads": num_threads}
    stages = []
    for lang in recipe["languages"]:
        data_dir = root / lang / "data"
        data_params = {**(recipe.get("data") or {}), "language": lang, "output_dir": str(data_dir),
                       **({"n_seeds": budgets[-1]} if budgets else {}), **common}
        stages.append(Stage(lang, "data", NB_DATA, data_dir, data_dir / "manifest.json", _only(data_params, NB_DATA)))
        eval_common = {**(recipe.get("evaluate") or {}), "data_dir": str(data_dir), "language": lang, **common}
        base_dir = root / lang / "base-0"
        stages.append(Stage(lang, "base-0 eval", NB_EVAL, base_dir, base_dir / "metrics.json",
                            _only({**eval_common, "run_dirs": [str(base_dir)]}, NB_EVAL)))
        for method, n in _training_order(recipe, budgets):
            _, notebook, fixed = split_method(method)
            run_dir = root / lang / f"{method}-{n}"
            params = {**(recipe.get("train") or {}), **fixed, **((recipe.get("method_params") or {}).get(method) or {}),
                      "data_dir": str(data_dir), "output_dir": str(run_dir), "n_seeds": n, "method": method,
                      "recipe": recipe["name"], **common}
            stages.append(Stage(lang, f"{method}-{n} train", notebook, run_dir, run_dir / "train.json",
                                _only(params, notebook)))
            stages.append(Stage(lang, f"{method}-{n} eval", NB_EVAL, run_dir, run_dir / "metrics.json",
                                _only({**eval_common, "run_dirs": [str(run_dir)]}, NB_EVAL)))
    return stages


def analysis_stage(recipe: dict, runs_root: str | None = None) -> Stage:
    root = Path(runs_root or recipe.get("runs_root", "runs")) / recipe["name"]
    params = {**(recipe.get("analysis") or {}), "runs_root": str(root)}
    return Stage("all", "analysis", NB_ANALYSIS, root, root / "REPORT.md", _only(params, NB_ANALYSIS))


class StageFailed(RuntimeError):
    pass


def run_stage(stage: Stage, force: bool = False) -> dict:
    """Execute one stage with papermill unless its completion file exists."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    if stage.done_file.exists() and not force:
        return {"lang": stage.lang, "stage": stage.name, "status": "skipped (complete)", "seconds": 0.0,
                "seconds_when_run": _executed_seconds(stage)}
    stage.workdir.mkdir(parents=True, exist_ok=True)
    executed = stage.workdir / f"{stage.notebook}.ipynb"
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(NOTEBOOKS_DIR / f"{stage.notebook}.ipynb"), str(executed),
                                   parameters=stage.parameters, kernel_name="python3", progress_bar=False,
                                   cwd=os.getcwd())
    except PapermillExecutionError as err:
        raise StageFailed(f"stage '{stage.name}' ({stage.lang}) failed in cell {err.exec_count} "
                          f"[{err.ename}: {err.evalue}]; executed notebook: {executed}") from None
    seconds = time.perf_counter() - start
    if not stage.done_file.exists():
        raise StageFailed(f"stage '{stage.name}' ({stage.lang}) ran but did not write {stage.done_file}; "
                          f"executed notebook: {executed}")
    return {"lang": stage.lang, "stage": stage.name, "status": "done", "seconds": round(seconds, 1)}


def _executed_seconds(stage: Stage) -> float:
    """How long a completed stage took when it ran: papermill records it in the executed notebook."""
    try:
        executed = json.loads((stage.workdir / f"{stage.notebook}.ipynb").read_text(encoding="utf-8"))
        return round(float(executed["metadata"]["papermill"]["duration"]), 1)
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def run_stages(stages: list[Stage], label: str = "", force: bool = False, after_each=None) -> list[dict]:
    """Run stages in order; `after_each(records)` is called after every stage (timings survive a kill)."""
    records = []
    for i, stage in enumerate(stages, 1):
        print(f"[{label}{i}/{len(stages)}] {stage.lang} {stage.name} ({stage.notebook}) ...", flush=True)
        record = run_stage(stage, force=force)
        print(f"[{label}{i}/{len(stages)}] {stage.lang} {stage.name}: {record['status']}"
              + (f" in {record['seconds']:.0f} s" if record["status"] == "done" else ""), flush=True)
        records.append(record)
        if after_each:
            after_each(records)
    return records


def _run_language(stages: list[Stage], lang: str, threads: int) -> list[dict]:
    # A worker process of its own: its kernels inherit these, so side-by-side languages do not
    # oversubscribe the cores (notebooks without a num_threads parameter included).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    return run_stages([s for s in stages if s.lang == lang], label=f"{lang} ")


def run_recipe(path: str | os.PathLike, runs_root: str | None = None, jobs: int | None = None,
               dry_run: bool = False) -> list[dict]:
    recipe = load_recipe(path)
    jobs = max(1, int(jobs or recipe.get("jobs", 1)))
    jobs = min(jobs, len(recipe["languages"]))
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    stages = plan_stages(recipe, runs_root, num_threads=threads)
    final = analysis_stage(recipe, runs_root)
    if dry_run:
        for s in [*stages, final]:
            state = "complete" if s.done_file.exists() else "to run"
            print(f"{s.lang:4} {s.name:28} {s.notebook:18} {state}")
        return []
    start, started = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    print(f"recipe {recipe['name']}: {len(stages) + 1} stages, {len(recipe['languages'])} language(s), jobs={jobs}",
          flush=True)
    records: list[dict] = []
    try:
        if jobs == 1:
            records += run_stages(stages, after_each=lambda done: _write_timings(
                final.workdir, done, started, time.perf_counter() - start, jobs))
        else:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(_run_language, stages, lang, threads) for lang in recipe["languages"]]
                for future in futures:
                    records += future.result()
        _write_timings(final.workdir, records, started, time.perf_counter() - start, jobs)  # REPORT.md reads it
        records += run_stages([final], label="analysis ", force=True)  # cheap: always rebuilt from metrics
    finally:
        timings = _write_timings(final.workdir, records, started, time.perf_counter() - start, jobs)
    print_summary(records, final.workdir, timings)
    return records


def _write_timings(root: Path, records: list[dict], started: str, wall: float, jobs: int) -> dict:
    """timings.json: seconds per stage and the wall time, summed over the invocations of a resumed run."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "timings.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    # A stage skipped now (done by an earlier invocation) counts the seconds it took then.
    merged = [{"lang": r["lang"], "stage": r["stage"], "status": r["status"],
               "seconds": r.get("seconds_when_run", r["seconds"])} for r in records]
    invocations = [i for i in previous.get("invocations", []) if i.get("started") != started]
    invocations.append({"started": started, "wall_seconds": round(wall, 1), "jobs": jobs})
    timings = {"stages": merged, "wall_seconds": round(sum(i["wall_seconds"] for i in invocations), 1),
               "stage_seconds": round(sum(r["seconds"] for r in merged), 1), "invocations": invocations}
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(timings, indent=1))
    os.replace(tmp, path)  # atomic: a kill mid-write never leaves a torn timings.json
    return timings


def print_summary(records: list[dict], root: Path, timings: dict) -> None:
    print("\nstage summary")
    print(f"{'lang':5} {'stage':30} {'status':20} {'seconds':>8}")
    for r in records:
        print(f"{r['lang']:5} {r['stage']:30} {r['status']:20} {r['seconds']:8.1f}")
    print(f"wall time {timings['wall_seconds']:.0f} s ({timings['wall_seconds'] / 60:.1f} min) over "
          f"{len(timings['invocations'])} invocation(s); stage times add up to {timings['stage_seconds']:.0f} s "
          f"(languages run side by side); report: {root / 'REPORT.md'}; figures: {root / 'figures'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clo_utils.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="recipe YAML (see params/)")
    parser.add_argument("--runs-root", default=None, help="override the recipe's runs_root")
    parser.add_argument("--jobs", type=int, default=None, help="languages run side by side")
    parser.add_argument("--dry-run", action="store_true", help="list the stages and whether they are complete")
    args = parser.parse_args(argv)
    try:
        run_recipe(args.recipe, runs_root=args.runs_root, jobs=args.jobs, dry_run=args.dry_run)
    except (StageFailed, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
