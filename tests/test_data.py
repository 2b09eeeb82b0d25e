"""clo_utils.translation.sources and clo_utils.translation.seeds: loaders and their errors, the OASST1 reduction, cleaning, nested
sampling, translate-and-filter rounds, the data folder, and notebook 01 under papermill."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clo_utils.common.runfiles import file_sha256, read_jsonl
from clo_utils.data import build_cross_lingual_pairs, build_sft_rows, check_seed_rows, make_seed_row
from clo_utils.translation.sources import (
    COLUMN_PRESETS,
    DATA_FILES,
    default_data_source,
    drop_exact_duplicates,
    filter_by_token_length,
    load_english_sft,
    prepare_english_rows,
    reduce_oasst_messages,
    resolve_columns,
    select_seeds,
    translate_and_filter,
    write_data_folder,
)
from clo_utils.translation.translate import Translator

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUNDLED_SFT = REPO / "clo_utils" / "assets" / "english_sft.jsonl"
sys.path.insert(0, str(HERE))


def _rows(n: int, prefix: str = "r") -> list[dict]:
    return [
        {"id": f"{prefix}{i}", "prompt": f"Prompt number {i}?", "response": f"Answer number {i}.", "source": "test"}
        for i in range(n)
    ]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


def test_smoke_set_is_packaged_and_well_formed():
    rows = load_english_sft("smoke")
    assert 40 <= len(rows) <= 60
    assert {r["source"] for r in rows} == {"clo-smoke"}
    assert len({r["id"] for r in rows}) == len(rows) and len({r["prompt"] for r in rows}) == len(rows)
    assert all(set(r) == {"id", "prompt", "response", "source"} and r["prompt"] and r["response"] for r in rows)
    assert any("```" in r["response"] for r in rows)
    assert any("\n1. " in r["response"] for r in rows) and any("\n- " in r["response"] for r in rows)
    raw = read_jsonl(REPO / "clo_utils" / "assets" / "smoke_sft.jsonl")
    assert all(set(r) == {"id", "instruction", "input", "output", "source"} for r in raw)
    with_input = next(r for r in raw if r["input"])
    assert (
        next(x for x in rows if x["id"] == with_input["id"])["prompt"]
        == with_input["instruction"] + "\n\n" + with_input["input"]
    )


def test_default_source_is_the_english_sft_set_shipped_in_the_package():
    assert default_data_source() == str(BUNDLED_SFT)
    assert file_sha256(BUNDLED_SFT) == "fff4375400f852a8d2ec77be9c6f3c14ee5d7949fb53421520073624e141395c"
    rows = load_english_sft(default_data_source())
    assert len(rows) == 2481 and {r["source"] for r in rows} == {"dolly", "lima"}


def test_smoke_source_is_the_packaged_smoke_file():
    from clo_utils.translation.sources import smoke_data_path

    assert smoke_data_path() == REPO / "clo_utils" / "assets" / "smoke_sft.jsonl" and smoke_data_path().is_file()


def test_licence_notes_travel_with_the_data_and_match_the_repository_readme():
    """The licence table beside the shipped file is data/README.md's, row for row."""

    def licence_rows(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith(("| `dolly`", "| `lima`"))]

    beside = (BUNDLED_SFT.parent / "english_sft.LICENCES.md").read_text(encoding="utf-8")
    readme = (REPO / "data" / "README.md").read_text(encoding="utf-8")
    assert len(licence_rows(beside)) == 2 and licence_rows(beside) == licence_rows(readme)
    assert "CC BY-NC-SA 4.0" in beside and "CC BY-SA 3.0" in beside


def test_default_source_missing_is_a_clear_error(monkeypatch, tmp_path):
    from clo_utils.translation import sources

    monkeypatch.setattr(sources, "BUNDLED_SFT", tmp_path / "english_sft.jsonl")
    with pytest.raises(
        FileNotFoundError,
        match=r"expected at .*english_sft\.jsonl, which is missing.*data_source.*"
        r"\.jsonl/\.json/\.csv/\.parquet file or hub dataset id",
    ):
        default_data_source()
    assert "shared" not in Path(sources.__file__).read_text(encoding="utf-8")  # nothing reads ../shared


