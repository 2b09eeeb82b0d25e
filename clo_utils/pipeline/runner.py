"""Batch runner: one recipe YAML -> languages x seed budgets x methods x training seeds, run with papermill.

    python -m clo_utils.pipeline params/demo.yaml [--jobs 2] [--dry-run] [--language ca,es] [--reuse-stale]

Every stage writes into runs/<recipe>/<lang>/... (docs/run-layout.md) and leaves its executed
notebook there as provenance. Before any stage runs, the whole recipe is checked (recipe.py, preflight.py):
types and ranges, models, translator, data size. Each stage then leaves a completion record
(stage-<kind>.json, written after its outputs) holding a fingerprint of what determines its
output: its parameters, the code it runs (its notebook's code cells and the clo_utils files they
import), the fingerprints of the stages it reads (data -> train -> evaluate -> analysis) and the kit's
version; no absolute path, so a moved runs folder or clone stays complete. A stage is complete when its record is complete and its
fingerprint is the one the recipe asks for; a stale stage (the recipe changed) reruns with its
old outputs kept aside until the new ones are complete, or is kept with --reuse-stale. A killed
run resumes by running the same command again; a failed stage stops the run with the path of
its executed notebook and the cell that failed. With jobs > 1 (the recipe's `jobs`, or --jobs) stages
run side by side in worker processes, the threads split between them, each stage as soon as the
stages it reads are done: languages, training seeds and methods of one budget need not wait on each other.

A recipe's `train.launch: {config: params/accelerate/ddp-multigpu.yaml, num_processes: 8}` runs every
training stage through `accelerate launch -m clo_utils.pipeline.launch` (one papermill kernel per
process; weights and train.json written once). Several machines: accelerate's own settings in that
config file (num_machines, machine_rank, main_process_ip); the other machines run the command the
runner writes to the stage's launch.log (params/accelerate/ddp-multigpu.yaml). A recipe's `gpu:` key
makes the pre-flight estimate the memory per GPU (gpu_memory.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from ..common.methods import METHODS, NB_CLO, NB_SFT, TRAINABLE_SUFFIXES, split_method  # noqa: F401  (re-exported)
from ..common.runfiles import read_timings, repo_root, write_timings
from .gpu_memory import memory_check
from .preflight import preflight, uses_only_offline_models
from .recipe import RECIPE_KEYS, RecipeError, judge_baseline_for, load_recipe, run_folders, train_seeds  # noqa: F401
from .stage_notebooks import NB_ANALYSIS, NB_DATA, NB_EVAL, NOTEBOOKS_DIR, notebook_parameters  # noqa: F401
from .stage_records import (  # noqa: F401  (re-exported)
    EVAL_OUTPUTS,
    NON_DETERMINING,
    assess_stages,
    check_one_data_version,
    drop_aside,
    executed_seconds,
    kit_version,
    read_record,
    set_aside,
    stage_fingerprint,
    write_record,
)
from .stages import Stage, StageFailed, analysis_stage, plan_stages, recipe_root  # noqa: F401  (re-exported)


def run_stage(stage: Stage, force: bool = False, reuse_stale: bool = False) -> dict:
    """Execute one stage with papermill unless it is complete (or stale and reused)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    if not force and (stage.state == "complete" or (stage.state == "stale" and reuse_stale)):
        if stage.state == "complete":
            if stage.why.startswith("adopted"):
                write_record(stage, complete=True, seconds=executed_seconds(stage))
            drop_aside(stage)  # left by a kill between completion and clean-up
        status = "skipped (complete)" if stage.state == "complete" else "skipped (stale, reused)"
        return {
            "lang": stage.lang,
            "stage": stage.name,
            "status": status,
            "seconds": 0.0,
            "seconds_when_run": executed_seconds(stage),
        }
    if stage.state == "stale":
        set_aside(stage)
    stage.workdir.mkdir(parents=True, exist_ok=True)
    write_record(stage, complete=False)
    executed = stage.workdir / f"{stage.notebook}.ipynb"
    start = time.perf_counter()
    if stage.launch:
        run_launched(stage, executed)
    else:
        try:
            papermill.execute_notebook(
                str(NOTEBOOKS_DIR / f"{stage.notebook}.ipynb"),
                str(executed),
                parameters=stage.parameters,
                kernel_name="python3",
                progress_bar=False,
                cwd=str(repo_root() or os.getcwd()),
            )
        except PapermillExecutionError as err:
            raise StageFailed(
                f"stage '{stage.name}' ({stage.lang}) failed in cell {err.exec_count} "
                f"[{err.ename}: {err.evalue}]; executed notebook: {executed}"
            ) from None
    seconds = time.perf_counter() - start
    if not stage.done_file.exists():
        raise StageFailed(
            f"stage '{stage.name}' ({stage.lang}) ran but did not write {stage.done_file}; "
            f"executed notebook: {executed}"
        )
    write_record(stage, complete=True, seconds=seconds)
    drop_aside(stage)
    return {"lang": stage.lang, "stage": stage.name, "status": "done", "seconds": round(seconds, 1)}


