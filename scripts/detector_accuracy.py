"""Measure each language-ID detector on text of known language, offline: the README's detector table.

Takes the last `--rows` answers of the kit's English SFT set (clo_utils/assets/english_sft.jsonl) (English, at least five words), translates them
with Apertium into each `--langs` language, keeps the rows every translation really translated (the
translation quality filter's {target, English} test) and the source is English by either detector, cuts
every text to its first N words (answers of a small model are short), and prints, per detector and cut,
the share of texts named in their own language with what was named instead.

    python scripts/detector_accuracy.py --langs ca es --rows 300 --cuts 0 24 12 6
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from clo_utils.common.text import LANGUAGE_IDS, count_words, detect_languages, identify_languages
from clo_utils.evaluation.outcomes import detector_accuracy
from clo_utils.translation.sources import default_data_source
from clo_utils.translation.translators import ApertiumTranslator


def known_texts(langs: list[str], rows: int) -> dict[str, list[str]]:
    lines = Path(default_data_source()).read_text(encoding="utf-8").splitlines()
    english = [row["output"] for row in map(json.loads, lines[-rows:]) if count_words(row["output"]) >= 5]
    # Twenty answers per Apertium call: a long document can come back untranslated from some point on.
    texts = {"en": english} | {
        lang: [
            t
            for i in range(0, len(english), 20)
            for t in ApertiumTranslator(lang).translate_batch(english[i : i + 20])
        ]
        for lang in langs
    }
    by_detector = [identify_languages(english, language_id) for language_id in LANGUAGE_IDS]
    keep = [
        i
        for i in range(len(english))
        if any(found[i] == "en" for found in by_detector)
        and all(texts[lang][i] and detect_languages([texts[lang][i]], lang)[0] == lang for lang in langs)
    ]
    print(f"{len(english)} English answers, {len(keep)} kept (source English, every translation translated)")
    return {lang: [texts[lang][i] for i in keep] for lang in texts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--langs", nargs="+", default=["ca", "es"], help="Apertium target languages")
    parser.add_argument("--rows", type=int, default=300, help="last rows of the English SFT set")
    parser.add_argument("--cuts", nargs="+", type=int, default=[0, 24, 12, 6], help="words kept (0: whole text)")
    args = parser.parse_args()
    texts = known_texts(args.langs, args.rows)
    langs = [*args.langs, "en"]
    print("| text | detector | " + " | ".join(langs) + " | seconds |")
    print("|---|---|" + "---|" * len(langs) + "---|")
    for cut in args.cuts:
        cut_texts = {lang: [" ".join(t.split()[:cut]) if cut else t for t in ts] for lang, ts in texts.items()}
        for language_id in LANGUAGE_IDS:
            start = time.perf_counter()
            result = detector_accuracy(cut_texts, language_id)
            seconds = time.perf_counter() - start
            cells = []
            for lang in langs:
                r = result[lang]
                confused = ", ".join(f"{code} {n}" for code, n in list(r["confused_with"].items())[:4])
                cells.append(f"{r['accuracy']:.3f} ({r['n']}" + (f"; {confused})" if confused else ")"))
            label = f"first {cut} words" if cut else "whole answer"
            print(f"| {label} | {language_id} | " + " | ".join(cells) + f" | {seconds:.1f} |")


if __name__ == "__main__":
    main()
