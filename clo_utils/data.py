"""English SFT data, cross-lingual preference pairs and SFT rows.

Pipeline of notebook 01: load_english_sft -> drop_exact_duplicates -> filter_by_token_length
(prepare_english_rows does the three) -> select_seeds (nested sampling, held-out split) ->
translate_and_filter (clo_utils.translate + clo_utils.quality) -> write_data_folder.

A *seed* is one English example with its translation:
    {"id", "lang", "prompt_en", "response_en", "prompt_tgt", "response_tgt"}
Each seed gives two cross-lingual triples (clo-method.md §1) in TRL's conversational
preference format, and one or two SFT rows for the baselines.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

SEED_FIELDS = ("id", "lang", "prompt_en", "response_en", "prompt_tgt", "response_tgt")
SFT_VARIANTS = ("both", "en", "tgt")


def _prompt_messages(text: str, system_prompt: str | None) -> list[dict]:
    # None keeps the chat template's own default (SmolLM2's inserts an English system prompt);
    # the choice is recorded in every run's manifest.
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return messages + [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def check_seed_rows(rows: Iterable[dict], source: str = "seed rows") -> list[dict]:
    """Validate seed rows; an error names the row and the missing or empty field."""
    rows = list(rows)
    for i, row in enumerate(rows):
        for field in SEED_FIELDS:
            if field not in row:
                raise ValueError(f"{source}: row {i} (id={row.get('id')!r}) has no field {field!r}; expected {SEED_FIELDS}")
            if not isinstance(row[field], str) or not row[field].strip():
                raise ValueError(f"{source}: row {i} (id={row.get('id')!r}) field {field!r} must be a non-empty string")
    return rows


def build_cross_lingual_pairs(rows: Iterable[dict], system_prompt: str | None = None) -> list[dict]:
    """Two preference triples per seed, the table of clo-method.md §1:

    | prompt | chosen | rejected | direction |
    | x_en   | y_en   | y_tgt    | "en"      |  answer English in English
    | x_tgt  | y_tgt  | y_en     | "tgt"     |  answer the target language in the target language

    Chosen and rejected carry the same content; only the language differs.
    """
    pairs = []
    for row in check_seed_rows(rows):
        common = {"seed_id": row["id"], "lang": row["lang"]}
        pairs.append({
            "prompt": _prompt_messages(row["prompt_en"], system_prompt),
            "chosen": _assistant(row["response_en"]),
            "rejected": _assistant(row["response_tgt"]),
            "direction": "en", **common,
        })
        pairs.append({
            "prompt": _prompt_messages(row["prompt_tgt"], system_prompt),
            "chosen": _assistant(row["response_tgt"]),
            "rejected": _assistant(row["response_en"]),
            "direction": "tgt", **common,
        })
    return pairs


def build_sft_rows(rows: Iterable[dict], variant: str = "both", system_prompt: str | None = None) -> list[dict]:
    """SFT rows (TRL conversational prompt-completion) for the baselines on the same seeds:
    "both" (x_en -> y_en and x_tgt -> y_tgt, the paper's SFT), "en" (SFT-en), "tgt" (SFT-tgt)."""
    if variant not in SFT_VARIANTS:
        raise ValueError(f"SFT variant must be one of {SFT_VARIANTS}, got {variant!r}")
    out = []
    for row in check_seed_rows(rows):
        sides = {"en": ("prompt_en", "response_en"), "tgt": ("prompt_tgt", "response_tgt")}
        for side in (("en", "tgt") if variant == "both" else (variant,)):
            p, r = sides[side]
            out.append({
                "prompt": _prompt_messages(row[p], system_prompt),
                "completion": _assistant(row[r]),
                "side": side, "seed_id": row["id"], "lang": row["lang"],
            })
    return out


# ==============================================================================================
# English SFT data: loading, cleaning, nested sampling
# ==============================================================================================
#
# Every loader returns normalised rows {"id", "prompt", "response", "source"}, where
# prompt = instruction, plus "\n\n" + input when the input (Dolly "context") is not empty.

SMOKE_SOURCE = "smoke"
OASST_SOURCES = ("oasst1", "OpenAssistant/oasst1")
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
SEED_ROW_FIELDS = SEED_FIELDS + ("source",)
# canonical field -> column in the source. instruction and output are required.
DEFAULT_COLUMNS = {"instruction": "instruction", "input": "input", "output": "output", "id": "id", "source": "source"}
REQUIRED_COLUMNS = ("instruction", "output")
COLUMN_PRESETS = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
    "dolly": {"instruction": "instruction", "input": "context", "output": "response"},
}
HUB_PRESETS = {
    "tatsu-lab/alpaca": "alpaca",
    "yahma/alpaca-cleaned": "alpaca",
    "databricks/databricks-dolly-15k": "dolly",
}
DATA_FILES = ("seeds_train.jsonl", "seeds_eval.jsonl", "pairs.jsonl",
              "sft_both.jsonl", "sft_en.jsonl", "sft_tgt.jsonl")


