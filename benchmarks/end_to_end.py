"""End to end: a pipeline run's stage times, and the share of each stage spent in model compute vs waiting.

Reads runs/<recipe>/timings.json (written by the pipeline runner) and each stage's executed notebook,
whose code cells carry papermill's per-cell durations (metadata.papermill.duration). A cell's time
goes to the category of the first call in it that CATEGORIES names; the stage time outside its cells
is process and kernel start. Compute = training (the reference pass included), evaluation
(generation, reference NLL, the judge, knowledge tasks) and translation; everything else is waiting.
A cell that loads a model and then runs it counts as compute (evaluate_run loads each run's model).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks.harness import REPO, Context

NAME = "end_to_end"
TARGETS = {
    "end_to_end_wall_minutes": (None, None, "pipeline wall time, minutes (a run without SFT+DPO)"),
    "end_to_end_wall_minutes_with_sft_dpo": (
        "<=",
        60.0,
        "pipeline wall time with SFT+DPO, minutes (install adds its own minutes)",
    ),
    "end_to_end_compute_share": (None, None, "share of summed stage time in model compute"),
}


def _calls(*names: str) -> str:
    """A pattern matching a call of any of `names` (regular expressions themselves)."""
    return r"\b(" + "|".join(names) + r")\s*\("


# (category, is compute, pattern of a call in the cell), first match wins
CATEGORIES = (
    ("install", False, r"pip\W+install"),
    ("train", True, _calls("train_clo", "train_sft", "train_dpo", r"trainer\.train")),
    (
        "evaluate",
        True,
        _calls("evaluate_run", "evaluate_model", "generate_answers", "reference_nll", "judge_runs", "run_knowledge"),
    ),
    ("translate", True, _calls("translate_and_filter", "translate", "translate_with_stats")),
    ("model load", False, _calls("load_model_and_tokenizer", "load_run_model", "from_pretrained")),
    (
        "data and tokenising",
        False,
        _calls(
            "prepare_english_rows",
            "select_seeds",
            "load_train_seeds",
            "build_sft_rows",
            "build_cross_lingual_pairs",
            "load_tokenizer",
            r"tokenize_\w+",
            "load_eval_seeds",
        ),
    ),
    ("writing", False, _calls("save_run", r"write_\w+", "update_metrics", "build_all_figures", "savefig")),
    ("setup", False, r"^\s*(import|from)\s|\bset_seed\s*\(|\bset_threads\s*\("),
)
OUTSIDE_CELLS = "process and kernel start"
NO_NOTEBOOK = "stage without an executed notebook"


def cell_category(source: str) -> tuple[str, bool]:
    for name, compute, pattern in CATEGORIES:
        if re.search(pattern, source, flags=re.MULTILINE):
            return name, compute
    return "other (display, tables)", False


def stage_notebook(root: Path, stage: dict) -> Path | None:
    """The executed notebook of a timings.json stage: <lang>/data, <lang>/<run>/ (train: 02/03, eval: 04),
    or the recipe folder (analysis)."""
    name, lang = stage.get("stage", ""), stage.get("lang", "")
    if name == "analysis":
        folder, pattern = root, "05_*.ipynb"
    elif name == "data":
        folder, pattern = root / lang / "data", "01_*.ipynb"
    elif name.endswith(" train"):
        folder, pattern = root / lang / name[: -len(" train")], "0[23]_*.ipynb"
    elif name.endswith(" eval"):
        folder, pattern = root / lang / name[: -len(" eval")], "04_*.ipynb"
    else:
        return None
    found = sorted(folder.glob(pattern))
    return found[0] if found else None


def stage_breakdown(root: Path, stage: dict) -> dict:
    """{category: seconds} of one stage, the compute seconds, and where the numbers come from."""
    seconds = float(stage.get("seconds", 0.0))
    path = stage_notebook(root, stage)
    out = {
        "lang": stage.get("lang", ""),
        "stage": stage.get("stage", "?"),
        "seconds": seconds,
        "notebook": str(path) if path else None,
        "categories": {},
        "compute_seconds": 0.0,
    }
    if path is None:
        out["categories"][NO_NOTEBOOK] = seconds
        return out
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable notebook ({err})") from None
    cells = 0.0
    for cell in nb.get("cells", []):
        duration = (cell.get("metadata", {}).get("papermill") or {}).get("duration")
        if cell.get("cell_type") != "code" or duration is None:
            continue
        source = "".join(cell.get("source", "")) if isinstance(cell.get("source"), list) else cell.get("source", "")
        name, compute = cell_category(source)
        out["categories"][name] = out["categories"].get(name, 0.0) + float(duration)
        out["compute_seconds"] += float(duration) if compute else 0.0
        cells += float(duration)
    if seconds == 0.0:  # a stage skipped in this invocation: its notebook holds the time it took
        seconds = out["seconds"] = float(nb.get("metadata", {}).get("papermill", {}).get("duration") or cells)
    out["categories"][OUTSIDE_CELLS] = max(seconds - cells, 0.0)
    return out


def breakdown(root: Path) -> dict:
    """Every stage of the run folder `root` (runs/<recipe>), and the totals by category."""
    path = root / "timings.json"
    try:
        timings = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise FileNotFoundError(f"{path} is absent: run the pipeline (`make demo`), which writes it") from None
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    stages = [stage_breakdown(root, s) for s in timings.get("stages", [])]
    totals: dict[str, float] = {}
    for s in stages:
        for k, v in s["categories"].items():
            totals[k] = totals.get(k, 0.0) + v
    stage_sum = sum(s["seconds"] for s in stages)
    return {
        "path": str(path),
        "stages": stages,
        "categories": totals,
        "stage_seconds": stage_sum,
        "compute_seconds": sum(s["compute_seconds"] for s in stages),
        "wall_seconds": timings.get("wall_seconds"),
        "invocations": len(timings.get("invocations", [])),
    }


def print_breakdown(data: dict) -> None:
    for s in data["stages"]:
        share = s["compute_seconds"] / s["seconds"] if s["seconds"] else 0.0
        ranked = sorted(s["categories"].items(), key=lambda kv: -kv[1])
        parts = ", ".join(f"{k} {v:.0f}" for k, v in ranked if v >= 0.5)
        print(
            f"  {s['lang']:4s} {s['stage']:26s} {s['seconds']:7.0f} s  compute {share:4.0%}  "
            + (f"({parts})" if s["notebook"] else "(no executed notebook)")
        )
    total = data["stage_seconds"]
    print(
        f"  stage times add up to {total:.0f} s ({total / 60:.1f} min; languages may run side by side); by "
        "category: "
        + ", ".join(
            f"{k} {v / total:.0%}" for k, v in sorted(data["categories"].items(), key=lambda kv: -kv[1]) if total
        )
    )
    if data["wall_seconds"] is not None:
        print(
            f"  wall time {data['wall_seconds']:.0f} s ({data['wall_seconds'] / 60:.1f} min) over "
            f"{data['invocations']} invocation(s)"
        )


def run(ctx: Context) -> None:
    root = Path(ctx.args.run_dir) if ctx.args.run_dir else REPO / "runs" / ctx.args.recipe
    if not (root / "timings.json").exists():
        print(f"  {root / 'timings.json'} is absent: run the pipeline (`make demo`), which writes it")
        ctx.results.sections["end_to_end"] = {"path": str(root / "timings.json"), "present": False}
        return
    data = breakdown(root)
    print_breakdown(data)
    ctx.results.sections["end_to_end"] = data
    has_dpo = any(s["stage"].startswith("sft_dpo") for s in data["stages"])
    if data["wall_seconds"] is not None:
        name = "end_to_end_wall_minutes_with_sft_dpo" if has_dpo else "end_to_end_wall_minutes"
        ctx.results.add(
            TARGETS,
            name,
            data["wall_seconds"] / 60,
            f"{root.name}: {data['invocations']} invocation(s), "
            + ("SFT+DPO included" if has_dpo else "without SFT+DPO, install not included"),
        )
    if data["stage_seconds"]:
        ctx.results.add(
            TARGETS,
            "end_to_end_compute_share",
            data["compute_seconds"] / data["stage_seconds"],
            f"{data['compute_seconds']:.0f} of {data['stage_seconds']:.0f} stage-seconds",
        )
