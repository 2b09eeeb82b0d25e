"""Stage completion records: fingerprints, complete / stale / missing, and stale outputs set aside.

Each stage leaves a completion record (stage-<kind>.json, written after its outputs) holding a
fingerprint of what determines its output: its parameters, the code it runs (its notebook's code
cells and the clo_utils files they import, code_fingerprint.py), the fingerprints of the stages it
reads (data -> train -> evaluate -> analysis) and the kit's version. No absolute path takes part,
so moving the runs folder or the clone makes nothing stale. A stage is complete when its record
is complete and its fingerprint is the one the recipe asks for; a stage run by hand with the
recipe's parameters (no record, an executed notebook that agrees) is adopted as complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import yaml

from ..common.runfiles import read_json, run_path, write_json
from .code_fingerprint import PACKAGE_DIR, code_changes, stage_code
from .stage_notebooks import NB_EVAL, NOTEBOOKS_DIR, notebook_default, notebook_parameters
from .stages import Stage, StageFailed

# Parameters that say where files go or how fast a stage runs, not what it computes: left out of
# fingerprints, so moving the runs folder or changing `jobs` makes nothing stale.
NON_DETERMINING = (
    "output_dir",
    "data_dir",
    "run_dirs",
    "runs_root",
    "recipe_dir",
    "figures_dir",
    "report_path",
    "cache_dir",
    "ref_cache_dir",
    "generation_cache_dir",
    "num_threads",
    "recipe",
)
EVAL_OUTPUTS = ("metrics.json", "answers.jsonl", f"{NB_EVAL}.ipynb")
# Parameters of the DPO stage of 02_sft_baseline: they determine an SFT+DPO run's output, not an SFT run's.
DPO_STAGE_PARAMETERS = ("dpo_beta", "dpo_trainer", "dpo_learning_rate", "dpo_epochs")


def kit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clo-utils")
    except PackageNotFoundError:
        return "unknown"


def _run_relative(parameters: dict, key: str) -> str:
    """A run folder parameter (sft_run_dir) as the stage sees it from its own language folder
    ("sft-4"): which run it names, wherever the runs folder lies."""
    value = parameters.get(key) or ""
    if not value or not parameters.get("output_dir"):
        return value
    return os.path.relpath(Path(value), Path(parameters["output_dir"]).parent).replace(os.sep, "/")


def _determining(notebook: str, parameters: dict, launch: dict | None = None) -> dict:
    """Every parameter of the notebook that determines its output: the stage's value, else the
    notebook's default (so a changed default makes the stage stale too). Paths are left out, but
    for `sft_run_dir`, taken relative to the run's own folder; the DPO stage's parameters count
    only when there is a DPO stage. A stage run through `accelerate launch` also counts its number of
    processes: the global batch is the per-process batch times that number."""
    values = {
        k: parameters[k] if k in parameters else notebook_default(notebook, k)
        for k in sorted(notebook_parameters(notebook))
        if k not in NON_DETERMINING
    }
    if "sft_run_dir" in values:
        values["sft_run_dir"] = _run_relative(parameters, "sft_run_dir")
    if "then_dpo" in values and not values["then_dpo"]:
        values = {k: v for k, v in values.items() if k not in DPO_STAGE_PARAMETERS}
    if launch:
        values["launch.num_processes"] = launch_processes(launch)
    return values


def launch_processes(launch: dict) -> int | None:
    """The number of processes `accelerate launch` starts: train.launch.num_processes, else its config file's."""
    if launch.get("num_processes"):
        return int(launch["num_processes"])
    config = run_path(launch["config"])
    settings = yaml.safe_load(config.read_text(encoding="utf-8")) if config.is_file() else None
    return (settings or {}).get("num_processes")


def code_of(notebook: str, package_dir: Path | None = None) -> dict[str, str]:
    """{file: code hash} of what a stage of `notebook` runs (code_fingerprint.stage_code)."""
    return stage_code(NOTEBOOKS_DIR / f"{notebook}.ipynb", package_dir or PACKAGE_DIR)


