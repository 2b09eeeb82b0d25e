"""English SFT sources, the steps of notebook 01:

    prepare_english_rows   load_english_sft -> drop_exact_duplicates -> filter_by_token_length
    select_seeds           deterministic nested sampling and the held-out split
    translate_and_filter   clo_utils.translation.translate + clo_utils.translation.quality, in rounds until the budget is met (seeds.py)
    write_data_folder      seeds, pairs and SFT rows (clo_utils.data) and manifest.json (seeds.py)

Every loader returns normalised rows {"id", "prompt", "response", "source"}, where
prompt = instruction, plus "\n\n" + input when the input (Dolly "context") is not empty.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

from ..common.runfiles import iter_jsonl

# Notebook 01 takes every step from this module; translating and writing live in clo_utils.translation.seeds.
from .seeds import (  # noqa: F401
    DATA_FILES,
    PreparedSeeds,
    examples_table,
    package_versions,
    translate_and_filter,
    translate_seed_rows,
    write_data_folder,
)

log = logging.getLogger(__name__)

SMOKE_SOURCE = "smoke"
# The kit's data files, shipped inside the package (a wheel carries them): clo_utils/assets/.
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_SFT = ASSETS_DIR / "english_sft.jsonl"  # its licences, row by row: english_sft.LICENCES.md beside it
OASST_SOURCES = ("oasst1", "OpenAssistant/oasst1")
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
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
# TRL dataset formats (columns present -> the column_map that reads them). A conversational value (a
# list of {"role", "content"}) gives its first user turn as instruction and first assistant turn as output.
TRL_COLUMN_MAPS = (
    ("prompt-completion", ("prompt", "completion"), {"instruction": "prompt", "output": "completion"}),
    ("preference", ("prompt", "chosen"), {"instruction": "prompt", "output": "chosen"}),
    ("conversational", ("messages",), {"instruction": "messages", "output": "messages"}),
    ("implicit-prompt preference", ("chosen",), {"instruction": "chosen", "output": "chosen"}),
)
COLUMN_MAP_HINT = (
    "column_map (notebook 01 parameter `column_map`, recipe key `data.column_map`: a JSON object "
    f'such as \'{{"instruction": "question", "output": "answer"}}\' or a preset: '
    f"{', '.join(sorted(COLUMN_PRESETS))})"
)


def smoke_data_path() -> Path:
    """The small English instruction set written for this kit (clo_utils/assets/smoke_sft.jsonl)."""
    return ASSETS_DIR / "smoke_sft.jsonl"


def default_data_source() -> str:
    """The English SFT set shipped with the package (clo_utils/assets/english_sft.jsonl, described in
    data/README.md): found in a checkout and in a wheel install alike."""
    if BUNDLED_SFT.is_file():
        return str(BUNDLED_SFT)
    raise FileNotFoundError(
        f"the default English SFT set is expected at {BUNDLED_SFT}, which is missing (an install that "
        "left out the package data?). Set data_source to any .jsonl/.json/.csv/.parquet file or hub "
        "dataset id (org/name), or to 'smoke' for the small smoke set."
    )


def resolve_columns(column_map: dict | str | None) -> dict[str, str]:
    """Canonical field -> source column, from a preset name, a JSON object string, a partial dict, or None
    (or "": the columns as named in DEFAULT_COLUMNS)."""
    column_map = column_map or None
    if isinstance(column_map, str) and column_map.strip().startswith("{"):
        try:
            column_map = json.loads(column_map)
        except json.JSONDecodeError as e:
            example = '{"instruction": "question", "output": "answer"}'
            raise ValueError(
                f"column_map {column_map!r} is not a valid JSON object ({e.msg} at column {e.colno}); "
                f"expected e.g. '{example}'"
            ) from None
    elif isinstance(column_map, str):
        if column_map not in COLUMN_PRESETS:
            raise ValueError(
                f"unknown column preset {column_map!r}; presets: {sorted(COLUMN_PRESETS)}, "
                'or a JSON object such as \'{"instruction": "question"}\''
            )
        column_map = COLUMN_PRESETS[column_map]
    if column_map is not None and not isinstance(column_map, dict):
        raise ValueError(f"column_map must be a dict, a JSON object string or a preset name, got {column_map!r}")
    unknown = set(column_map or {}) - set(DEFAULT_COLUMNS)
    if unknown:
        raise ValueError(f"column_map keys must be among {sorted(DEFAULT_COLUMNS)}; got {sorted(unknown)}")
    return {**DEFAULT_COLUMNS, **(column_map or {})}


def _missing_column_message(where: str, name: str, column: str, record: dict) -> str:
    message = f"{where}: missing field {column!r} (the {name}); fields present: {sorted(record)}."
    for kind, columns, suggested in TRL_COLUMN_MAPS:
        if all(c in record for c in columns):
            return (
                f"{message} This looks like TRL's {kind} format: pass column_map='{json.dumps(suggested)}' "
                f"through {COLUMN_MAP_HINT}."
            )
    return f"{message} Map another column with {COLUMN_MAP_HINT}."


def _turn_text(value: list, name: str, where: str, column: str) -> str | None:
    """A conversational value's first user turn (for the instruction) or first assistant turn (otherwise)."""
    role = "user" if name == "instruction" else "assistant"
    if not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise ValueError(f"{where}: field {column!r} must be a string or a list of {{'role', 'content'}} messages")
    return next((str(m["content"]) for m in value if m["role"] == role), None)


