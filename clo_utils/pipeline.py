"""Batch runner: one recipe YAML -> languages x seed budgets x methods, executed with papermill.

    python -m clo_utils.pipeline params/demo.yaml [--jobs 2] [--dry-run] [--language ca,es] [--reuse-stale]

Every stage writes into runs/<recipe>/<lang>/... (docs/run-layout.md) and leaves its executed
notebook there as provenance. Before any stage runs, the whole recipe is checked (recipe.py):
types and ranges, models, translator, data size. Each stage then leaves a completion record
(stage-<kind>.json, written after its outputs) holding a fingerprint of what determines its
output: its parameters, the fingerprints of the stages it reads (data -> train -> evaluate ->
analysis) and the kit's version. A stage is complete when its record is complete and its
fingerprint is the one the recipe asks for; a stale stage (the recipe changed) reruns with its
old outputs kept aside until the new ones are complete, or is kept with --reuse-stale. A killed
run resumes by running the same command again; a failed stage stops the run with the path of
its executed notebook and the cell that failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .methods import METHODS, NB_CLO, NB_SFT, TRAINABLE_SUFFIXES, split_method  # noqa: F401  (re-exported)
from .recipe import (NB_ANALYSIS, NB_DATA, NB_EVAL, NOTEBOOKS_DIR, RECIPE_KEYS, RecipeError,  # noqa: F401
                     load_recipe, notebook_parameters, preflight, uses_only_offline_models)
from .runfiles import read_json, read_timings, repo_root, run_path, write_json, write_timings

# Parameters that say where files go or how fast a stage runs, not what it computes: left out of
# fingerprints, so moving the runs folder or changing `jobs` makes nothing stale.
NON_DETERMINING = ("output_dir", "data_dir", "run_dirs", "runs_root", "figures_dir", "report_path", "cache_dir",
                   "ref_cache_dir", "num_threads", "recipe")
EVAL_OUTPUTS = ("metrics.json", "answers.jsonl", f"{NB_EVAL}.ipynb")


# --------------------------------------------------------------------------- stages


@dataclass
class Stage:
    lang: str
    name: str             # e.g. "data", "clo-100 train", "clo-100 eval"
    notebook: str
    workdir: Path          # where outputs and the executed notebook go
    done_file: Path        # the notebook's last output
    parameters: dict = field(default_factory=dict)
    kind: str = ""         # data | train | eval | analysis
    reads: tuple[str, ...] = ()  # keys of the stages whose outputs this one reads
    fingerprint: str = ""  # set by assess_stages
    read_fingerprints: dict = field(default_factory=dict)  # fingerprints of the stages it reads
    state: str = ""        # complete | stale | missing (set by assess_stages)
    why: str = ""          # what made it stale, or that it was interrupted

    @property
    def key(self) -> str:
        return f"{self.lang}/{self.name}"

    @property
    def record_path(self) -> Path:
        return self.workdir / f"stage-{self.kind}.json"

    @property
    def aside(self) -> Path:
        """Where the outputs of a stale stage wait until the rerun completes."""
        return self.workdir / ".stale-eval" if self.kind == "eval" else self.workdir.with_name(
            self.workdir.name + ".stale")


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


def recipe_root(recipe: dict, runs_root: str | None = None) -> Path:
    """<runs_root>/<name>, relative runs roots taken from the repository root whatever the cwd."""
    return run_path(runs_root or recipe.get("runs_root") or "runs") / recipe["name"]


def plan_stages(recipe: dict, runs_root: str | None = None, num_threads: int = 0) -> list[Stage]:
    """Every stage of the recipe but the analysis, in execution order."""
    root = recipe_root(recipe, runs_root)
    seed = recipe.get("seed", 0)
    budgets = sorted(recipe["budgets"])
    common = {"seed": seed, "num_threads": num_threads}
    evaluate = recipe.get("evaluate") or {}
    judged = evaluate.get("judge_backend", "none") != "none"
    stages = []
    for lang in recipe["languages"]:
        data_dir = root / lang / "data"
        data_params = {**(recipe.get("data") or {}), "language": lang, "output_dir": str(data_dir),
                       **({"n_seeds": budgets[-1]} if budgets else {}), **common}
        stages.append(Stage(lang, "data", NB_DATA, data_dir, data_dir / "manifest.json", _only(data_params, NB_DATA),
                            kind="data"))
        data_key = f"{lang}/data"
        baseline_key = f"{lang}/{evaluate.get('judge_baseline')} eval"
        eval_common = {**evaluate, "data_dir": str(data_dir), "language": lang, **common}
        base_dir = root / lang / "base-0"
        stages.append(Stage(lang, "base-0 eval", NB_EVAL, base_dir, base_dir / "metrics.json",
                            _only({**eval_common, "run_dirs": [str(base_dir)]}, NB_EVAL), kind="eval",
                            reads=(data_key,)))
        for method, n in _training_order(recipe, budgets):
            _, notebook, fixed = split_method(method)
            run_dir = root / lang / f"{method}-{n}"
            overrides = (recipe.get("method_params") or {}).get(method) or {}
            params = {**(recipe.get("train") or {}), **fixed, **overrides,
                      "data_dir": str(data_dir), "output_dir": str(run_dir), "n_seeds": n, "method": method,
                      "recipe": recipe["name"], **common}
            train = Stage(lang, f"{method}-{n} train", notebook, run_dir, run_dir / "train.json",
                          _only(params, notebook), kind="train", reads=(data_key,))
            reads = (data_key, train.key) + ((baseline_key,) if judged and f"{method}-{n}" != evaluate.get(
                "judge_baseline") else ())
            stages += [train, Stage(lang, f"{method}-{n} eval", NB_EVAL, run_dir, run_dir / "metrics.json",
                                    _only({**eval_common, "run_dirs": [str(run_dir)]}, NB_EVAL), kind="eval",
                                    reads=reads)]
    return stages


def analysis_stage(recipe: dict, runs_root: str | None = None, stages: list[Stage] = ()) -> Stage:
    root = recipe_root(recipe, runs_root)
    params = {**(recipe.get("analysis") or {}), "runs_root": str(root)}
    return Stage("all", "analysis", NB_ANALYSIS, root, root / "REPORT.md", _only(params, NB_ANALYSIS), kind="analysis",
                 reads=tuple(s.key for s in stages if s.kind == "eval"))


# --------------------------------------------------------------------------- fingerprints


def kit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clo-utils")
    except PackageNotFoundError:
        return "unknown"


def _determining(notebook: str, parameters: dict) -> dict:
    """Every parameter of the notebook that determines its output: the stage's value, else the
    notebook's default (so a changed default makes the stage stale too)."""
    from .recipe import notebook_default

    return {k: parameters[k] if k in parameters else notebook_default(notebook, k)
            for k in sorted(notebook_parameters(notebook)) if k not in NON_DETERMINING}


