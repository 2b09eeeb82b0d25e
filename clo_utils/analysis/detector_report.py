"""REPORT.md's detector-accuracy table: how often each language-ID detector names the right language
on held-out text whose language is known, the ceiling of every outcome share in the report.

The texts are the reference answers of the held-out seeds (`<recipe>/<lang>/data/seeds_eval.jsonl`,
never trained on): the translated target answers (known to be the target language), and the English
originals. With two target languages in a recipe (ca and es in the demo) each target's references
are also the test that it does not come out as the other: the confusions column shows it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd

from clo_utils.analysis.markdown import MISSING, markdown_table, unique_in_order
from clo_utils.analysis.tables import language_label, ordered_languages
from clo_utils.common import runfiles
from clo_utils.common.text import LANGUAGE_IDS
from clo_utils.evaluation.outcomes import detector_accuracy

CONFUSIONS_SHOWN = 3


def reference_texts(recipe_root: str | Path, languages: list[str]) -> dict[str, list[str]]:
    """{language: reference answers} from each language's seeds_eval.jsonl: response_tgt under the
    language, response_en under "en" (each English original once). Languages without the file are
    left out."""
    texts: dict[str, list[str]] = {}
    english: dict[str, str] = {}
    for lang in languages:
        path = Path(recipe_root) / lang / "data" / "seeds_eval.jsonl"
        if not path.is_file():
            continue
        rows = runfiles.read_jsonl(path)
        texts[lang] = [str(row["response_tgt"]) for row in rows if row.get("response_tgt")]
        english |= {str(row.get("id")): str(row["response_en"]) for row in rows if row.get("response_en")}
    if english:
        texts["en"] = list(english.values())
    return texts


@functools.lru_cache(maxsize=32)
def _accuracy(recipe_root: str, languages: tuple[str, ...], language_id: str) -> dict[str, dict]:
    return detector_accuracy(reference_texts(recipe_root, list(languages)), language_id)


def _cell(result: dict) -> str:
    if result["accuracy"] is None:
        return MISSING
    confused = ", ".join(f"{code} {count}" for code, count in list(result["confused_with"].items())[:CONFUSIONS_SHOWN])
    return f"{result['accuracy']:.3f}" + (f" (as {confused})" if confused else "")


def detector_section(evals: pd.DataFrame) -> str:
    """The detector-accuracy section of one recipe's report."""
    recipe_root = str(evals["recipe_root"].iloc[0])
    languages = tuple(ordered_languages(evals["lang"].unique()))
    used = unique_in_order(str(v) for v in evals.get("language_id", pd.Series(dtype=object)).dropna())
    heading = "## Detector accuracy (the ceiling of every share)"
    results = {language_id: _accuracy(recipe_root, languages, language_id) for language_id in LANGUAGE_IDS}
    if not any(results.values()):
        return f"{heading}\n\nNo seeds_eval.jsonl under {recipe_root}/<lang>/data: detector accuracy not measured."
    rows = []
    for lang in [*languages, "en"]:
        first = next((r[lang] for r in results.values() if lang in r), None)
        if first is None:
            continue
        rows.append(
            [f"{language_label(lang)} references", str(first["n"])]
            + [_cell(results[language_id][lang]) for language_id in LANGUAGE_IDS]
        )
    note = (
        "Share of held-out reference answers (at least five words; seeds_eval.jsonl, never trained on) that "
        "each detector, over every language it knows, names in their own language; the languages it named "
        "instead in brackets (counts). A share of answers in the target language cannot be more accurate "
        "than this. This report's outcomes were scored with: "
        f"{', '.join(used) or 'lingua'}."
    )
    headers = ["texts of known language", "n", *(f"{language_id} accuracy" for language_id in LANGUAGE_IDS)]
    return f"{heading}\n\n{note}\n\n{markdown_table(headers, rows)}"
