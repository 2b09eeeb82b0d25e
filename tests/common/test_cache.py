"""clo_utils.common.cache: the one cache opener shared by translation and judging."""

from __future__ import annotations

import sqlite3

import pytest

from clo_utils.common.cache import DiskCache, open_cache


def test_open_cache_resolves_folders_and_closes_only_what_it_opened(tmp_path):
    with open_cache(None, "x.sqlite") as store:
        assert store is None
    with DiskCache(tmp_path / "mine.sqlite") as mine:
        with open_cache(mine, "x.sqlite") as store:
            assert store is mine
        assert len(mine) == 0  # still open: the caller owns it
    with open_cache(tmp_path, "translations.sqlite") as store:  # an existing folder
        store.put("k", [1, "ü"])
    assert (tmp_path / "translations.sqlite").is_file()
    with pytest.raises(sqlite3.ProgrammingError):  # opened by open_cache, closed by it
        len(store)
    with open_cache(tmp_path / "new", "judge.sqlite") as store:  # no suffix: a folder, created
        store.put("k", 1)
    with open_cache(tmp_path / "c.db", "judge.sqlite") as store:  # a file path is used as it is
        store.put("k", 2)
    assert (tmp_path / "new" / "judge.sqlite").is_file() and (tmp_path / "c.db").is_file()
    with open_cache(str(tmp_path / "translations.sqlite"), "other.sqlite") as store:
        assert store.get("k") == [1, "ü"]