def launch_command(launch: dict, notebook: Path, executed: Path, parameters_file: Path, cwd: str) -> list[str]:
    """`accelerate launch` running `clo_utils.pipeline.launch` (papermill on every process) for a stage
    whose recipe sets train.launch: the accelerate config file says how many machines and which
    distributed setting; num_processes (all machines together) and main_process_port override it."""
    from ..common.runfiles import run_path

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(run_path(launch["config"]))]
    if launch.get("num_processes"):
        cmd += ["--num_processes", str(launch["num_processes"])]
    if launch.get("main_process_port"):
        cmd += ["--main_process_port", str(launch["main_process_port"])]
    cmd += [*launch.get("extra_args", []), "-m", "clo_utils.pipeline.launch", str(notebook), str(executed)]
    return cmd + ["-f", str(parameters_file), "-k", "python3", "--cwd", cwd, "--no-progress-bar", "--log-output"]


def run_launched(stage: Stage, executed: Path) -> None:
    """Run a training stage through `accelerate launch`: one papermill kernel per process, each joined to
    the process group through accelerate's environment; the weights and train.json are written once, by
    the main process. The stage's folder keeps the command and the launcher's output (launch.log) and the
    parameters (launch-parameters.yaml): on several machines, the others run the same command."""
    import subprocess

    import yaml

    params_file = stage.workdir / "launch-parameters.yaml"
    params_file.write_text(yaml.safe_dump(stage.parameters, sort_keys=True), encoding="utf-8")
    cmd = launch_command(
        stage.launch, NOTEBOOKS_DIR / f"{stage.notebook}.ipynb", executed, params_file, str(repo_root() or os.getcwd())
    )
    log_path = stage.workdir / "launch.log"
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=repo_root() or os.getcwd())
    if done.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise StageFailed(
            f"stage '{stage.name}' ({stage.lang}) failed under accelerate launch (exit code {done.returncode}); "
            f"executed notebook: {executed} (other processes: {executed.stem}.rank<N>.ipynb beside it); "
            f"log: {log_path}; last lines: " + " | ".join(tail)
        )


def run_stages(
    stages: list[Stage], label: str = "", force: bool = False, after_each=None, reuse_stale: bool = False
) -> list[dict]:
    """Run stages in order; `after_each(records)` is called before and after every stage, so the
    timings of an invocation survive a kill."""
    records = []
    for i, stage in enumerate(stages, 1):
        if after_each:
            after_each(records)
        print(
            f"[{label}{i}/{len(stages)}] {stage.lang} {stage.name} ({stage.notebook}) ..." + _stale_note(stage),
            flush=True,
        )
        record = run_stage(stage, force=force, reuse_stale=reuse_stale)
        print(f"[{label}{i}/{len(stages)}] {stage.lang} {stage.name}: {_status(record)}", flush=True)
        records.append(record)
        if after_each:
            after_each(records)
    return records


