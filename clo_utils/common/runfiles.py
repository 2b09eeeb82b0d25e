"""The run-folder contract of docs/run-layout.md: paths, JSON/JSONL reading and atomic writing.

Every module and notebook reads and writes run files through these functions, so a file is
parsed and checked in one place and a kill mid-write never leaves a torn file behind: writes
go to a temporary file in the same folder and are renamed into place (os.replace is atomic).
A file that cannot be used raises RunFileError, whose message starts with the file's path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

PathLike = str | os.PathLike


class RunFileError(ValueError):
    """A run file that cannot be used; the message starts with its path (and line, for JSONL)."""


# ----------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------


def repo_root() -> Path | None:
    """The checkout this package runs from (editable install or source tree), else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").exists() else None


RUNS_DIR = "runs"  # the first part of every relative run path in the notebooks' and recipes' defaults


def base_folder() -> Path:
    """Where relative paths are taken from: the repository root when the package runs from a checkout
    (notebooks execute in notebooks/), else the working folder (a pip or wheel install)."""
    return repo_root() or Path.cwd()


def run_path(path: PathLike, runs_root: PathLike | None = None) -> Path:
    """A run folder path. Absolute paths are kept. A relative path under runs/ is taken from `runs_root`
    when one is given: with runs_root="/content/drive/MyDrive/clo-runs", "runs/smoke/ca/data" is
    /content/drive/MyDrive/clo-runs/smoke/ca/data. Other relative paths, and a relative runs_root
    itself, are taken from `base_folder()`. runs_root "runs" (the default) changes nothing."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    if runs_root is not None and str(runs_root) != "" and path.parts[:1] == (RUNS_DIR,):
        return run_path(runs_root).joinpath(*path.parts[1:])
    return base_folder() / path


def file_sha256(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# JSON and JSONL
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_writer(path: PathLike) -> Iterator[TextIO]:
    """A text file opened beside `path` and renamed onto it when the block ends without error;
    on an error the temporary file is removed and `path` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: PathLike) -> Any:
    """Parse a JSON file (a UTF-8 BOM is accepted); an error names the file, line and column."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise RunFileError(f"{path} line {e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise RunFileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def write_json(path: PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically. Floats of numpy/torch scalars are written as floats."""
    text = json.dumps(obj, indent=1, ensure_ascii=False, default=float) + "\n"
    with _atomic_writer(path) as f:
        f.write(text)
    return Path(path)


def iter_jsonl(path: PathLike) -> Iterable[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL file (a UTF-8 BOM is accepted).

    A malformed line is a RunFileError naming the file, the line and the column within that line:
    the line is parsed without its line break, so an error at the end of a line is not reported as
    column 1 of the next one.
    """
    path = Path(path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        for number, line in enumerate(f, 1):
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise RunFileError(f"{path} line {number}: invalid JSON ({e.msg} at column {e.pos + 1})") from None
            if not isinstance(record, dict):
                raise RunFileError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def read_jsonl(path: PathLike) -> list[dict]:
    """The objects of a JSONL file, one per non-blank line; errors name the file and line."""
    try:
        return [record for _, record in iter_jsonl(path)]
    except UnicodeDecodeError as e:
        raise RunFileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def write_jsonl(path: PathLike, rows: Iterable[dict]) -> Path:
    """Write one JSON object per line, atomically (rows may be a generator: they are streamed)."""
    with _atomic_writer(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


# ----------------------------------------------------------------------------------------------
# The files of a run folder (docs/run-layout.md)
# ----------------------------------------------------------------------------------------------


def _metrics_path(run_dir: PathLike) -> Path:
    path = Path(run_dir)
    return path if path.name == "metrics.json" else path / "metrics.json"


def read_metrics(run_dir: PathLike) -> dict:
    """A run's metrics.json (a run folder, or the file itself), checked against the layout:
    "run" and a non-empty "eval" are objects; "train", "judge", "knowledge" objects or null."""
    path = _metrics_path(run_dir)
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise RunFileError(f"{path}: top level must be a JSON object, got {type(metrics).__name__}")
    for block in ("run", "eval"):
        if not isinstance(metrics.get(block), dict):
            raise RunFileError(f"{path}: missing or non-object {block!r} block (see docs/run-layout.md)")
    for block in ("train", "judge", "knowledge"):
        if metrics.get(block) is not None and not isinstance(metrics[block], dict):
            raise RunFileError(f"{path}: {block!r} must be an object or null")
    if not metrics["eval"]:
        raise RunFileError(f"{path}: 'eval' block is empty: expected 'tgt' and/or 'en' results")
    for direction, fields in metrics["eval"].items():
        if not isinstance(fields, dict):
            raise RunFileError(f"{path}: eval[{direction!r}] must be an object")
    history = (metrics.get("train") or {}).get("history") or []
    if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
        raise RunFileError(f"{path}: train.history must be a list of objects")
    return metrics


def update_metrics(run_dir: PathLike, blocks: dict, drop: Sequence[str] = ()) -> dict:
    """Merge top-level blocks into run_dir/metrics.json (other blocks are kept, those named in
    `drop` removed), atomically; returns the result."""
    path = _metrics_path(run_dir)
    metrics = read_json(path) if path.exists() else {}
    if not isinstance(metrics, dict):
        raise RunFileError(f"{path}: top level must be a JSON object, got {type(metrics).__name__}")
    metrics = {k: v for k, v in metrics.items() if k not in drop}
    metrics.update(blocks)
    write_json(path, metrics)
    return metrics


def read_answers(run_dir: PathLike) -> list[dict]:
    """answers.jsonl of a run folder; every line is an object with "id" and "direction"."""
    path = Path(run_dir) / "answers.jsonl"
    rows = []
    for number, row in iter_jsonl(path):
        if "id" not in row or "direction" not in row:
            raise RunFileError(f"{path} line {number}: expected an object with 'id' and 'direction'")
        rows.append(row)
    return rows


def write_answers(run_dir: PathLike, rows: Iterable[dict]) -> Path:
    return write_jsonl(Path(run_dir) / "answers.jsonl", rows)


def read_train(run_dir: PathLike) -> dict | None:
    """train.json of a run folder ({"run", "history", "summary"}), or None when the run has none
    (base-0, or a training run that did not finish: train.json is written last)."""
    path = Path(run_dir) / "train.json"
    if not path.exists():
        return None
    record = read_json(path)
    if not isinstance(record, dict):
        raise RunFileError(f"{path}: expected an object with 'run', 'history' and 'summary'")
    return record


def write_train(run_dir: PathLike, record: dict) -> Path:
    return write_json(Path(run_dir) / "train.json", record)


def read_timings(root: PathLike) -> dict | None:
    """The batch runner's timings.json at a recipe root, or None when the recipe has none."""
    path = Path(root) / "timings.json"
    if not path.is_file():
        return None
    timings = read_json(path)
    if not isinstance(timings, dict) or not isinstance(timings.get("stages", []), list):
        raise RunFileError(f"{path}: expected {{'stages': [{{'stage', 'seconds'}}], 'wall_seconds', ...}}")
    return timings


def write_timings(root: PathLike, timings: dict) -> Path:
    return write_json(Path(root) / "timings.json", timings)


def read_manifest(data_dir: PathLike) -> dict:
    """A data folder's manifest.json; written last by notebook 01, so its absence means 01 did not finish."""
    path = Path(data_dir) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: run notebooks/01_translate_data.ipynb with output_dir={data_dir} "
            "first (manifest.json is written last, so its absence means 01 did not finish)"
        )
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise RunFileError(f"{path}: top level must be a JSON object, got {type(manifest).__name__}")
    return manifest
