import pytest
from tiny_models import seed_rows

from clo_utils.data import build_cross_lingual_pairs, build_sft_rows


def test_two_triples_per_seed_as_in_the_paper_table():
    rows = seed_rows(2)
    pairs = build_cross_lingual_pairs(rows)
    assert len(pairs) == 4
    en, tgt = pairs[0], pairs[1]
    r = rows[0]
    assert en["direction"] == "en" and en["seed_id"] == r["id"] and en["lang"] == "ca"
    assert en["prompt"] == [{"role": "user", "content": r["prompt_en"]}]
    assert en["chosen"] == [{"role": "assistant", "content": r["response_en"]}]
    assert en["rejected"] == [{"role": "assistant", "content": r["response_tgt"]}]
    assert tgt["prompt"] == [{"role": "user", "content": r["prompt_tgt"]}]
    assert tgt["chosen"] == [{"role": "assistant", "content": r["response_tgt"]}]
    assert tgt["rejected"] == [{"role": "assistant", "content": r["response_en"]}]


def test_system_prompt_is_explicit():
    pairs = build_cross_lingual_pairs(seed_rows(1), system_prompt="Be brief.")
    assert pairs[0]["prompt"][0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize("variant, sides", [("both", ["en", "tgt"]), ("en", ["en"]), ("tgt", ["tgt"])])
def test_sft_variants(variant, sides):
    rows = seed_rows(3)
    sft = build_sft_rows(rows, variant)
    assert [r["side"] for r in sft] == sides * 3
    for row in sft:
        src = next(r for r in rows if r["id"] == row["seed_id"])
        assert row["prompt"][-1]["content"] == src[f"prompt_{row['side']}"]
        assert row["completion"] == [{"role": "assistant", "content": src[f"response_{row['side']}"]}]


def test_bad_rows_name_the_row_and_field():
    rows = seed_rows(2)
    del rows[1]["response_tgt"]
    with pytest.raises(ValueError, match=r"row 1 .*'response_tgt'"):
        build_cross_lingual_pairs(rows)
    with pytest.raises(ValueError, match="variant"):
        build_sft_rows(seed_rows(1), "fr")