def repo_root() -> Path | None:
    """The checkout this package runs from (editable install or source tree), else None."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").exists() else None


def run_path(path: str | os.PathLike) -> Path:
    """A run folder path: relative paths are taken from the repository root when the package runs
    from a checkout (notebooks execute in notebooks/), else from the working directory."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    return (repo_root() or Path.cwd()) / path


def smoke_data_path() -> Path:
    """The small English instruction set written for this kit (clo_utils/assets/smoke_sft.jsonl)."""
    return Path(__file__).resolve().parent / "assets" / "smoke_sft.jsonl"


def default_data_source() -> str:
    """../shared/data/english_sft.jsonl beside the checkout when present (read in place, never
    copied into the repository), else the packaged smoke set."""
    root = repo_root()
    shared = root.parent / "shared" / "data" / "english_sft.jsonl" if root else None
    return str(shared) if shared and shared.exists() else SMOKE_SOURCE


def resolve_columns(column_map: dict | str | None) -> dict[str, str]:
    """Canonical field -> source column, from a preset name, a partial dict, or None (identity)."""
    if isinstance(column_map, str):
        if column_map not in COLUMN_PRESETS:
            raise ValueError(f"unknown column preset {column_map!r}; presets: {sorted(COLUMN_PRESETS)}")
        column_map = COLUMN_PRESETS[column_map]
    unknown = set(column_map or {}) - set(DEFAULT_COLUMNS)
    if unknown:
        raise ValueError(f"column_map keys must be among {sorted(DEFAULT_COLUMNS)}; got {sorted(unknown)}")
    return {**DEFAULT_COLUMNS, **(column_map or {})}


def normalise_record(record: dict, columns: dict[str, str], where: str, index: int, default_source: str) -> dict | None:
    """One source record -> {id, prompt, response, source}; None when instruction or output is
    empty. `where` names the record in errors (e.g. "data.jsonl line 17")."""
    values = {}
    for name, column in columns.items():
        if column not in record:
            if name in REQUIRED_COLUMNS:
                raise ValueError(f"{where}: missing field {column!r} (the {name}); fields present: "
                                 f"{sorted(record)}. Pass column_map={{{name!r}: '<column>'}} to map another column.")
            values[name] = None
            continue
        value = record[column]
        if value is not None and not isinstance(value, (str, int)):
            raise ValueError(f"{where}: field {column!r} must be a string, got {type(value).__name__}")
        values[name] = None if value is None else str(value)
    instruction, output = (values["instruction"] or "").strip(), (values["output"] or "").strip()
    if not instruction or not output:
        return None
    extra = (values["input"] or "").strip()
    return {
        "id": values["id"] or f"{default_source}-{index:05d}",
        "prompt": f"{instruction}\n\n{extra}" if extra else instruction,
        "response": output,
        "source": values["source"] or default_source,
    }


def read_jsonl_records(path: str | os.PathLike) -> list[tuple[str, dict]]:
    """[(where, record)] from a JSONL file; errors name the file and line."""
    path = Path(path)
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path} line {n}: expected a JSON object, got {type(record).__name__}")
            records.append((f"{path} line {n}", record))
    if not records:
        raise ValueError(f"{path}: empty file, no records")
    return records


def read_table_records(path: str | os.PathLike) -> list[tuple[str, dict]]:
    """[(where, record)] from .json (a list of objects), .csv or .parquet, read with pandas."""
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file, no records")
    if suffix == ".json":
        try:
            frame = pd.read_json(path, orient="records", dtype=False)
        except ValueError as e:
            raise ValueError(f"{path}: not a JSON list of objects ({e})") from None
        first_row = 0  # records are counted from 0 in a JSON list
    elif suffix == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        first_row = 2  # line 1 is the header
    elif suffix == ".parquet":
        frame = pd.read_parquet(path)
        first_row = 0
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {LOCAL_SUFFIXES}")
    if frame.empty:
        raise ValueError(f"{path}: empty file, no records")
    unit = "line" if suffix == ".csv" else "record"
    frame = frame.astype(object).where(frame.notna(), None)
    return [(f"{path} {unit} {first_row + i}", rec) for i, rec in enumerate(frame.to_dict(orient="records"))]


