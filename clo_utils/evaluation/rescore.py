"""Rescore a run's saved answers: the outcome shares written again from answers.jsonl with the current
rule (clo_utils.evaluation.outcomes), without a model and without generating anything."""

from __future__ import annotations

from pathlib import Path

from ..common.runfiles import read_answers, read_metrics, update_metrics
from ..common.text import check_language_id
from .metrics import DIRECTIONS, default_language_id, outcome_report
from .outcomes import SCORING_VERSION

# The eval keys the outcome scoring writes (outcome_report) and the keys of older scorings it replaces.
SCORED_KEYS_REPLACED = ("fidelity", "fidelity_clean", "n_clean", "too_short", "wrong_language")


def rescore_run(run_dir: str | Path, language: str, language_id: str | None = None) -> dict:
    """Score a run's saved answers.jsonl again with the current rules and write the outcome shares
    into its metrics.json "eval" block (chrF++, NLL and the other reference scores are kept: they do
    not depend on language ID). No model is loaded, nothing is generated. `language_id` None keeps
    the run's recorded detector (eval_settings.language_id), else the kit's default for the
    language. Returns the updated metrics."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    settings = dict(metrics.get("eval_settings") or {})
    language_id = check_language_id(language_id or settings.get("language_id") or default_language_id(language))
    min_words = int(settings.get("min_words") or 5)
    rows = read_answers(run_dir)
    sides = {"tgt": language, "en": "en"}
    block = dict(metrics.get("eval") or {})
    for direction in DIRECTIONS:
        answered = [row for row in rows if row.get("direction") == direction]
        if not answered:
            continue
        scores = outcome_report(
            [str(row.get("prompt") or "") for row in answered],
            [str(row.get("answer") or "") for row in answered],
            sides[direction],
            run_lang=language,
            language_id=language_id,
            min_words=min_words,
        )
        kept = {k: v for k, v in (block.get(direction) or {}).items() if k not in SCORED_KEYS_REPLACED}
        block[direction] = kept | scores
    settings |= {"language_id": language_id, "min_words": min_words, "scoring": SCORING_VERSION}
    return update_metrics(run_dir, {"eval": block, "eval_settings": settings})