def _code_digest(code: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(code, sort_keys=True).encode()).hexdigest()[:16]


def stage_fingerprint(stage: Stage, reads: dict[str, str], code: dict[str, str] | None = None) -> str:
    """sha256 of what determines the stage's output: notebook, parameters (paths and thread counts
    left out), its code (`code_of`, computed when not given), the fingerprints of the stages it
    reads, and the kit's version."""
    payload = {
        "notebook": stage.notebook,
        "parameters": _determining(stage.notebook, stage.parameters, stage.launch),
        "code": _code_digest(code if code is not None else code_of(stage.notebook)),
        "reads": reads,
        "kit_version": kit_version(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_record(stage: Stage) -> dict | None:
    try:
        record = read_json(stage.record_path) if stage.record_path.is_file() else None
    except ValueError:  # an unreadable record is no record: the stage reruns
        return None
    return record if isinstance(record, dict) else None


def _stale_reason(record: dict, stage: Stage, reads: dict[str, str]) -> str:
    old, new = record.get("parameters") or {}, _determining(stage.notebook, stage.parameters, stage.launch)
    changed = [
        f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    upstream = [
        k
        for k in sorted(set(reads) | set(record.get("reads") or {}))
        if (record.get("reads") or {}).get(k) != reads.get(k)
    ]
    if "code" not in record:
        changed.append("code not recorded (a record written before stages recorded their code)")
    elif files := code_changes(record["code"], stage.code):
        changed.append("code changed: " + ", ".join(files))
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
    then, now = (
        _determining(stage.notebook, passed, stage.launch),
        _determining(stage.notebook, stage.parameters, stage.launch),
    )
    changed = [f"{k}: {then[k]!r} -> {now[k]!r}" for k in now if then[k] != now[k]]
    return ("the executed notebook differs: " + "; ".join(changed)) if changed else ""


def assess_stages(stages: list[Stage], reuse_stale: bool = False, package_dir: Path | None = None) -> None:
    """Set each stage's code, fingerprint and state: complete, stale (with why) or missing. A stage
    kept with reuse_stale passes its recorded fingerprint on to the stages that read it. The code is
    that of the clo_utils package at `package_dir` (default: this one)."""
    effective: dict[str, str] = {}
    code: dict[str, dict[str, str]] = {}  # per notebook: read once per assessment
    for stage in stages:
        reads = {k: effective[k] for k in stage.reads if k in effective}
        if stage.notebook not in code:
            code[stage.notebook] = code_of(stage.notebook, package_dir)
        stage.code = code[stage.notebook]
        stage.fingerprint, stage.read_fingerprints = stage_fingerprint(stage, reads, stage.code), reads
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
    write_json(
        stage.record_path,
        {
            "stage": stage.name,
            "lang": stage.lang,
            "notebook": stage.notebook,
            "fingerprint": stage.fingerprint,
            "complete": complete,
            "parameters": _determining(stage.notebook, stage.parameters, stage.launch),
            "reads": stage.read_fingerprints,
            "code": stage.code,
            "kit_version": kit_version(),
            "finished" if complete else "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **({"seconds": round(seconds, 1)} if complete else {}),
        },
    )


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
                problems.append(
                    f"{record_path.parent} ({record_path.stem[6:]}) used data {used}, {lang_dir / 'data'} is {data_fp}"
                )
    if problems:
        raise StageFailed(
            "analysis refuses to mix runs made on different data: "
            + "; ".join(problems)
            + ". Rerun those stages (or move their folders out of the recipe folder)"
        )


def executed_seconds(stage: Stage) -> float:
    """How long a completed stage took when it ran: papermill records it in the executed notebook."""
    try:
        executed = json.loads((stage.workdir / f"{stage.notebook}.ipynb").read_text(encoding="utf-8"))
        return round(float(executed["metadata"]["papermill"]["duration"]), 1)
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