def normalise_record(
    record: dict, columns: dict[str, str], where: str, index: int, default_source: str
) -> dict | None:
    """One source record -> {id, prompt, response, source}; None when instruction or output is
    empty. `where` names the record in errors (e.g. "data.jsonl line 17")."""
    values = {}
    for name, column in columns.items():
        if column not in record:
            if name in REQUIRED_COLUMNS:
                raise ValueError(_missing_column_message(where, name, column, record))
            values[name] = None
            continue
        value = record[column]
        if isinstance(value, list) and name in ("instruction", "output"):
            value = _turn_text(value, name, where, column)
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
    """[(where, record)] from a JSONL file; errors name the file and line (runfiles.iter_jsonl)."""
    records = [(f"{path} line {n}", record) for n, record in iter_jsonl(path)]
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
            frame = pd.read_json(path, orient="records", dtype=False, encoding="utf-8-sig")
        except ValueError as e:
            raise ValueError(f"{path}: not a JSON list of objects ({e})") from None
        first_row = 0  # records are counted from 0 in a JSON list
    elif suffix == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
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
                rows.append(
                    {
                        "id": f"oasst1-{m['message_id']}",
                        "prompt": m["text"].strip(),
                        "response": reply["text"].strip(),
                        "source": "oasst1",
                    }
                )
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