def reduce_oasst_messages(messages: Iterable[dict], lang: str = "en") -> list[dict]:
    """OASST1 message rows -> single-turn rows, the paper's reduction: keep trees whose root
    prompter message is in `lang`, and pair it with its rank-0 assistant reply (the top-ranked
    answer). Deleted messages are ignored; trees without a rank-0 reply are skipped."""
    messages = [m for m in messages if not m.get("deleted")]
    top_reply: dict[str, dict] = {}
    for m in messages:
        if m.get("role") == "assistant" and m.get("rank") == 0 and m.get("parent_id") is not None:
            top_reply.setdefault(m["parent_id"], m)
    rows = []
    for m in messages:
        if m.get("parent_id") is None and m.get("role") == "prompter" and m.get("lang") == lang:
            reply = top_reply.get(m["message_id"])
            if reply and m["text"].strip() and reply["text"].strip():
                rows.append({"id": f"oasst1-{m['message_id']}", "prompt": m["text"].strip(),
                             "response": reply["text"].strip(), "source": "oasst1"})
    return rows


def _check_unique_ids(rows: list[dict], where: str) -> None:
    seen: set[str] = set()
    for row in rows:
        if row["id"] in seen:
            raise ValueError(f"{where}: duplicate id {row['id']!r}; ids must be unique (seeds are keyed by id)")
        seen.add(row["id"])


def _normalise_all(records: list[tuple[str, dict]], columns: dict, default_source: str, where: str) -> list[dict]:
    rows = [normalise_record(rec, columns, at, i, default_source) for i, (at, rec) in enumerate(records)]
    empty = sum(r is None for r in rows)
    if empty:
        log.warning("%s: skipped %d records with an empty instruction or output", where, empty)
    rows = [r for r in rows if r is not None]
    if not rows:
        raise ValueError(f"{where}: no usable records (all have an empty instruction or output)")
    _check_unique_ids(rows, where)
    return rows


def load_english_sft(source: str | os.PathLike, split: str = "train", column_map: dict | str | None = None,
                     limit: int | None = None, oasst_lang: str = "en", **hub_kwargs) -> list[dict]:
    """English SFT rows {id, prompt, response, source} from:
      "smoke"                                the packaged set (clo_utils/assets/smoke_sft.jsonl);
      "oasst1" / "OpenAssistant/oasst1"      the hub dataset, reduced by reduce_oasst_messages
                                             (note: its validation split is AlpacaEval's oasst subset);
      a local .jsonl/.json/.csv/.parquet     fields instruction, input (optional), output, id, source;
      any other hub dataset id               through datasets.load_dataset; columns via column_map
                                             (a dict or a preset: "alpaca", "dolly"; known ids map
                                             themselves, see HUB_PRESETS).
    `limit` keeps the first N rows (after loading, before any shuffling).
    """
    source = str(source)
    if source == SMOKE_SOURCE:
        rows = _normalise_all(read_jsonl_records(smoke_data_path()), resolve_columns(column_map), "clo-smoke", source)
    elif source in OASST_SOURCES:
        import datasets

        messages = datasets.load_dataset("OpenAssistant/oasst1", split=split, **hub_kwargs)
        rows = reduce_oasst_messages(messages, lang=oasst_lang)
        if not rows:
            raise ValueError(f"OpenAssistant/oasst1 ({split}): no {oasst_lang!r} root prompt has a rank-0 reply")
    elif Path(source).suffix.lower() in LOCAL_SUFFIXES or Path(source).exists():
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data source {source!r}: no such file")
        reader = read_jsonl_records if path.suffix.lower() == ".jsonl" else read_table_records
        rows = _normalise_all(reader(path), resolve_columns(column_map), path.stem, str(path))
    else:
        import datasets

        preset = column_map if column_map is not None else HUB_PRESETS.get(source)
        table = datasets.load_dataset(source, split=split, **hub_kwargs)
        label = source.split("/")[-1]
        records = [(f"{source} ({split}) row {i}", rec) for i, rec in enumerate(table)]
        if not records:
            raise ValueError(f"{source} ({split}): empty dataset")
        rows = _normalise_all(records, resolve_columns(preset), label, source)
    return rows[:limit] if limit is not None else rows


