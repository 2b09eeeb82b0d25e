"""A small persistent key-value cache on SQLite, shared by translation, judging and generation.

Why SQLite rather than a hand-written JSONL: each `put_many` is one transaction, so a kill
mid-write loses at most the batch in flight and never leaves a torn record; several processes
can write the same file (sharded translation merges through it); INSERT OR IGNORE makes
duplicates impossible.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path


def cache_key(*parts) -> str:
    """Stable key for a tuple of JSON-serialisable parts."""
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def default_cache_dir() -> Path:
    """Where the kit keeps caches unless told otherwise ($CLO_CACHE_DIR, else XDG cache)."""
    if os.environ.get("CLO_CACHE_DIR"):
        return Path(os.environ["CLO_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clo_utils"


class DiskCache:
    """`key -> JSON value` on disk. Values are written in transactions of one batch each."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # timeout: another process may hold the write lock for the length of one batch.
        self._db = sqlite3.connect(str(self.path), timeout=120)
        self._db.execute("PRAGMA journal_mode=DELETE")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()

    def get_many(self, keys: Iterable[str]) -> dict[str, object]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, object] = {}
        for i in range(0, len(keys), 500):  # SQLite caps host parameters per statement
            chunk = keys[i : i + 500]
            rows = self._db.execute(f"SELECT key, value FROM kv WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update((k, json.loads(v)) for k, v in rows)
        return found

    def get(self, key: str, default=None):
        return self.get_many([key]).get(key, default)

    def put_many(self, items: dict[str, object]) -> None:
        with self._db:  # one transaction: all of the batch or none of it
            self._db.executemany(
                "INSERT OR IGNORE INTO kv (key, value) VALUES (?, ?)",
                [(k, json.dumps(v, ensure_ascii=False)) for k, v in items.items()],
            )

    def put(self, key: str, value) -> None:
        self.put_many({key: value})

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM kv").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def open_cache(cache: DiskCache | str | os.PathLike | None, file_name: str) -> Iterator[DiskCache | None]:
    """The cache a caller passed, as a DiskCache for the length of a `with` block.

    None (no disk cache) and an open DiskCache are used as they are and left open; a path is opened
    here and closed at the end of the block. A folder (an existing one, or a path without a suffix)
    means `<folder>/<file_name>`, e.g. translations.sqlite or judge.sqlite.
    """
    if cache is None or isinstance(cache, DiskCache):
        yield cache
        return
    path = Path(cache).expanduser()
    if path.is_dir() or not path.suffix:
        path = path / file_name
    with DiskCache(path) as store:
        yield store
