"""Translate English text into a target language: one function, several backends, a disk cache.

    translate(texts, "ca", backend="apertium", cache="~/.cache/clo_utils/translations.sqlite")

Backends (`BACKENDS`):
  apertium  Debian's rule-based Apertium as a subprocess: the offline default. Poor but real MT,
            labelled "rule-based MT" wherever the kit shows it.
  m2m100    facebook/m2m100_1.2B, the paper's translator (GPU recommended).
  nllb      facebook/nllb-200-distilled-600M (FLORES-200 codes from the language registry).
  marian    Helsinki-NLP/opus-mt-en-<x> (one model per pair; not every pair exists on the hub).
  chat      a prompted instruct LLM through its chat template.

Structure survives translation: each text is cut into pieces (clo_utils.translation.segments); list markers,
headings, blank lines, fenced code blocks, inline `code` and URLs are kept verbatim and only the
prose between them goes to the backend (clo_utils.translation.translators: the interface and Apertium;
clo_utils.translation.neural_translators: the models). A segment whose translation lost a protected span is
translated again piece by piece around the spans, so code is never translated.

Each unique segment is translated once. The cache (clo_utils.common.cache.DiskCache, SQLite) is keyed by
cache_key(backend, model, "en", target, segment) and written in one transaction per batch:
an interrupted run resumes where it stopped, a rerun translates nothing, a kill loses at most
the batch in flight. Several processes may share one cache file, which is how a large job is
sharded (see `translate_shard`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from ..common.cache import DiskCache, cache_key, open_cache
from ..common.languages import get_language
from .neural_translators import ChatTranslator, M2M100Translator, MarianTranslator, NllbTranslator
from .segments import Piece, around_spans, spans_survived, split_for_translation
from .translators import SOURCE_LANG, ApertiumTranslator, Translator, TranslatorError, parse_apertium_html

__all__ = [
    "BACKENDS",
    "ApertiumTranslator",
    "ChatTranslator",
    "M2M100Translator",
    "MarianTranslator",
    "NllbTranslator",
    "Piece",
    "TranslateStats",
    "Translator",
    "TranslatorError",
    "get_translator",
    "parse_apertium_html",
    "split_for_translation",
    "translate",
    "translate_shard",
    "translate_with_stats",
]

log = logging.getLogger(__name__)

BACKENDS: dict[str, type[Translator]] = {
    "apertium": ApertiumTranslator,
    "m2m100": M2M100Translator,
    "nllb": NllbTranslator,
    "marian": MarianTranslator,
    "chat": ChatTranslator,
}


def get_translator(
    backend: str, target_lang: str, model: str | None = None, device: str | None = None, dtype=None, **options
) -> Translator:
    """Build a backend once (models load on first use) to reuse it over several translate() calls."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown translation backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    if backend == "apertium":
        if device is not None or dtype is not None:
            raise ValueError("the apertium backend runs on CPU; device/dtype do not apply")
        return ApertiumTranslator(target_lang, model=model or None, **options)
    return BACKENDS[backend](target_lang, model=model or None, device=device, dtype=dtype, **options)


# ----------------------------------------------------------------------------------------------
# The engine: unique segments, cache, batches, reassembly
# ----------------------------------------------------------------------------------------------


@dataclass
class TranslateStats:
    texts: int = 0
    segments: int = 0  # unique segments in the texts
    cached: int = 0  # found in the cache before this call
    translated: int = 0  # translated and cached by this call
    skipped_other_shards: int = 0
    failed: int = 0  # segments the backend could not translate (not cached)
    spans_repaired: int = 0  # segments redone piece by piece because code/URLs did not survive
    batches: int = 0
    seconds: float = 0.0
    translator: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _in_shard(key: str, shard: tuple[int, int] | None) -> bool:
    if shard is None:
        return True
    index, count = shard
    return int(key[:15], 16) % count == index


def _check_shard(shard) -> None:
    if shard is None:
        return
    if (
        not isinstance(shard, tuple)
        or len(shard) != 2
        or not all(isinstance(v, int) for v in shard)
        or not 0 <= shard[0] < shard[1]
    ):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")


def _repair_spans(translator: Translator, segments: list[str]) -> dict[str, str | None]:
    """Translate segments piece by piece around their code/URL spans (one backend call)."""
    plans = {seg: around_spans(seg) for seg in segments}
    prose = list(dict.fromkeys(p.text for pieces in plans.values() for p in pieces if p.translate))
    done = dict(zip(prose, translator.translate_batch(prose))) if prose else {}
    repaired: dict[str, str | None] = {}
    for seg, pieces in plans.items():
        parts = [done.get(p.text) if p.translate else p.text for p in pieces]
        repaired[seg] = None if any(x is None for x in parts) else "".join(parts)
    return repaired


def _translate_batch_checked(translator: Translator, batch: list[str], stats: TranslateStats) -> dict[str, str | None]:
    outputs = translator.translate_batch(batch)
    if len(outputs) != len(batch):
        raise TranslatorError(f"{translator.label} returned {len(outputs)} translations for {len(batch)} segments")
    result = dict(zip(batch, outputs))
    broken = [s for s, t in result.items() if t is not None and not spans_survived(s, t)]
    if broken:
        stats.spans_repaired += len(broken)
        result.update(_repair_spans(translator, broken))
    return result