def _limit_threads(threads: int) -> None:
    # In each worker process: its kernels inherit these, so side-by-side stages do not oversubscribe
    # the cores (notebooks without a num_threads parameter included).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def run_side_by_side(
    stages: list[Stage], jobs: int, threads: int, reuse_stale: bool = False, after_each=None, run=run_stage
) -> list[dict]:
    """Run stages on `jobs` worker processes, each as soon as every stage it reads is done, the first
    ready one in plan order first: languages, and the training seeds of one language, run side by side.

    A failed stage stops new stages from starting; those running finish and are recorded, then the
    failure is raised. `after_each(records)` is called after every stage, so timings survive a kill.
    """
    planned = {s.key for s in stages}
    pending, running, done, records = list(stages), {}, set(), []
    failure: BaseException | None = None
    with ProcessPoolExecutor(max_workers=jobs, initializer=_limit_threads, initargs=(threads,)) as pool:
        while running or (pending and failure is None):
            while failure is None and len(running) < jobs:
                ready = next((s for s in pending if all(r in done or r not in planned for r in s.reads)), None)
                if ready is None:
                    break
                pending.remove(ready)
                print(f"[{ready.lang}] {ready.name} ({ready.notebook}) ..." + _stale_note(ready), flush=True)
                running[pool.submit(run, ready, False, reuse_stale)] = ready
            if not running:
                raise StageFailed(f"stages wait on stages that never run: {[s.key for s in pending]}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                stage = running.pop(future)
                try:
                    record = future.result()
                except Exception as err:  # re-raised once the running stages finish
                    failure = failure or err
                    continue
                done.add(stage.key)
                records.append(record)
                print(f"[{len(records)}/{len(stages)}] {stage.lang} {stage.name}: {_status(record)}", flush=True)
                if after_each:
                    after_each(records)
    if failure is not None:
        raise failure
    return records


def _stale_note(stage: Stage) -> str:
    return f" stale ({stage.why})" if stage.state == "stale" else ""


def _status(record: dict) -> str:
    return record["status"] + (f" in {record['seconds']:.0f} s" if record["status"] == "done" else "")


def print_plan(stages: list[Stage]) -> None:
    for s in stages:
        state = s.state + (f" ({s.why})" if s.why else "")
        print(f"{s.lang:4} {s.name:28} {s.notebook:18} {state}")


def run_recipe(
    path: str | os.PathLike,
    runs_root: str | None = None,
    jobs: int | None = None,
    dry_run: bool = False,
    languages: list[str] | None = None,
    reuse_stale: bool = False,
) -> list[dict]:
    recipe = load_recipe(path, languages=languages)
    jobs = max(1, int(jobs or recipe.get("jobs", 1)))
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


def _run(
    recipe: dict,
    stages: list[Stage],
    final: Stage,
    jobs: int,
    threads: int,
    dry_run: bool,
    reuse_stale: bool,
    to_run: set[str],
) -> list[dict]:
    for line in memory_check(recipe) if "train" in to_run or dry_run else ():
        print(f"memory {line}", flush=True)
    for line in preflight(recipe, needs=tuple(to_run)):
        print(f"check  {line}", flush=True)
    if dry_run:
        print_plan([*stages, final])
        return []
    start, started = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    stale = [s for s in stages if s.state == "stale"]
    print(
        f"recipe {recipe['name']}: {len(stages) + 1} stages, {len(recipe['languages'])} language(s), jobs={jobs}"
        + (f"; {len(stale)} stale stage(s) {'kept (--reuse-stale)' if reuse_stale else 'rerun'}" if stale else ""),
        flush=True,
    )
    records: list[dict] = []
    try:
        if jobs == 1:
            records += run_stages(
                stages,
                reuse_stale=reuse_stale,
                after_each=lambda done: _write_timings(
                    final.workdir, done, started, time.perf_counter() - start, jobs
                ),
            )
        else:
            records += run_side_by_side(
                stages,
                jobs,
                threads,
                reuse_stale=reuse_stale,
                after_each=lambda done: _write_timings(
                    final.workdir, done, started, time.perf_counter() - start, jobs
                ),
            )
        _write_timings(final.workdir, records, started, time.perf_counter() - start, jobs)  # REPORT.md reads it
        check_one_data_version(final.workdir)
        # Rebuilt from the metrics whenever a stage ran (cheap); a rerun that ran nothing leaves it as it is.
        ran = any(r["status"] == "done" for r in records)
        records += run_stages([final], label="analysis ", force=ran)
    finally:
        timings = _write_timings(final.workdir, records, started, time.perf_counter() - start, jobs)
    print_summary(records, final.workdir, timings)
    return records


def _write_timings(root: Path, records: list[dict], started: str, wall: float, jobs: int) -> dict:
    """timings.json: seconds per stage and the wall time, summed over the invocations of a resumed run."""
    previous = read_timings(root) or {}
    # A stage skipped now (done by an earlier invocation) counts the seconds it took then.
    merged = [
        {
            "lang": r["lang"],
            "stage": r["stage"],
            "status": r["status"],
            "seconds": r.get("seconds_when_run", r["seconds"]),
        }
        for r in records
    ]
    invocations = [i for i in previous.get("invocations", []) if i.get("started") != started]
    invocations.append({"started": started, "wall_seconds": round(wall, 1), "jobs": jobs})
    timings = {
        "stages": merged,
        "wall_seconds": round(sum(i["wall_seconds"] for i in invocations), 1),
        "stage_seconds": round(sum(r["seconds"] for r in merged), 1),
        "invocations": invocations,
    }
    write_timings(root, timings)  # atomic: a kill mid-write never leaves a torn timings.json
    return timings


def print_summary(records: list[dict], root: Path, timings: dict) -> None:
    print("\nstage summary")
    print(f"{'lang':5} {'stage':30} {'status':24} {'seconds':>8}")
    for r in records:
        print(f"{r['lang']:5} {r['stage']:30} {r['status']:24} {r['seconds']:8.1f}")
    print(
        f"wall time {timings['wall_seconds']:.0f} s ({timings['wall_seconds'] / 60:.1f} min) over "
        f"{len(timings['invocations'])} invocation(s); stage times add up to {timings['stage_seconds']:.0f} s "
        f"(stages may run side by side); report: {root / 'REPORT.md'}; figures: {root / 'figures'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clo_utils.pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe", help="recipe YAML (see params/; relative: from the repository root)")
    parser.add_argument("--runs-root", default=None, help="override the recipe's runs_root")
    parser.add_argument("--jobs", type=int, default=None, help="stages run side by side (languages, training seeds)")
    parser.add_argument(
        "--language",
        default=None,
        help="run these languages instead of the recipe's (comma-separated codes, e.g. sw or sw,yo)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the recipe and list the stages: complete, stale (and why) or missing",
    )
    parser.add_argument(
        "--reuse-stale", action="store_true", help="keep the outputs of stale stages instead of rerunning them"
    )
    args = parser.parse_args(argv)
    languages = [code.strip() for code in args.language.split(",") if code.strip()] if args.language else None
    try:
        run_recipe(
            args.recipe,
            runs_root=args.runs_root,
            jobs=args.jobs,
            dry_run=args.dry_run,
            languages=languages,
            reuse_stale=args.reuse_stale,
        )
    except (StageFailed, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
