"""clo_utils.common.runfiles: atomic writes, path resolution, JSON/JSONL errors that name file and line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clo_utils.common.runfiles import (
    RunFileError,
    file_sha256,
    read_answers,
    read_json,
    read_jsonl,
    read_manifest,
    read_metrics,
    read_timings,
    read_train,
    repo_root,
    run_path,
    update_metrics,
    write_answers,
    write_json,
    write_jsonl,
    write_timings,
    write_train,
)

REPO = Path(__file__).resolve().parents[2]


class Unserialisable:
    pass


def test_atomic_jsonl_write_leaves_the_old_file_and_no_partial_file_on_error(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}, {"a": 2}])
    before = path.read_bytes()
    written = []

    def rows():  # the error comes after some lines reached the temporary file
        for i in range(3, 100):
            written.append(i)
            yield {"a": i}
        yield {"a": Unserialisable()}

    with pytest.raises(TypeError):
        write_jsonl(path, rows())
    assert len(written) == 97 and path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_atomic_json_write_error_leaves_no_file(tmp_path):
    with pytest.raises(ValueError):  # a circular reference fails mid-serialisation
        loop: list = []
        loop.append(loop)
        write_json(tmp_path / "metrics.json", {"eval": loop})
    assert list(tmp_path.iterdir()) == []


def test_json_and_jsonl_round_trip_keeps_unicode(tmp_path):
    rows = [{"prompt": "图书馆 òwúrọ̀", "n": 1}, {"prompt": "Què?", "n": 2}]
    path = write_jsonl(tmp_path / "sub" / "rows.jsonl", rows)  # parent folders are created
    assert read_jsonl(path) == rows
    assert "图书馆" in path.read_text(encoding="utf-8")  # written as UTF-8, not \u escapes
    assert read_json(write_json(tmp_path / "x.json", {"k": rows})) == {"k": rows}


def test_run_path_resolves_against_the_repository_root_from_another_cwd(tmp_path):
    code = "from clo_utils.common.runfiles import run_path, repo_root; print(run_path('runs/x')); print(repo_root())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(REPO / "runs" / "x"), str(REPO)]
    assert repo_root() == REPO
    assert run_path("/abs/x") == Path("/abs/x")
    assert run_path("~/x") == Path.home() / "x"


def test_read_jsonl_error_names_file_line_and_the_column_within_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2, "b": \n{"a": 3}\n', encoding="utf-8")
    # The value is missing at the end of line 3 (column 15), not at "column 1" of a next line.
    with pytest.raises(RunFileError, match=rf"^{path} line 3: invalid JSON \(Expecting value at column 15\)"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(RunFileError, match=r"line 2: expected a JSON object, got list"):
        read_jsonl(path)


def test_crlf_line_endings_and_a_bom_are_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n{"a": 2}\r\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    (tmp_path / "bom.json").write_bytes(b'\xef\xbb\xbf{"a": 1}')
    assert read_json(tmp_path / "bom.json") == {"a": 1}


def test_read_json_error_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{\n "run": {},\n "eval": {,}\n}', encoding="utf-8")
    with pytest.raises(RunFileError, match=rf"^{path} line 3: invalid JSON"):
        read_json(path)


def test_file_sha256_matches_hashlib(tmp_path):
    import hashlib

    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 << 20))  # more than one read block
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_update_metrics_merges_drops_and_read_metrics_checks_the_layout(tmp_path):
    update_metrics(tmp_path, {"run": {"method": "clo"}, "eval": {"tgt": {"fidelity": 0.5}}, "judge": {"tgt": {}}})
    merged = update_metrics(tmp_path, {"knowledge": {"arc": 0.3}}, drop=("judge",))
    assert merged == {"run": {"method": "clo"}, "eval": {"tgt": {"fidelity": 0.5}}, "knowledge": {"arc": 0.3}}
    assert read_metrics(tmp_path) == merged == read_metrics(tmp_path / "metrics.json")
    write_json(tmp_path / "metrics.json", {"run": {}, "eval": {}})
    with pytest.raises(RunFileError, match="'eval' block is empty"):
        read_metrics(tmp_path)
    write_json(tmp_path / "metrics.json", {"run": {}, "eval": {"tgt": {}}, "train": {"history": [1]}})
    with pytest.raises(RunFileError, match="train.history must be a list of objects"):
        read_metrics(tmp_path)


def test_answers_train_timings_manifest(tmp_path):
    rows = [{"id": "s1", "direction": "tgt", "answer": "Hola"}]
    write_answers(tmp_path, rows)
    assert read_answers(tmp_path) == rows
    write_jsonl(tmp_path / "answers.jsonl", [{"id": "s1"}])
    with pytest.raises(RunFileError, match=r"answers.jsonl line 1: expected an object with 'id' and 'direction'"):
        read_answers(tmp_path)
    assert read_train(tmp_path) is None
    write_train(tmp_path, {"run": {}, "history": [], "summary": {"loss": 1.0}})
    assert read_train(tmp_path)["summary"] == {"loss": 1.0}
    assert read_timings(tmp_path) is None
    write_timings(tmp_path, {"stages": [{"stage": "data", "seconds": 1.0}]})
    assert read_timings(tmp_path)["stages"][0]["stage"] == "data"
    with pytest.raises(FileNotFoundError, match="run notebooks/01_translate_data.ipynb"):
        read_manifest(tmp_path)
    write_json(tmp_path / "manifest.json", {"lang": "ca"})
    assert read_manifest(tmp_path) == {"lang": "ca"}
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_run_path_outside_a_checkout_takes_the_working_folder(tmp_path, monkeypatch):
    """A wheel install (no checkout above the package): relative run paths land in the working folder."""
    from clo_utils.common import runfiles

    monkeypatch.setattr(runfiles, "repo_root", lambda: None)
    monkeypatch.chdir(tmp_path)
    assert runfiles.base_folder() == tmp_path
    assert run_path("runs/smoke/ca/data") == tmp_path / "runs" / "smoke" / "ca" / "data"
    assert run_path("runs/smoke", runs_root="elsewhere") == tmp_path / "elsewhere" / "smoke"


def test_runs_root_stands_for_the_runs_folder_of_relative_run_paths(tmp_path):
    drive = tmp_path / "drive" / "clo-runs"
    assert run_path("runs/smoke/ca/data", drive) == drive / "smoke" / "ca" / "data"
    assert run_path("runs", drive) == drive
    assert run_path("runs/smoke/ca/data", "runs") == run_path("runs/smoke/ca/data") == REPO / "runs/smoke/ca/data"
    assert run_path("runs/smoke", "") == REPO / "runs" / "smoke"  # empty: no runs root given
    assert run_path("runs/x", "other/place") == REPO / "other" / "place" / "x"  # a relative root: from the base
    # Only the first part counts: other relative paths and absolute paths are kept as they are.
    assert run_path("data/runs/x.jsonl", drive) == REPO / "data" / "runs" / "x.jsonl"
    assert run_path("runsx/y", drive) == REPO / "runsx" / "y"
    assert run_path(tmp_path / "runs" / "a", drive) == tmp_path / "runs" / "a"