def _offline_env() -> bool:
    return any(
        os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def load_hub_dataset(name: str, split: str, **hub_kwargs):
    """datasets.load_dataset for a hub id. A name that cannot be a hub id fails before any network
    call. Offline (HF_HUB_OFFLINE=1), only the local cache is tried and a miss is one clear error;
    when the variable was set after `datasets` was imported, `datasets` would still go online, so
    the hub id fails at once."""
    if not HUB_ID.match(name):
        raise FileNotFoundError(
            f"data source {name!r} is neither an existing file nor a hub dataset id (org/name); "
            f"expected a .jsonl/.json/.csv/.parquet file, a hub id, 'oasst1' or 'smoke'"
        )
    import datasets

    library_offline = datasets.config.HF_HUB_OFFLINE
    if not (library_offline or _offline_env()):
        return datasets.load_dataset(name, split=split, **hub_kwargs)
    offline = (
        f"data source {name!r} is a hub dataset id, but HF_HUB_OFFLINE is set and it is not in the local "
        "cache: load it once with network access, or set data_source to a local "
        ".jsonl/.json/.csv/.parquet file"
    )
    if not library_offline:
        raise FileNotFoundError(offline)
    try:
        return datasets.load_dataset(name, split=split, **hub_kwargs)
    except (ConnectionError, FileNotFoundError) as e:
        raise FileNotFoundError(f"{offline} ({type(e).__name__}: {e})") from None


def load_english_sft(
    source: str | os.PathLike,
    split: str = "train",
    column_map: dict | str | None = None,
    limit: int | None = None,
    oasst_lang: str = "en",
    **hub_kwargs,
) -> list[dict]:
    """English SFT rows {id, prompt, response, source} from:
      "smoke"                                the packaged set (clo_utils/assets/smoke_sft.jsonl);
      "oasst1" / "OpenAssistant/oasst1"      the hub dataset, reduced by reduce_oasst_messages
                                             (note: its validation split is AlpacaEval's oasst subset);
      a local .jsonl/.json/.csv/.parquet     fields instruction, input (optional), output, id, source;
      any other hub dataset id (org/name)    through datasets.load_dataset.
    Columns are renamed by column_map (a dict, a JSON object string, or a preset: "alpaca", "dolly";
    known hub ids map themselves, see HUB_PRESETS). `limit` keeps the first N rows (before any shuffling).
    """
    source = str(source)
    column_map = column_map or None  # "" (an unset notebook parameter) and {} mean: no mapping
    if source == SMOKE_SOURCE:
        rows = _normalise_all(read_jsonl_records(smoke_data_path()), resolve_columns(column_map), "clo-smoke", source)
    elif source in OASST_SOURCES:
        messages = load_hub_dataset("OpenAssistant/oasst1", split, **hub_kwargs)
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
        columns = resolve_columns(column_map if column_map is not None else HUB_PRESETS.get(source))
        table = load_hub_dataset(source, split, **hub_kwargs)
        records = [(f"{source} ({split}) row {i}", rec) for i, rec in enumerate(table)]
        if not records:
            raise ValueError(f"{source} ({split}): empty dataset")
        rows = _normalise_all(records, columns, source.split("/")[-1], source)
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


def filter_by_token_length(
    rows: Iterable[dict], tokenizer, max_prompt_tokens: int | None, max_response_tokens: int | None
) -> tuple[list[dict], int]:
    """(rows whose English prompt and response fit the limits, number dropped). None: no limit.
    Translations take more tokens than English, so training's max length leaves room above these limits."""
    rows = list(rows)
    keep = [True] * len(rows)
    for field_name, limit in (("prompt", max_prompt_tokens), ("response", max_response_tokens)):
        if limit is not None:
            lengths = count_tokens([r[field_name] for r in rows], tokenizer)
            keep = [k and n <= limit for k, n in zip(keep, lengths)]
    kept = [r for r, k in zip(rows, keep) if k]
    return kept, len(rows) - len(kept)


def prepare_english_rows(
    source: str | os.PathLike,
    tokenizer=None,
    max_prompt_tokens: int | None = None,
    max_response_tokens: int | None = None,
    **load_kwargs,
) -> tuple[list[dict], dict]:
    """Load, drop duplicated prompts, drop rows over the token limits: (rows, counts)."""
    rows = load_english_sft(source, **load_kwargs)
    counts = {"loaded": len(rows)}
    rows, counts["duplicates_dropped"] = drop_exact_duplicates(rows)
    if tokenizer is not None and (max_prompt_tokens is not None or max_response_tokens is not None):
        rows, counts["too_long_dropped"] = filter_by_token_length(
            rows, tokenizer, max_prompt_tokens, max_response_tokens
        )
        if not rows:  # say why here, not later as "n_eval=... but only 0 rows" in select_seeds
            raise ValueError(
                f"{source}: all {counts['loaded'] - counts['duplicates_dropped']} rows are longer than "
                f"max_prompt_tokens={max_prompt_tokens} / max_response_tokens={max_response_tokens} "
                "tokens; raise the limits (or use another tokenizer_id)"
            )
    else:
        counts["too_long_dropped"] = 0
    counts["candidates"] = len(rows)
    return rows, counts


def _sampling_key(seed: int, row_id: str) -> str:
    return hashlib.sha256(f"{seed}:{row_id}".encode()).hexdigest()


def select_seeds(
    rows: Iterable[dict], n_train: int | None, n_eval: int, seed: int = 0
) -> tuple[list[dict], list[dict]]:
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