def stage_fingerprint(stage: Stage, reads: dict[str, str]) -> str:
    """sha256 of what determines the stage's output: notebook, parameters (paths and thread counts
    left out), the fingerprints of the stages it reads, and the kit's version."""
    payload = {"notebook": stage.notebook, "parameters": _determining(stage.notebook, stage.parameters),
               "reads": reads, "kit_version": kit_version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_record(stage: Stage) -> dict | None:
    try:
        record = read_json(stage.record_path) if stage.record_path.is_file() else None
    except ValueError:  # an unreadable record is no record: the stage reruns
        return None
    return record if isinstance(record, dict) else None


def _stale_reason(record: dict, stage: Stage, reads: dict[str, str]) -> str:
    old, new = record.get("parameters") or {}, _determining(stage.notebook, stage.parameters)
    changed = [f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k)]
    upstream = [k for k in sorted(set(reads) | set(record.get("reads") or {}))
                if (record.get("reads") or {}).get(k) != reads.get(k)]
    if upstream:
        changed.append("input changed: " + ", ".join(upstream))
    if record.get("kit_version") != kit_version():
        changed.append(f"kit version {record.get('kit_version')} -> {kit_version()}")
    return "; ".join(changed) or "fingerprint differs"


def _differs_from_executed(stage: Stage) -> str:
    """How the parameters recorded in the stage's executed notebook (papermill's metadata; notebook
    defaults for those not passed) differ from the recipe's, or "" when they agree."""
    try:
        executed = read_json(stage.workdir / f"{stage.notebook}.ipynb")
        passed = executed["metadata"]["papermill"]["parameters"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no executed {stage.notebook}.ipynb with its parameters"
    then, now = _determining(stage.notebook, passed), _determining(stage.notebook, stage.parameters)
    changed = [f"{k}: {then[k]!r} -> {now[k]!r}" for k in now if then[k] != now[k]]
    return ("the executed notebook differs: " + "; ".join(changed)) if changed else ""


def assess_stages(stages: list[Stage], reuse_stale: bool = False) -> None:
    """Set each stage's fingerprint and state: complete, stale (with why) or missing. A stage kept
    with reuse_stale passes its recorded fingerprint on to the stages that read it."""
    effective: dict[str, str] = {}
    for stage in stages:
        reads = {k: effective[k] for k in stage.reads if k in effective}
        stage.fingerprint, stage.read_fingerprints = stage_fingerprint(stage, reads), reads
        record = read_record(stage)
        complete = bool(record and record.get("complete")) and stage.done_file.exists()
        if complete and record.get("fingerprint") == stage.fingerprint:
            stage.state, stage.why = "complete", ""
        elif complete:
            stage.state, stage.why = "stale", _stale_reason(record, stage, reads)
        elif stage.done_file.exists() and record is None:
            differs = _differs_from_executed(stage)
            if not differs:  # run by hand (e.g. under accelerate) with the recipe's parameters: adopted
                stage.state, stage.why = "complete", "adopted: its executed notebook has the recipe's parameters"
            else:
                stage.state, stage.why = "stale", f"no completion record, and {differs}"
        elif record and record.get("fingerprint") != stage.fingerprint:
            stage.state = "stale"
            stage.why = "interrupted, with other parameters: " + _stale_reason(record, stage, reads)
        else:
            stage.state, stage.why = "missing", "interrupted: resumes" if record else ""
        kept = stage.state == "stale" and reuse_stale and stage.done_file.exists()
        effective[stage.key] = (record or {}).get("fingerprint", "unrecorded") if kept else stage.fingerprint


def write_record(stage: Stage, complete: bool, seconds: float = 0.0) -> None:
    write_json(stage.record_path, {
        "stage": stage.name, "lang": stage.lang, "notebook": stage.notebook, "fingerprint": stage.fingerprint,
        "complete": complete, "parameters": _determining(stage.notebook, stage.parameters),
        "reads": stage.read_fingerprints, "kit_version": kit_version(),
        "finished" if complete else "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"seconds": round(seconds, 1)} if complete else {})})


def set_aside(stage: Stage) -> None:
    """Move a stale stage's outputs out of the way (renames only: nothing is deleted before the
    rerun completes). An aside left by an earlier attempt is the last complete output: it is kept,
    and what the interrupted attempt left in its place is removed."""
    if stage.kind == "analysis" or not stage.workdir.exists():
        return
    if stage.kind == "eval":
        stage.aside.mkdir(exist_ok=True)
        for name in (*EVAL_OUTPUTS, stage.record_path.name):
            src = stage.workdir / name
            if src.exists():
                if (stage.aside / name).exists():
                    src.unlink()
                else:
                    os.replace(src, stage.aside / name)
    elif stage.aside.exists():
        shutil.rmtree(stage.workdir)
    else:
        os.replace(stage.workdir, stage.aside)


def drop_aside(stage: Stage) -> None:
    if stage.kind != "analysis" and stage.aside.exists():
        shutil.rmtree(stage.aside)


def check_one_data_version(root: Path) -> None:
    """Analysis reads every run under `root`: refuse when runs of one language were trained or
    evaluated on another version of that language's data folder."""
    problems = []
    for data_record in sorted(root.glob("*/data/stage-data.json")):
        lang_dir = data_record.parent.parent
        data_fp = (read_json(data_record) or {}).get("fingerprint")
        for record_path in sorted(lang_dir.glob("*/stage-*.json")):
            if record_path.parent.name == "data":
                continue
            used = ((read_json(record_path) or {}).get("reads") or {}).get(f"{lang_dir.name}/data")
            if used and used != data_fp:
                problems.append(f"{record_path.parent} ({record_path.stem[6:]}) used data {used}, "
                                f"{lang_dir / 'data'} is {data_fp}")
    if problems:
        raise StageFailed("analysis refuses to mix runs made on different data: " + "; ".join(problems)
                          + ". Rerun those stages (or move their folders out of the recipe folder)")


class StageFailed(RuntimeError):
    pass


def run_stage(stage: Stage, force: bool = False, reuse_stale: bool = False) -> dict:
    """Execute one stage with papermill unless it is complete (or stale and reused)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    if not force and (stage.state == "complete" or (stage.state == "stale" and reuse_stale)):
        if stage.state == "complete":
            if stage.why.startswith("adopted"):
                write_record(stage, complete=True, seconds=_executed_seconds(stage))
            drop_aside(stage)  # left by a kill between completion and clean-up
        status = "skipped (complete)" if stage.state == "complete" else "skipped (stale, reused)"
        return {"lang": stage.lang, "stage": stage.name, "status": status, "seconds": 0.0,
                "seconds_when_run": _executed_seconds(stage)}
    if stage.state == "stale":
        set_aside(stage)
    stage.workdir.mkdir(parents=True, exist_ok=True)
    write_record(stage, complete=False)
    executed = stage.workdir / f"{stage.notebook}.ipynb"
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(NOTEBOOKS_DIR / f"{stage.notebook}.ipynb"), str(executed),
                                   parameters=stage.parameters, kernel_name="python3", progress_bar=False,
                                   cwd=str(repo_root() or os.getcwd()))
    except PapermillExecutionError as err:
        raise StageFailed(f"stage '{stage.name}' ({stage.lang}) failed in cell {err.exec_count} "
                          f"[{err.ename}: {err.evalue}]; executed notebook: {executed}") from None
    seconds = time.perf_counter() - start
    if not stage.done_file.exists():
        raise StageFailed(f"stage '{stage.name}' ({stage.lang}) ran but did not write {stage.done_file}; "
                          f"executed notebook: {executed}")
    write_record(stage, complete=True, seconds=seconds)
    drop_aside(stage)
    return {"lang": stage.lang, "stage": stage.name, "status": "done", "seconds": round(seconds, 1)}


def _executed_seconds(stage: Stage) -> float:
    """How long a completed stage took when it ran: papermill records it in the executed notebook."""
    try:
        executed = json.loads((stage.workdir / f"{stage.notebook}.ipynb").read_text(encoding="utf-8"))
        return round(float(executed["metadata"]["papermill"]["duration"]), 1)
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def run_stages(stages: list[Stage], label: str = "", force: bool = False, after_each=None,
               reuse_stale: bool = False) -> list[dict]:
    """Run stages in order; `after_each(records)` is called before and after every stage, so the
    timings of an invocation survive a kill."""
    records = []
    for i, stage in enumerate(stages, 1):
        if after_each:
            after_each(records)
        print(f"[{label}{i}/{len(stages)}] {stage.lang} {stage.name} ({stage.notebook}) ..."
              + (f" stale ({stage.why})" if stage.state == "stale" else ""), flush=True)
        record = run_stage(stage, force=force, reuse_stale=reuse_stale)
        print(f"[{label}{i}/{len(stages)}] {stage.lang} {stage.name}: {record['status']}"
              + (f" in {record['seconds']:.0f} s" if record["status"] == "done" else ""), flush=True)
        records.append(record)
        if after_each:
            after_each(records)
    return records


def _run_language(stages: list[Stage], lang: str, threads: int, reuse_stale: bool) -> list[dict]:
    # A worker process of its own: its kernels inherit these, so side-by-side languages do not
    # oversubscribe the cores (notebooks without a num_threads parameter included).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    return run_stages([s for s in stages if s.lang == lang], label=f"{lang} ", reuse_stale=reuse_stale)


def print_plan(stages: list[Stage]) -> None:
    for s in stages:
        state = s.state + (f" ({s.why})" if s.why else "")
        print(f"{s.lang:4} {s.name:28} {s.notebook:18} {state}")


def run_recipe(path: str | os.PathLike, runs_root: str | None = None, jobs: int | None = None,
               dry_run: bool = False, languages: list[str] | None = None, reuse_stale: bool = False) -> list[dict]:
    recipe = load_recipe(path, languages=languages)
    jobs = max(1, int(jobs or recipe.get("jobs", 1)))
    jobs = min(jobs, len(recipe["languages"]))
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    stages = plan_stages(recipe, runs_root, num_threads=threads)
    final = analysis_stage(recipe, runs_root, stages)
    assess_stages([*stages, final], reuse_stale=reuse_stale)
    to_run = {s.kind for s in stages if s.state == "missing" or (s.state == "stale" and not reuse_stale)}
    offline = uses_only_offline_models(recipe) and "HF_HUB_OFFLINE" not in os.environ
    if offline:  # inherited by every kernel: nothing waits on network retries
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return _run(recipe, stages, final, jobs, threads, dry_run, reuse_stale, to_run)
    finally:
        if offline:
            os.environ.pop("HF_HUB_OFFLINE", None)


def _run(recipe: dict, stages: list[Stage], final: Stage, jobs: int, threads: int, dry_run: bool,
         reuse_stale: bool, to_run: set[str]) -> list[dict]:
    for line in preflight(recipe, needs=tuple(to_run)):
        print(f"check  {line}", flush=True)
    if dry_run:
        print_plan([*stages, final])
        return []
    start, started = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    stale = [s for s in stages if s.state == "stale"]
    print(f"recipe {recipe['name']}: {len(stages) + 1} stages, {len(recipe['languages'])} language(s), jobs={jobs}"
          + (f"; {len(stale)} stale stage(s) {'kept (--reuse-stale)' if reuse_stale else 'rerun'}" if stale else ""),
          flush=True)
    records: list[dict] = []
    try:
        if jobs == 1:
            records += run_stages(stages, reuse_stale=reuse_stale, after_each=lambda done: _write_timings(
                final.workdir, done, started, time.perf_counter() - start, jobs))
        else:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(_run_language, stages, lang, threads, reuse_stale)
                           for lang in recipe["languages"]]
                for future in futures:
                    records += future.result()
        _write_timings(final.workdir, records, started, time.perf_counter() - start, jobs)  # REPORT.md reads it
        check_one_data_version(final.workdir)
        records += run_stages([final], label="analysis ", force=True)  # cheap: always rebuilt from metrics
    finally:
        timings = _write_timings(final.workdir, records, started, time.perf_counter() - start, jobs)
    print_summary(records, final.workdir, timings)
    return records


def _write_timings(root: Path, records: list[dict], started: str, wall: float, jobs: int) -> dict:
    """timings.json: seconds per stage and the wall time, summed over the invocations of a resumed run."""
    previous = read_timings(root) or {}
    # A stage skipped now (done by an earlier invocation) counts the seconds it took then.
    merged = [{"lang": r["lang"], "stage": r["stage"], "status": r["status"],
               "seconds": r.get("seconds_when_run", r["seconds"])} for r in records]
    invocations = [i for i in previous.get("invocations", []) if i.get("started") != started]
    invocations.append({"started": started, "wall_seconds": round(wall, 1), "jobs": jobs})
    timings = {"stages": merged, "wall_seconds": round(sum(i["wall_seconds"] for i in invocations), 1),
               "stage_seconds": round(sum(r["seconds"] for r in merged), 1), "invocations": invocations}
    write_timings(root, timings)  # atomic: a kill mid-write never leaves a torn timings.json
    return timings


def print_summary(records: list[dict], root: Path, timings: dict) -> None:
    print("\nstage summary")
    print(f"{'lang':5} {'stage':30} {'status':24} {'seconds':>8}")
    for r in records:
        print(f"{r['lang']:5} {r['stage']:30} {r['status']:24} {r['seconds']:8.1f}")
    print(f"wall time {timings['wall_seconds']:.0f} s ({timings['wall_seconds'] / 60:.1f} min) over "
          f"{len(timings['invocations'])} invocation(s); stage times add up to {timings['stage_seconds']:.0f} s "
          f"(languages run side by side); report: {root / 'REPORT.md'}; figures: {root / 'figures'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clo_utils.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="recipe YAML (see params/; relative: from the repository root)")
    parser.add_argument("--runs-root", default=None, help="override the recipe's runs_root")
    parser.add_argument("--jobs", type=int, default=None, help="languages run side by side")
    parser.add_argument("--language", default=None,
                        help="run these languages instead of the recipe's (comma-separated codes, e.g. sw or sw,yo)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the recipe and list the stages: complete, stale (and why) or missing")
    parser.add_argument("--reuse-stale", action="store_true",
                        help="keep the outputs of stale stages instead of rerunning them")
    args = parser.parse_args(argv)
    languages = [code.strip() for code in args.language.split(",") if code.strip()] if args.language else None
    try:
        run_recipe(args.recipe, runs_root=args.runs_root, jobs=args.jobs, dry_run=args.dry_run,
                   languages=languages, reuse_stale=args.reuse_stale)
    except (StageFailed, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