def test_jsonl_broken_line_names_file_and_line(tmp_path):
    path = _write(tmp_path / "data.jsonl", '{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": }\n')
    with pytest.raises(ValueError, match=r"data\.jsonl line 3: invalid JSON \(Expecting value at column 32\)"):
        load_english_sft(path)


def test_jsonl_error_at_the_end_of_a_line_names_that_line_and_column(tmp_path):
    # json.loads on the line with its line break reports "column 1" (of the line break's next line).
    path = _write(tmp_path / "data.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
    with pytest.raises(ValueError, match=r"data\.jsonl line 2: invalid JSON \(Expecting value at column 32\)"):
        load_english_sft(path)


def test_a_utf8_bom_is_accepted(tmp_path):
    for suffix, text in (
        ("jsonl", '{"instruction": "Què?", "output": "Res."}\n'),
        ("json", '[{"instruction": "Què?", "output": "Res."}]'),
        ("csv", "instruction,output\nQuè?,Res.\n"),
    ):
        path = tmp_path / f"bom.{suffix}"
        path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
        rows = load_english_sft(path)
        assert [(r["prompt"], r["response"]) for r in rows] == [("Què?", "Res.")], suffix


@pytest.mark.parametrize(
    "record,suggested",
    [
        ({"prompt": "Name a colour.", "completion": "Blue."}, {"instruction": "prompt", "output": "completion"}),
        (
            {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Bleu."},
            {"instruction": "prompt", "output": "chosen"},
        ),
        (
            {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]},
            {"instruction": "messages", "output": "messages"},
        ),
    ],
)
def test_trl_columns_get_a_column_map_that_notebook_01_and_recipes_can_pass(tmp_path, record, suggested):
    path = _write(tmp_path / "trl.jsonl", json.dumps(record) + "\n")
    with pytest.raises(ValueError) as error:
        load_english_sft(path)
    message = str(error.value)
    assert "trl.jsonl line 1: missing field 'instruction'" in message
    assert "notebook 01 parameter `column_map`" in message and "recipe key `data.column_map`" in message
    assert f"column_map='{json.dumps(suggested)}'" in message
    rows = load_english_sft(path, column_map=json.dumps(suggested))  # the suggestion, passed as a JSON string
    assert [(r["prompt"], r["response"]) for r in rows] == [("Name a colour.", "Blue.")]


def test_column_map_accepts_a_json_object_string():
    assert resolve_columns('{"output": "answer"}')["output"] == "answer"
    assert resolve_columns("dolly")["input"] == "context"
    assert resolve_columns("") == resolve_columns(None) == resolve_columns({})  # an unset notebook parameter
    with pytest.raises(ValueError, match=r"column_map .* is not a valid JSON object"):
        resolve_columns('{"output": answer}')
    with pytest.raises(ValueError, match=r"column_map keys must be among"):
        resolve_columns('{"answer": "output"}')


def test_a_source_that_is_neither_a_file_nor_a_hub_id_fails_at_once(monkeypatch):
    import time

    import datasets

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub must not be tried")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    start = time.perf_counter()
    for name in ("english_sft", "my data.jsonl.bak", "a/b/c"):
        with pytest.raises(FileNotFoundError, match=r"neither an existing file nor a hub dataset id \(org/name\)"):
            load_english_sft(name)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("datasets_offline", [True, False])  # False: the variable set after datasets was imported
def test_a_hub_id_offline_fails_at_once_with_a_clear_message(monkeypatch, tmp_path, datasets_offline):
    import time

    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", datasets_offline)
    if not datasets_offline:  # datasets would go online: it must not be called
        monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub must not be tried"))
    start = time.perf_counter()
    with pytest.raises(
        FileNotFoundError,
        match=r"'someorg/not-cached' is a hub dataset id, but HF_HUB_OFFLINE is set "
        r"and it is not in the local cache",
    ):
        load_english_sft("someorg/not-cached")
    assert time.perf_counter() - start < 10


def test_jsonl_missing_field_names_field_file_and_line(tmp_path):
    path = _write(
        tmp_path / "data.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "answer": "d"}\n'
    )
    with pytest.raises(ValueError, match=r"data\.jsonl line 2: missing field 'output'.*column_map"):
        load_english_sft(path)
    mapped = _write(tmp_path / "mapped.jsonl", '{"question": "c", "answer": "d"}\n')
    assert load_english_sft(mapped, column_map={"instruction": "question", "output": "answer"})[0]["response"] == "d"


def test_jsonl_empty_file_and_wrong_types(tmp_path):
    with pytest.raises(ValueError, match=r"empty\.jsonl: empty file"):
        load_english_sft(_write(tmp_path / "empty.jsonl", "\n  \n"))
    with pytest.raises(ValueError, match=r"list\.jsonl line 1: expected a JSON object, got list"):
        load_english_sft(_write(tmp_path / "list.jsonl", "[1, 2]\n"))
    with pytest.raises(ValueError, match=r"num\.jsonl line 1: field 'output' must be a string or a list of "):
        load_english_sft(_write(tmp_path / "num.jsonl", '{"instruction": "a", "output": ["b"]}\n'))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_english_sft(tmp_path / "nope.jsonl")


def test_duplicate_ids_are_an_error(tmp_path):
    path = _write(
        tmp_path / "d.jsonl",
        '{"id": "x", "instruction": "a", "output": "b"}\n{"id": "x", "instruction": "c", "output": "d"}\n',
    )
    with pytest.raises(ValueError, match="duplicate id 'x'"):
        load_english_sft(path)


def test_csv_json_parquet_and_column_presets(tmp_path):
    import pandas as pd

    frame = pd.DataFrame(
        {
            "instruction": ["Name a fruit.", "Summarise."],
            "context": ["", "A long text."],
            "response": ["An apple.", "Short."],
            "category": ["open_qa", "summarization"],
        }
    )
    frame.to_csv(tmp_path / "dolly.csv", index=False)
    frame.to_parquet(tmp_path / "dolly.parquet")
    (tmp_path / "dolly.json").write_text(frame.to_json(orient="records"))
    for suffix in ("csv", "parquet", "json"):
        rows = load_english_sft(tmp_path / f"dolly.{suffix}", column_map="dolly")
        assert [r["prompt"] for r in rows] == ["Name a fruit.", "Summarise.\n\nA long text."]
        assert [r["id"] for r in rows] == ["dolly-00000", "dolly-00001"] and rows[0]["source"] == "dolly"
    with pytest.raises(ValueError, match=r"dolly\.csv line 2: missing field 'output'"):
        load_english_sft(tmp_path / "dolly.csv")
    with pytest.raises(ValueError, match="unknown column preset"):
        load_english_sft(tmp_path / "dolly.csv", column_map="nope")
    _write(tmp_path / "empty.csv", "")
    with pytest.raises(ValueError, match=r"empty\.csv: empty file"):
        load_english_sft(tmp_path / "empty.csv")
    assert set(COLUMN_PRESETS) >= {"alpaca", "dolly"}


OASST_MESSAGES = [
    # An English tree: root prompt, two ranked replies, and a follow-up turn (ignored).
    {
        "message_id": "p1",
        "parent_id": None,
        "message_tree_id": "p1",
        "role": "prompter",
        "lang": "en",
        "text": " How do I boil an egg? ",
        "rank": None,
        "deleted": False,
    },
    {
        "message_id": "a1",
        "parent_id": "p1",
        "message_tree_id": "p1",
        "role": "assistant",
        "lang": "en",
        "text": "Second best answer.",
        "rank": 1,
        "deleted": False,
    },
    {
        "message_id": "a0",
        "parent_id": "p1",
        "message_tree_id": "p1",
        "role": "assistant",
        "lang": "en",
        "text": "Boil it for seven minutes.",
        "rank": 0,
        "deleted": False,
    },
    {
        "message_id": "p2",
        "parent_id": "a0",
        "message_tree_id": "p1",
        "role": "prompter",
        "lang": "en",
        "text": "And a soft one?",
        "rank": 0,
        "deleted": False,
    },
    {
        "message_id": "a2",
        "parent_id": "p2",
        "message_tree_id": "p1",
        "role": "assistant",
        "lang": "en",
        "text": "Six minutes.",
        "rank": 0,
        "deleted": False,
    },
    # A Spanish tree: dropped.
    {
        "message_id": "q1",
        "parent_id": None,
        "message_tree_id": "q1",
        "role": "prompter",
        "lang": "es",
        "text": "¿Qué hora es?",
        "rank": None,
        "deleted": False,
    },
    {
        "message_id": "b0",
        "parent_id": "q1",
        "message_tree_id": "q1",
        "role": "assistant",
        "lang": "es",
        "text": "No lo sé.",
        "rank": 0,
        "deleted": False,
    },
    # An English tree whose rank-0 reply was deleted and whose other reply is unranked: dropped.
    {
        "message_id": "r1",
        "parent_id": None,
        "message_tree_id": "r1",
        "role": "prompter",
        "lang": "en",
        "text": "Tell me a joke.",
        "rank": None,
        "deleted": False,
    },
    {
        "message_id": "c0",
        "parent_id": "r1",
        "message_tree_id": "r1",
        "role": "assistant",
        "lang": "en",
        "text": "Deleted joke.",
        "rank": 0,
        "deleted": True,
    },
    {
        "message_id": "c1",
        "parent_id": "r1",
        "message_tree_id": "r1",
        "role": "assistant",
        "lang": "en",
        "text": "Unranked joke.",
        "rank": None,
        "deleted": False,
    },
]


def test_oasst_reduction_keeps_english_roots_with_their_top_reply():
    assert reduce_oasst_messages(OASST_MESSAGES) == [
        {
            "id": "oasst1-p1",
            "prompt": "How do I boil an egg?",
            "response": "Boil it for seven minutes.",
            "source": "oasst1",
        }
    ]
    assert [r["id"] for r in reduce_oasst_messages(OASST_MESSAGES, lang="es")] == ["oasst1-q1"]


def test_hub_sources_go_through_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split="train", **kwargs):
        calls.append((name, split))
        if name == "OpenAssistant/oasst1":
            return datasets.Dataset.from_list(OASST_MESSAGES)
        return datasets.Dataset.from_list(
            [{"instruction": "Name a colour.", "context": "", "response": "Blue.", "category": "open_qa"}]
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert [r["id"] for r in load_english_sft("oasst1")] == ["oasst1-p1"]
    dolly = load_english_sft("databricks/databricks-dolly-15k", split="train")  # preset found by id
    assert dolly == [
        {
            "id": "databricks-dolly-15k-00000",
            "prompt": "Name a colour.",
            "response": "Blue.",
            "source": "databricks-dolly-15k",
        }
    ]
    assert calls == [("OpenAssistant/oasst1", "train"), ("databricks/databricks-dolly-15k", "train")]


# ------------------------------------------------------------------------------------------------
# Cleaning and nested sampling
# ------------------------------------------------------------------------------------------------


def test_exact_duplicates_keep_the_first():
    rows = _rows(3) + [{"id": "dup", "prompt": " Prompt  number 1? ", "response": "Other.", "source": "t"}]
    kept, dropped = drop_exact_duplicates(rows)
    assert dropped == 1 and [r["id"] for r in kept] == ["r0", "r1", "r2"]


def test_token_length_filter():
    from tiny_models import make_tokenizer

    tok = make_tokenizer()
    rows = _rows(2) + [
        {"id": "long", "prompt": "Hello, how are you? " * 30, "response": "Fine.", "source": "t"},
        {"id": "longr", "prompt": "Hi", "response": "The sea is blue and wide. " * 30, "source": "t"},
    ]
    kept, dropped = filter_by_token_length(rows, tok, max_prompt_tokens=40, max_response_tokens=40)
    assert [r["id"] for r in kept] == ["r0", "r1"] and dropped == 2
    assert filter_by_token_length(rows, tok, None, 40)[1] == 1
    kept_all, counts = prepare_english_rows("smoke", tok, None, None)
    assert counts == {
        "loaded": len(kept_all),
        "duplicates_dropped": 0,
        "too_long_dropped": 0,
        "candidates": len(kept_all),
    }


def test_everything_over_the_token_limits_is_an_error_naming_them():
    from tiny_models import make_tokenizer

    with pytest.raises(ValueError, match=r"smoke: all 48 rows are longer than max_prompt_tokens=1"):
        prepare_english_rows("smoke", make_tokenizer(), max_prompt_tokens=1, max_response_tokens=None)


def test_select_seeds_nested_disjoint_deterministic():
    rows = _rows(100)
    small, held = select_seeds(rows, 10, 20, seed=0)
    large, held_again = select_seeds(rows, 40, 20, seed=0)
    everything, _ = select_seeds(rows, None, 20, seed=0)
    assert large[:10] == small and everything[:40] == large and held == held_again
    assert not {r["id"] for r in everything} & {r["id"] for r in held}
    assert len(everything) == 80 and len(held) == 20
    assert [r["id"] for r in select_seeds(rows, 10, 20, seed=1)[0]] != [r["id"] for r in small]
    assert select_seeds(list(reversed(rows)), 10, 20, seed=0) == (small, held)  # order of the source is irrelevant
    # Adding rows to the source keeps the relative order of the old ones (budgets stay comparable).
    grown, _ = select_seeds(rows + _rows(50, prefix="new"), None, 0, seed=0)
    assert [r for r in grown if not r["id"].startswith("new")] == sorted(
        rows, key=lambda r: [x["id"] for x in grown].index(r["id"])
    )
    with pytest.raises(ValueError, match="n_train=81 but only 80 rows remain"):
        select_seeds(rows, 81, 20)
    with pytest.raises(ValueError, match="n_eval=101"):
        select_seeds(rows, None, 101)


# ------------------------------------------------------------------------------------------------
# Translate and filter, data folder
# ------------------------------------------------------------------------------------------------


class DictTranslator(Translator):
    """Translates from a fixed English -> Catalan table; unknown text comes back unchanged (so the
    quality filter drops it as identical_to_english). Counts segments."""

    name = "dict"

    def __init__(self, table: dict[str, str]):
        super().__init__("ca")
        self.table = table
        self.seen: list[str] = []

    @property
    def model(self) -> str:
        return "table"

    def translate_batch(self, segments):
        self.seen += segments
        return [self.table.get(s, s) for s in segments]


CA = {f"Prompt number {i}?": f"Pregunta número {i}?" for i in range(100)} | {
    f"Answer number {i}.": f"Resposta número {i}." for i in range(100)
}


def test_translate_and_filter_tops_up_and_stays_nested():
    rows = _rows(60)
    train_candidates, held = select_seeds(rows, None, 5, seed=0)
    untranslatable = {r["id"] for r in train_candidates[:12:3]}  # 4 of the first 12 candidates fail
    table = {
        k: v
        for k, v in CA.items()
        if not any(k.endswith(f" {r[1:]}?") or k.endswith(f" {r[1:]}.") for r in untranslatable)
    }
    translator = DictTranslator(table)
    prepared = translate_and_filter(train_candidates, held, 10, "ca", translator, progress=False)
    assert len(prepared.train) == 10 and len(prepared.eval) == 5
    assert prepared.drops_train["identical_to_english"] == 4 and prepared.shortfall == 0
    assert [s["id"] for s in prepared.train] == [r["id"] for r in train_candidates if r["id"] not in untranslatable][
        :10
    ]
    assert prepared.train_translated < 20  # translated only as much as needed (12 + top-up), not all 55
    assert len(prepared.translation) >= 3  # eval round + first round + at least one top-up
    smaller = translate_and_filter(train_candidates, held, 4, "ca", DictTranslator(table), progress=False)
    assert smaller.train == prepared.train[:4]  # budgets are nested after filtering too
    assert not {s["id"] for s in prepared.train} & {s["id"] for s in prepared.eval}


def test_nothing_surviving_the_filter_is_an_error_naming_the_reasons(tmp_path):
    from clo_utils.common.cache import DiskCache

    train_candidates, held = select_seeds(_rows(6), None, 1, seed=0)
    with pytest.raises(ValueError, match=r"no training seed survived.*'identical_to_english': 5"):
        translate_and_filter(
            train_candidates, held, 3, "ca", DictTranslator({}), cache=tmp_path / "c.sqlite", progress=False
        )
    with DiskCache(tmp_path / "c.sqlite") as db:
        assert len(db) == 12  # the translations are kept for the next attempt


def test_shortfall_is_warned_and_recorded():
    rows = _rows(8)
    train_candidates, held = select_seeds(rows, None, 2, seed=0)
    with pytest.warns(UserWarning, match="shortfall 4"):
        prepared = translate_and_filter(train_candidates, held, 10, "ca", DictTranslator(CA), progress=False)
    assert len(prepared.train) == 6 and prepared.shortfall == 4


def test_write_data_folder_matches_run_layout(tmp_path):
    train_candidates, held = select_seeds(_rows(20), None, 3, seed=0)
    translator = DictTranslator(CA)
    prepared = translate_and_filter(train_candidates, held, 5, "ca", translator, progress=False)
    manifest = write_data_folder(
        tmp_path / "data",
        prepared,
        translator=translator.describe(),
        load_counts={"loaded": 20},
        parameters={"seed": 0},
        data_source="test",
    )
    for name in DATA_FILES:
        path = tmp_path / "data" / name
        assert manifest["files"][name]["sha256"] == file_sha256(path)
        assert manifest["files"][name]["lines"] == len(read_jsonl(path))
    train = read_jsonl(tmp_path / "data" / "seeds_train.jsonl")
    assert train == prepared.train and check_seed_rows(train)
    assert set(train[0]) == {"id", "lang", "prompt_en", "response_en", "prompt_tgt", "response_tgt", "source"}
    assert read_jsonl(tmp_path / "data" / "pairs.jsonl") == build_cross_lingual_pairs(train)
    assert read_jsonl(tmp_path / "data" / "sft_tgt.jsonl") == build_sft_rows(train, "tgt")
    saved = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert saved["system_prompt"] is None and saved["seed"] == 0 and saved["counts"]["train_kept"] == 5
    assert saved["counts"]["pairs"] == 10 and saved["translator"]["backend"] == "dict"
    assert set(saved["drop_reasons"]) == {"train", "eval"} and saved["versions"]["transformers"]


def test_existing_pair_and_sft_builders_are_unchanged():
    seeds = [make_seed_row(r, "ca", CA[r["prompt"]], CA[r["response"]]) for r in _rows(2)]
    pairs = build_cross_lingual_pairs(seeds)
    assert [p["direction"] for p in pairs] == ["en", "tgt", "en", "tgt"]
    assert (
        pairs[0]["chosen"][0]["content"] == "Answer number 0."
        and pairs[0]["rejected"][0]["content"] == "Resposta número 0."
    )
    assert pairs[1]["prompt"] == [{"role": "user", "content": "Pregunta número 0?"}]
    assert len(build_sft_rows(seeds, "both")) == 4 and len(build_sft_rows(seeds, "en")) == 2


# ------------------------------------------------------------------------------------------------
# Notebook 01 under papermill
# ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("apertium") is None, reason="apertium not installed (scripts/install_apertium.sh)")
def test_notebook_01_runs_with_smoke_parameters(tmp_path, monkeypatch):
    import nbformat
    import papermill as pm
    from tiny_models import make_tokenizer

    modes = subprocess.run(["apertium", "-l"], capture_output=True, text=True).stdout.split()
    if "eng-cat" not in modes:
        pytest.skip("Apertium mode eng-cat not installed (scripts/install_apertium.sh)")
    notebook = REPO / "notebooks" / "01_translate_data.ipynb"
    source = nbformat.read(notebook, as_version=4)
    assert all(not c.get("outputs") for c in source.cells if c.cell_type == "code")  # committed clean
    assert source.metadata.kernelspec["name"] == "python3"
    assert "parameters" in source.cells[2].metadata.get("tags", [])

    tokenizer_dir = tmp_path / "tok"
    make_tokenizer().save_pretrained(tokenizer_dir)
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernel imports clo_utils from this checkout
    out_dir = tmp_path / "run" / "ca" / "data"
    pm.execute_notebook(
        str(notebook),
        str(tmp_path / "executed.ipynb"),
        kernel_name="python3",
        cwd=str(REPO / "notebooks"),
        progress_bar=False,
        parameters={
            "n_seeds": 6,
            "n_eval": 3,
            "translator": "apertium",
            "data_source": "smoke",
            "tokenizer_id": str(tokenizer_dir),
            "max_prompt_tokens": 400,
            "max_response_tokens": 400,
            "output_dir": str(out_dir),
            "cache_dir": str(tmp_path / "cache"),
        },
    )
    for name in DATA_FILES + ("manifest.json",):
        assert (out_dir / name).exists(), name
    assert len(read_jsonl(out_dir / "seeds_train.jsonl")) == 6 and len(read_jsonl(out_dir / "seeds_eval.jsonl")) == 3
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["translator"]["label"] == "apertium:eng-cat (Apertium rule-based MT)"
    assert manifest["translator"]["apertium_version"].startswith("Apertium")
    assert manifest["parameters"]["n_seeds"] == 6 and manifest["system_prompt"] is None
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    shown = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "rule-based MT" in shown and "not_target_language" in shown
