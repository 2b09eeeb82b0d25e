"""The code a stage runs: which files, and what counts as a change."""

from clo_utils.pipeline.code_fingerprint import code_changes, code_hash, kit_files, stage_code
from clo_utils.pipeline.stage_notebooks import NOTEBOOKS_DIR

SOURCE = '''"""Module docstring."""

def margin(a, b):
    """Docstring."""
    return a - b  # a comment
'''


def test_comments_docstrings_and_layout_are_not_code():
    same = SOURCE.replace('"""Docstring."""', '"""Another docstring."""').replace("# a comment", "")
    same = same.replace("return a - b", "return (a -\n            b)") + "\n\n# trailing\n"
    assert code_hash(same) == code_hash(SOURCE)
    assert code_hash(SOURCE.replace("a - b", "b - a")) != code_hash(SOURCE)
    assert code_hash(SOURCE + "\nLIMIT = 1\n") != code_hash(SOURCE)
    assert code_hash(SOURCE.replace('    """Docstring."""\n', "")) == code_hash(SOURCE)


def test_each_notebook_covers_the_files_it_imports_and_no_others():
    code = {nb: stage_code(NOTEBOOKS_DIR / f"{nb}.ipynb") for nb in ("01_translate_data", "02_sft_baseline")}
    sft = code["02_sft_baseline"]
    # imported through clo_utils.train -> baselines / losses, and the packages on the way
    for path in (
        "clo_utils/losses.py",
        "clo_utils/baselines.py",
        "clo_utils/__init__.py",
        "notebooks/02_sft_baseline.ipynb",
    ):
        assert path in sft, path
    assert "clo_utils/pipeline/runner.py" not in sft and "clo_utils/analysis/report.py" not in sft
    # notebook 01 imports translation.sources and its seeds; no training code
    assert "clo_utils/translation/sources.py" in code["01_translate_data"]
    assert "clo_utils/losses.py" not in code["01_translate_data"]


def test_relative_imports_resolve_to_their_modules(tmp_path):
    pkg = tmp_path / "clo_utils"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "top.py").write_text("X = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("def f():\n    from .. import top\n    from .b import g\n")
    (pkg / "sub" / "b.py").write_text("def g():\n    pass\n")
    (pkg / "unused.py").write_text("")
    found = kit_files({"clo_utils.sub.a"}, pkg)
    assert sorted(found) == ["clo_utils", "clo_utils.sub", "clo_utils.sub.a", "clo_utils.sub.b", "clo_utils.top"]


def test_code_changes_name_edited_added_and_dropped_files():
    assert code_changes({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == ["b", "c"]
    assert code_changes({"a": "1", "b": "2"}, {"a": "1"}) == ["b"]
