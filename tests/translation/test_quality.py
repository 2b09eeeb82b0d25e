"""clo_utils.translation.quality: every drop reason, the short-text rule, and the detector cache."""

from __future__ import annotations

import pytest

from clo_utils.common.text import count_words, pair_detector
from clo_utils.translation.quality import (
    DROP_REASONS,
    drop_reason,
    filter_translated_seeds,
    identify_language,
    language_id_coverage,
    prose,
    word_count,
)

GOOD = {
    "id": "s0",
    "lang": "ca",
    "source": "test",
    "prompt_en": "What should I pack for a three-day hiking trip in the mountains?",
    "response_en": "Pack a tent, a warm sleeping bag, enough food for every meal and a rain jacket.",
    "prompt_tgt": "Què he de portar per a una excursió de tres dies a la muntanya?",
    "response_tgt": "Porta una tenda, un sac de dormir calent, prou menjar per a cada àpat i una jaqueta per a la pluja.",
}


def seed(**changes) -> dict:
    return {**GOOD, **changes}


def test_a_good_translation_is_kept():
    kept, drops = filter_translated_seeds([GOOD], "ca")
    assert kept == [GOOD] and drops == dict.fromkeys(DROP_REASONS, 0)


@pytest.mark.parametrize(
    "row,reason",
    [
        (seed(response_tgt="   "), "empty"),
        (seed(prompt_tgt=""), "empty"),
        (seed(response_tgt=GOOD["response_en"]), "identical_to_english"),
        (seed(prompt_tgt=" " + GOOD["prompt_en"]), "identical_to_english"),
        (
            seed(response_tgt="Pack a tent, a warm sleeping bag and enough food for the whole trip, please."),
            "not_target_language",
        ),
        (seed(response_tgt="Porta una tenda."), "length_ratio"),  # 16 chars for 80: ratio 0.2
        (
            seed(
                prompt_tgt=GOOD["prompt_tgt"] + " Si us plau, explica-ho amb molt de detall, pas a pas, "
                "amb exemples i consells pràctics per a principiants."
            ),
            "length_ratio",
        ),
    ],
)
def test_each_drop_reason(row, reason):
    assert drop_reason(row, "ca") == reason
    kept, drops = filter_translated_seeds([GOOD, row, GOOD], "ca")
    assert len(kept) == 2 and drops[reason] == 1 and sum(drops.values()) == 1


def test_short_texts_are_not_judged_for_language():
    # "Sí." would be labelled anything by lingua; under 5 words the side is not judged for language.
    row = seed(
        prompt_en="Is Paris in France?", prompt_tgt="Paris és a França?", response_en="Yes.", response_tgt="Sí."
    )
    assert drop_reason(row, "ca") is None
    assert language_id_coverage([row]) == {"min_words": 5, "judged": 0, "too_short_to_judge": 2}
    english_short = seed(
        prompt_en="Is Paris in France today?", prompt_tgt="Is Paris in France now?"
    )  # 5 words: judged
    assert drop_reason(english_short, "ca") == "not_target_language"
    assert drop_reason(english_short, "ca", min_words=6) is None


def test_code_is_ignored_for_language_and_word_counts():
    text = (
        "Fes servir aquesta funció:\n\n```python\ndef largest(numbers):\n    return max(numbers)\n```\nI `max` també."
    )
    assert "def largest" not in prose(text) and "`max`" not in prose(text)
    assert word_count(text) == 6  # Fes servir aquesta funció: I també.
    assert identify_language(text, "ca") == "ca"


def test_first_reason_wins_and_counts_cover_every_reason():
    both = seed(prompt_tgt="", response_tgt=GOOD["response_en"])  # empty and identical: counted once, as empty
    kept, drops = filter_translated_seeds([both], "ca")
    assert kept == [] and drops["empty"] == 1 and drops["identical_to_english"] == 0
    assert set(drops) == set(DROP_REASONS)


def test_registry_ratio_bounds_apply_and_can_be_overridden():
    short = seed(response_tgt="Porta una tenda, un sac i menjar.")  # ~0.43 of the English length
    assert drop_reason(short, "ca") == "length_ratio"
    assert drop_reason(short, "ca", char_ratio=(0.3, 3.0)) is None


def test_detector_is_built_once_per_language_and_unknown_codes_fail():
    assert pair_detector("ca") is pair_detector("ca") is pair_detector("en", "ca")
    assert identify_language("El gat dorm a la cadira calenta del menjador.", "ca") == "ca"
    assert identify_language("The cat sleeps on the warm chair in the dining room.", "ca") == "en"
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        filter_translated_seeds([GOOD], "xx")
    with pytest.raises(ValueError, match="must not be English"):
        filter_translated_seeds([GOOD], "en")


def test_chinese_sides_are_counted_by_the_metric_word_counter_and_judged():
    # Chinese writes no spaces: a whitespace split sees one "word" and would never judge the side.
    row = {
        "id": "z0",
        "lang": "zh",
        "source": "test",
        "prompt_en": "What should I pack for a three-day hiking trip in the mountains?",
        "response_en": "Pack a tent, a warm sleeping bag, enough food for every meal and a rain jacket.",
        "prompt_tgt": "去山里徒步旅行三天，我应该带些什么？",
        "response_tgt": "带上帐篷、保暖的睡袋、足够每顿饭吃的食物和一件雨衣。",
    }
    assert word_count(row["prompt_tgt"]) == count_words(row["prompt_tgt"]) == 16  # one per Han character
    assert language_id_coverage([row]) == {"min_words": 5, "judged": 2, "too_short_to_judge": 0}
    assert drop_reason(row, "zh") is None
    english = {**row, "response_tgt": "Pack a tent and a warm sleeping bag for the trip."}
    assert drop_reason(english, "zh", char_ratio=(0.1, 3.0)) == "not_target_language"
