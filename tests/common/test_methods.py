"""clo_utils.common.methods (the one table of methods) and clo_utils.common.text (words, language ID, chat messages)."""

from __future__ import annotations

import pytest

from clo_utils.common.methods import METHOD_ORDER, METHODS, TRAINED_METHODS, method_family, method_label, split_method
from clo_utils.common.text import chat_messages, count_words, detect_languages


def test_every_method_has_one_row_with_a_distinct_legend_entry():
    assert METHOD_ORDER[0] == "base" and METHOD_ORDER[-2:] == ("clo", "clo_nll_both")
    assert len({METHODS[m].label for m in METHOD_ORDER}) == len(METHOD_ORDER)
    assert all(0 <= m.colour_index < 10 for m in METHODS.values())  # seaborn "colorblind" has 10 colours
    assert set(TRAINED_METHODS) == {"sft", "sft_en", "sft_tgt", "sft_dpo", "clo", "clo_nll_both"}
    assert {m.family for m in METHODS.values()} == {"base", "sft", "dpo", "clo"}


def test_split_method_reads_suffixes_and_refuses_untrainable_names():
    assert split_method("clo_full") == ("clo", "03_clo_training", {"trainable": "full"})
    assert split_method("sft_dpo_lora") == (
        "sft_dpo",
        "02_sft_baseline",
        {"variant": "both", "then_dpo": True, "trainable": "lora"},
    )
    assert split_method("clo_nll_both") == ("clo_nll_both", "03_clo_training", {"nll_on": "both"})
    split_method("clo")[2]["trainable"] = "x"  # the table's fixed parameters are copied, never shared
    assert METHODS["clo"].fixed == {}
    for name in ("base", "dpo", "clo_all", "ppo"):
        with pytest.raises(ValueError, match=f"unknown method '{name}'; known: .*'clo'.* suffixes"):
            split_method(name)


def test_labels_and_families():
    assert method_label("clo") == "CLO" and method_label("clo_full") == "CLO (full)"
    assert method_label("my_method") == "my_method"
    assert method_family("clo_full", "full") == "clo" and method_family("sft_dpo-lora", "lora") == "sft_dpo"
    assert method_family("clo_full", None) == "clo_full" and method_family("full", "full") == "full"


def test_word_count_is_cjk_aware_and_ignores_numbers():
    assert count_words("图书馆每天开门") == 7 and count_words("In 2019, 3 cats.") == 2
    assert count_words("òwúrọ̀ mẹ́jọ alẹ́") == 3


def test_language_id_is_restricted_to_the_pair():
    assert detect_languages(
        ["El gat dorm a la cadira calenta del menjador.", "The cat sleeps on the warm chair in the dining room."], "ca"
    ) == ["ca", "en"]
    with pytest.raises(ValueError, match="pass other_lang="):
        detect_languages(["Hello there my friend"], "en")


def test_chat_messages():
    assert chat_messages("Hi") == [{"role": "user", "content": "Hi"}]
    assert chat_messages("Hi", "Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
