"""From sampled English rows to a run's data folder: translate, filter, write (docs/run-layout.md).

translate_and_filter translates the held-out rows, then training candidates in sampling order, in
rounds until the budget of seeds survives the quality filter; write_data_folder writes the seeds,
their cross-lingual pairs and SFT rows (clo_utils.data) and manifest.json, which is written last.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..common.runfiles import file_sha256, write_json, write_jsonl
from ..data import SFT_VARIANTS, build_cross_lingual_pairs, build_sft_rows, check_seed_rows, make_seed_row

DATA_FILES = (
    "seeds_train.jsonl",
    "seeds_eval.jsonl",
    "pairs.jsonl",
    "sft_both.jsonl",
    "sft_en.jsonl",
    "sft_tgt.jsonl",
)


def translate_seed_rows(
    rows: list[dict], lang: str, translator, cache=None, batch_size: int | None = None, progress: bool = True
):
    """Translate prompts and responses separately (the paper's way): (seed rows, TranslateStats)."""
    from .translate import translate_with_stats

    texts = [r["prompt"] for r in rows] + [r["response"] for r in rows]
    out, stats = translate_with_stats(
        texts, lang, backend=translator, batch_size=batch_size, cache=cache, progress=progress
    )
    n = len(rows)
    return [make_seed_row(r, lang, p, q) for r, p, q in zip(rows, out[:n], out[n:])], stats


@dataclass
class PreparedSeeds:
    """Translated, quality-filtered seeds ready to be written to a run's data folder."""

    lang: str
    train: list[dict]
    eval: list[dict]
    n_train_requested: int
    n_eval_requested: int
    train_translated: int  # training candidates translated (incl. margin)
    drops_train: dict[str, int]
    drops_eval: dict[str, int]
    language_id: dict[str, int]  # coverage of lingua on the kept rows
    translation: list[dict] = field(default_factory=list)  # TranslateStats of each round
    seconds: float = 0.0

    @property
    def shortfall(self) -> int:
        return max(0, self.n_train_requested - len(self.train))


def translate_and_filter(
    train_candidates: list[dict],
    eval_rows: list[dict],
    n_train: int,
    lang: str,
    translator,
    cache=None,
    margin: float = 0.15,
    batch_size: int | None = None,
    progress: bool = True,
    min_words: int | None = None,
) -> PreparedSeeds:
    """Translate only as much as needed: the held-out rows, then training candidates in order,
    n_train * (1 + margin) at first and more rounds for whatever the quality filter dropped, until
    n_train seeds are kept or the candidates run out (a shortfall is warned about and recorded).
    Training order is the sampling order, so budgets stay nested."""
    from .quality import MIN_WORDS_FOR_LANGUAGE_ID, filter_translated_seeds, language_id_coverage

    start = time.perf_counter()
    min_words = MIN_WORDS_FOR_LANGUAGE_ID if min_words is None else min_words
    rounds = []
    eval_seeds, stats = translate_seed_rows(eval_rows, lang, translator, cache, batch_size, progress)
    rounds.append(stats.as_dict())
    eval_kept, drops_eval = filter_translated_seeds(eval_seeds, lang, min_words=min_words)
    kept: list[dict] = []
    drops_train = {}
    position = 0
    while len(kept) < n_train and position < len(train_candidates):
        take = max(1, math.ceil((n_train - len(kept)) * (1 + margin)))
        chunk = train_candidates[position : position + take]
        position += len(chunk)
        seeds, stats = translate_seed_rows(chunk, lang, translator, cache, batch_size, progress)
        rounds.append(stats.as_dict())
        good, drops = filter_translated_seeds(seeds, lang, min_words=min_words)
        kept += good
        drops_train = {k: drops_train.get(k, 0) + v for k, v in drops.items()}
    if n_train and not kept:  # the translations stay in the cache for the next attempt
        raise ValueError(
            f"no training seed survived translation and the quality filter: {position} candidates "
            f"translated, drops by reason {drops_train} (held-out drops {drops_eval}); check the "
            f"translator ({getattr(translator, 'label', translator)}) and the target language {lang!r}"
        )
    prepared = PreparedSeeds(
        lang=lang,
        train=kept[:n_train],
        eval=eval_kept,
        n_train_requested=n_train,
        n_eval_requested=len(eval_rows),
        train_translated=position,
        drops_train=drops_train,
        drops_eval=drops_eval,
        language_id=language_id_coverage(kept[:n_train] + eval_kept, min_words),
        translation=rounds,
        seconds=time.perf_counter() - start,
    )
    if prepared.shortfall:
        warnings.warn(
            f"only {len(prepared.train)} of the {n_train} training seeds requested survived "
            f"translation and filtering ({len(train_candidates)} candidates, all translated): "
            f"shortfall {prepared.shortfall}",
            stacklevel=2,
        )
    return prepared


def examples_table(seeds: list[dict], n: int = 3, translator_label: str = "", max_chars: int = 300):
    """A pandas DataFrame showing n seeds side by side, English | translation."""
    import pandas as pd

    def cut(text: str) -> str:
        return text if len(text) <= max_chars else text[:max_chars] + " …"

    tgt = f"target ({translator_label})" if translator_label else "target"
    return pd.DataFrame(
        [
            {
                "id": s["id"],
                "prompt (en)": cut(s["prompt_en"]),
                f"prompt, {tgt}": cut(s["prompt_tgt"]),
                "response (en)": cut(s["response_en"]),
                f"response, {tgt}": cut(s["response_tgt"]),
            }
            for s in seeds[:n]
        ]
    )


def package_versions(
    names: Iterable[str] = ("torch", "transformers", "datasets", "lingua-language-detector", "pandas", "tokenizers"),
) -> dict[str, str | None]:
    from importlib import metadata

    from .. import __version__

    versions: dict[str, str | None] = {"clo_utils": __version__}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_data_folder(
    output_dir: str | os.PathLike,
    prepared: PreparedSeeds,
    *,
    translator: dict,
    load_counts: dict | None = None,
    parameters: dict | None = None,
    system_prompt: str | None = None,
    data_source: str | None = None,
) -> dict:
    """Write seeds, pairs, SFT rows and manifest.json as docs/run-layout.md describes; returns the
    manifest. `translator` is Translator.describe() (backend, model, label, versions)."""
    out = Path(output_dir)
    train = check_seed_rows(prepared.train, "seeds_train")
    contents = {
        "seeds_train.jsonl": train,
        "seeds_eval.jsonl": check_seed_rows(prepared.eval, "seeds_eval"),
        "pairs.jsonl": build_cross_lingual_pairs(train, system_prompt=system_prompt),
        **{f"sft_{v}.jsonl": build_sft_rows(train, variant=v, system_prompt=system_prompt) for v in SFT_VARIANTS},
    }
    files = {}
    for name, rows in contents.items():
        path = write_jsonl(out / name, rows)
        files[name] = {"lines": len(rows), "sha256": file_sha256(path)}
    source_file = Path(data_source) if data_source and Path(data_source).is_file() else None
    manifest = {
        "lang": prepared.lang,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data_source": data_source,
        "data_source_sha256": file_sha256(source_file) if source_file else None,
        "seed": (parameters or {}).get("seed"),
        "system_prompt": system_prompt,
        "translator": translator,
        "counts": {
            **(load_counts or {}),
            "eval_requested": prepared.n_eval_requested,
            "eval_kept": len(prepared.eval),
            "train_requested": prepared.n_train_requested,
            "train_candidates_translated": prepared.train_translated,
            "train_kept": len(prepared.train),
            "shortfall": prepared.shortfall,
            "pairs": len(contents["pairs.jsonl"]),
        },
        "drop_reasons": {"train": prepared.drops_train, "eval": prepared.drops_eval},
        "language_id": prepared.language_id,
        "translation": {
            "seconds": round(prepared.seconds, 3),
            "rounds": [{k: v for k, v in r.items() if k != "translator"} for r in prepared.translation],
        },
        "files": files,
        "versions": package_versions(),
        "parameters": parameters or {},
        "notes": "seeds_train is in sampling order: the budget-N run uses its first N lines (and the first "
        "2N lines of pairs.jsonl); budgets are nested. Seeds counted, not triples.",
    }
    write_json(out / "manifest.json", manifest)  # last: its presence marks a complete data folder
    return manifest