def drop_exact_duplicates(rows: Iterable[dict]) -> tuple[list[dict], int]:
    """(rows keeping the first of each prompt, number dropped). Prompts compare whitespace-
    normalised; a duplicated prompt is dropped even when its response differs, because a prompt
    in both training and held-out would leak."""
    rows = list(rows)
    seen: set[str] = set()
    kept = []
    for row in rows:
        key = " ".join(row["prompt"].split())
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept, len(rows) - len(kept)


def count_tokens(texts: list[str], tokenizer) -> list[int]:
    """Tokens per text, without special tokens (the chat template adds its own)."""
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def filter_by_token_length(rows: Iterable[dict], tokenizer, max_prompt_tokens: int | None,
                           max_response_tokens: int | None) -> tuple[list[dict], int]:
    """(rows whose English prompt and response fit the limits, number dropped). None: no limit.
    Translations are longer in tokens (Spanish ~1.65x English for SmolLM2): training's max
    length must leave room for that."""
    rows = list(rows)
    keep = [True] * len(rows)
    for field_name, limit in (("prompt", max_prompt_tokens), ("response", max_response_tokens)):
        if limit is not None:
            lengths = count_tokens([r[field_name] for r in rows], tokenizer)
            keep = [k and n <= limit for k, n in zip(keep, lengths)]
    kept = [r for r, k in zip(rows, keep) if k]
    return kept, len(rows) - len(kept)


def prepare_english_rows(source: str | os.PathLike, tokenizer=None, max_prompt_tokens: int | None = None,
                         max_response_tokens: int | None = None, **load_kwargs) -> tuple[list[dict], dict]:
    """Load, drop duplicated prompts, drop rows over the token limits: (rows, counts)."""
    rows = load_english_sft(source, **load_kwargs)
    counts = {"loaded": len(rows)}
    rows, counts["duplicates_dropped"] = drop_exact_duplicates(rows)
    if tokenizer is not None and (max_prompt_tokens is not None or max_response_tokens is not None):
        rows, counts["too_long_dropped"] = filter_by_token_length(rows, tokenizer, max_prompt_tokens, max_response_tokens)
        if not rows:  # say why here, not later as "n_eval=... but only 0 rows" in select_seeds
            raise ValueError(f"{source}: all {counts['loaded'] - counts['duplicates_dropped']} rows are longer than "
                             f"max_prompt_tokens={max_prompt_tokens} / max_response_tokens={max_response_tokens} "
                             "tokens; raise the limits (or use another tokenizer_id)")
    else:
        counts["too_long_dropped"] = 0
    counts["candidates"] = len(rows)
    return rows, counts


def _sampling_key(seed: int, row_id: str) -> str:
    return hashlib.sha256(f"{seed}:{row_id}".encode("utf-8")).hexdigest()


