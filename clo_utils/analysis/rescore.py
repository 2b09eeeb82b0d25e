"""Rescore saved answers: every run under a runs root whose answers.jsonl was scored with other rules
gets its outcome shares written again from that file (clo_utils.evaluation.rescore.rescore_run), so
a change of scoring rule or detector needs no generation, no model and no GPU.

A run is rescored when its metrics.json lacks the current scoring (`eval_settings.scoring` is not
SCORING_VERSION) or was scored with another detector than asked; the others are left untouched.
"""

from __future__ import annotations

from pathlib import Path

from clo_utils.analysis.tables import _run_identity, find_metrics_files
from clo_utils.common import runfiles
from clo_utils.common.text import check_language_id
from clo_utils.evaluation.outcomes import SCORING_VERSION


def rescore_runs(root: str | Path, language_id: str | None = None) -> list[Path]:
    """Rescore the runs under `root` whose saved scoring is not the current one (or not with
    `language_id`, when given; None keeps each run's recorded detector). Returns the run folders
    rescored."""
    from clo_utils.evaluation.rescore import rescore_run

    if language_id:
        check_language_id(language_id)
    rescored = []
    for path in find_metrics_files(root):
        run_dir = path.parent
        if not (run_dir / "answers.jsonl").is_file():
            continue
        metrics = runfiles.read_metrics(run_dir)
        settings = metrics.get("eval_settings") or {}
        current = settings.get("scoring") == SCORING_VERSION and (
            not language_id or settings.get("language_id") == language_id
        )
        if current:
            continue
        lang = _run_identity(path, metrics.get("run") or {})["lang"]
        rescore_run(run_dir, lang, language_id=language_id or None)
        rescored.append(run_dir)
    return rescored