def _assemble(pieces: list[Piece], translations: dict[str, str | None]) -> str | None:
    parts = [translations.get(p.text) if p.translate else p.text for p in pieces]
    return None if any(x is None for x in parts) else "".join(parts)


def _run(
    texts: Sequence[str],
    target_lang: str,
    backend,
    model,
    batch_size,
    cache,
    device,
    dtype,
    progress: bool,
    shard,
    options,
) -> tuple[list[str | None], TranslateStats]:
    start = time.perf_counter()
    _check_shard(shard)
    if isinstance(backend, Translator):
        if model is not None or options or device is not None or dtype is not None:
            raise ValueError("pass model/device/dtype/options to get_translator(), not with a Translator instance")
        if backend.lang.code != get_language(target_lang).code:
            raise ValueError(f"translator is for {backend.lang.code!r}, not {target_lang!r}")
        translator = backend
    else:
        translator = get_translator(backend, target_lang, model=model, device=device, dtype=dtype, **options)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = batch_size or translator.default_batch_size
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")

    plans = [split_for_translation(t, translator.split_sentences) for t in texts]
    segments = list(dict.fromkeys(p.text for pieces in plans for p in pieces if p.translate))
    keys = {s: cache_key(translator.name, translator.model, SOURCE_LANG, translator.lang.code, s) for s in segments}
    stats = TranslateStats(texts=len(texts), segments=len(segments), translator=translator.describe())

    with open_cache(cache, "translations.sqlite") as db:
        found = db.get_many(keys.values()) if db is not None else {}
        translations: dict[str, str | None] = {s: found[k] for s, k in keys.items() if k in found}
        stats.cached = len(translations)
        todo = [s for s in segments if s not in translations and _in_shard(keys[s], shard)]
        stats.skipped_other_shards = len(segments) - stats.cached - len(todo)
        todo = translator.batch_order(todo)
        from tqdm import tqdm  # plain bar: tqdm.auto warns without ipywidgets

        with tqdm(
            total=len(todo),
            unit="seg",
            disable=not progress or not todo,
            desc=f"translate en->{translator.lang.code} [{translator.label}]",
        ) as bar:
            for i in range(0, len(todo), batch_size):
                batch = todo[i : i + batch_size]
                result = _translate_batch_checked(translator, batch, stats)
                good = {keys[s]: t for s, t in result.items() if t is not None}
                if db is not None:
                    db.put_many(good)  # one transaction: a kill loses at most this batch
                translations.update(result)
                stats.batches += 1
                stats.translated += len(good)
                stats.failed += len(result) - len(good)
                bar.update(len(batch))
    outputs = [_assemble(pieces, translations) for pieces in plans]
    stats.seconds = time.perf_counter() - start
    return outputs, stats


def translate_with_stats(
    texts: Sequence[str],
    target_lang: str,
    backend: str | Translator = "apertium",
    model: str | None = None,
    batch_size: int | None = None,
    cache: DiskCache | str | os.PathLike | None = None,
    device: str | None = None,
    dtype=None,
    progress: bool = True,
    **options,
) -> tuple[list[str], TranslateStats]:
    """`translate` plus counts (segments cached / translated / failed, batches, seconds)."""
    outputs, stats = _run(
        texts, target_lang, backend, model, batch_size, cache, device, dtype, progress, None, options
    )
    if stats.failed:
        log.warning(
            "%d segments could not be translated; %d texts come back empty (not cached: a rerun retries)",
            stats.failed,
            sum(o is None for o in outputs),
        )
    return ["" if o is None else o for o in outputs], stats


def translate(texts: Sequence[str], target_lang: str, backend: str | Translator = "apertium", **kwargs) -> list[str]:
    """Translate English `texts` into `target_lang`; one output per text, in order.

    backend: a name in BACKENDS or a Translator from get_translator() (reuse a loaded model).
    kwargs, as translate_with_stats takes them:
    model: Apertium mode or model id/folder (None: the backend's default for the language).
    batch_size: segments per backend call (None: the backend's default).
    cache: DiskCache, a path (a file; a folder or a path without suffix -> translations.sqlite), or None.
    device/dtype: HF backends (default: CUDA + bf16/fp16 when available, else CPU fp32).
    progress: a progress bar.
    any other keyword: a backend option, e.g. n_procs for apertium, num_beams for the HF models.
    A text whose translation failed comes back as "" (the quality filter drops it as empty);
    nothing is cached for it, so a rerun retries.
    """
    return translate_with_stats(texts, target_lang, backend, **kwargs)[0]


def translate_shard(
    texts: Sequence[str],
    target_lang: str,
    shard: tuple[int, int],
    cache: DiskCache | str | os.PathLike,
    backend: str | Translator = "apertium",
    model: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    dtype=None,
    progress: bool = True,
    **options,
) -> TranslateStats:
    """Translate one slice of the unique segments into the shared cache; returns counts only.

    Recipe for N processes or machines (the cache is the merge point):
        # process i of N, all pointing at the same cache file
        translate_shard(texts, "ca", shard=(i, N), cache=path, backend="m2m100")
        # afterwards, once: everything is cached, nothing is translated again
        outputs = translate(texts, "ca", cache=path, backend="m2m100")
    Segments go to shards by their cache key, so the split does not depend on the order of texts.
    """
    if cache is None:
        raise ValueError("translate_shard needs a cache: it is where the shards meet")
    return _run(texts, target_lang, backend, model, batch_size, cache, device, dtype, progress, shard, options)[1]