def select_seeds(rows: Iterable[dict], n_train: int | None, n_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(training rows in sampling order, held-out rows): a deterministic shuffle by `seed`, the first
    `n_eval` rows held out, the next `n_train` (None: all the rest) for training.

    The shuffle sorts rows by sha256(seed, id), so a row's place depends only on its id: the budget-N
    sample is the first N training rows whatever the budget asked for (1,600 ⊂ 3,200 ⊂ 6,400), and
    the order survives rows being added to or filtered out of the source. Held-out rows are never
    training rows.
    """
    rows = list(rows)
    if n_eval < 0 or (n_train is not None and n_train < 0):
        raise ValueError(f"n_train and n_eval must be >= 0, got n_train={n_train}, n_eval={n_eval}")
    _check_unique_ids(rows, "select_seeds")
    ordered = sorted(rows, key=lambda r: _sampling_key(seed, r["id"]))
    if n_eval > len(ordered):
        raise ValueError(f"n_eval={n_eval} but only {len(ordered)} rows are available")
    eval_rows, train_rows = ordered[:n_eval], ordered[n_eval:]
    if n_train is not None:
        if n_train > len(train_rows):
            raise ValueError(f"n_train={n_train} but only {len(train_rows)} rows remain after holding out {n_eval}")
        train_rows = train_rows[:n_train]
    return train_rows, eval_rows


def make_seed_row(row: dict, lang: str, prompt_tgt: str, response_tgt: str) -> dict:
    """An English row plus its translation, in the seed format of docs/run-layout.md."""
    return {"id": row["id"], "lang": lang, "prompt_en": row["prompt"], "response_en": row["response"],
            "prompt_tgt": prompt_tgt, "response_tgt": response_tgt, "source": row["source"]}


def translate_seed_rows(rows: list[dict], lang: str, translator, cache=None, batch_size: int | None = None,
                        progress: bool = True):
    """Translate prompts and responses separately (the paper's way): (seed rows, TranslateStats)."""
    from .translate import translate_with_stats

    texts = [r["prompt"] for r in rows] + [r["response"] for r in rows]
    out, stats = translate_with_stats(texts, lang, backend=translator, batch_size=batch_size, cache=cache,
                                      progress=progress)
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
    train_translated: int                       # training candidates translated (incl. margin)
    drops_train: dict[str, int]
    drops_eval: dict[str, int]
    language_id: dict[str, int]                  # coverage of lingua on the kept rows
    translation: list[dict] = field(default_factory=list)  # TranslateStats of each round
    seconds: float = 0.0

    @property
    def shortfall(self) -> int:
        return max(0, self.n_train_requested - len(self.train))


def translate_and_filter(train_candidates: list[dict], eval_rows: list[dict], n_train: int, lang: str,
                         translator, cache=None, margin: float = 0.15, batch_size: int | None = None,
                         progress: bool = True, min_words: int | None = None) -> PreparedSeeds:
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
        chunk = train_candidates[position:position + take]
        position += len(chunk)
        seeds, stats = translate_seed_rows(chunk, lang, translator, cache, batch_size, progress)
        rounds.append(stats.as_dict())
        good, drops = filter_translated_seeds(seeds, lang, min_words=min_words)
        kept += good
        drops_train = {k: drops_train.get(k, 0) + v for k, v in drops.items()}
    if n_train and not kept:  # the translations stay in the cache for the next attempt
        raise ValueError(f"no training seed survived translation and the quality filter: {position} candidates "
                         f"translated, drops by reason {drops_train} (held-out drops {drops_eval}); check the "
                         f"translator ({getattr(translator, 'label', translator)}) and the target language {lang!r}")
    prepared = PreparedSeeds(lang=lang, train=kept[:n_train], eval=eval_kept, n_train_requested=n_train,
                             n_eval_requested=len(eval_rows), train_translated=position,
                             drops_train=drops_train, drops_eval=drops_eval,
                             language_id=language_id_coverage(kept[:n_train] + eval_kept, min_words),
                             translation=rounds, seconds=time.perf_counter() - start)
    if prepared.shortfall:
        import warnings

        warnings.warn(f"only {len(prepared.train)} of the {n_train} training seeds requested survived "
                      f"translation and filtering ({len(train_candidates)} candidates, all translated): "
                      f"shortfall {prepared.shortfall}", stacklevel=2)
    return prepared


def examples_table(seeds: list[dict], n: int = 3, translator_label: str = "", max_chars: int = 300):
    """A pandas DataFrame showing n seeds side by side, English | translation."""
    import pandas as pd

    def cut(text: str) -> str:
        return text if len(text) <= max_chars else text[:max_chars] + " …"

    tgt = f"target ({translator_label})" if translator_label else "target"
    return pd.DataFrame([{"id": s["id"], "prompt (en)": cut(s["prompt_en"]), f"prompt, {tgt}": cut(s["prompt_tgt"]),
                          "response (en)": cut(s["response_en"]), f"response, {tgt}": cut(s["response_tgt"])}
                         for s in seeds[:n]])


# ----------------------------------------------------------------------------------------------
# Writing a run's data folder (docs/run-layout.md)
# ----------------------------------------------------------------------------------------------


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write JSON lines atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [rec for _, rec in read_jsonl_records(path)]


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_versions(names: Iterable[str] = ("torch", "transformers", "datasets", "lingua-language-detector",
                                             "pandas", "tokenizers")) -> dict[str, str | None]:
    from importlib import metadata

    from . import __version__

    versions: dict[str, str | None] = {"clo_utils": __version__}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_data_folder(output_dir: str | os.PathLike, prepared: PreparedSeeds, *, translator: dict,
                      load_counts: dict | None = None, parameters: dict | None = None,
                      system_prompt: str | None = None, data_source: str | None = None) -> dict:
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
        "translation": {"seconds": round(prepared.seconds, 3),
                        "rounds": [{k: v for k, v in r.items() if k != "translator"} for r in prepared.translation]},
        "files": files,
        "versions": package_versions(),
        "parameters": parameters or {},
        "notes": "seeds_train is in sampling order: the budget-N run uses its first N lines (and the first "
                 "2N lines of pairs.jsonl); budgets are nested. Seeds counted, not triples.",
    }
    tmp = out / "manifest.json.partial"
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / "manifest.json")
    return manifest
