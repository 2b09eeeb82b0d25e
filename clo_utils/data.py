"""The paper's data: seed rows, cross-lingual preference pairs and SFT rows (docs/method.md §1).

A *seed* is one English example with its translation:
    {"id", "lang", "prompt_en", "response_en", "prompt_tgt", "response_tgt", "source"}
Each seed gives two cross-lingual triples in TRL's conversational preference format, and one or
two SFT rows for the baselines. Where seeds come from (loading, sampling, translating, the data
folder) is clo_utils.translation.sources.
"""

from __future__ import annotations

from collections.abc import Iterable

from .common.text import chat_messages

SEED_FIELDS = ("id", "lang", "prompt_en", "response_en", "prompt_tgt", "response_tgt")
SFT_VARIANTS = ("both", "en", "tgt")


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def check_seed_rows(rows: Iterable[dict], source: str = "seed rows") -> list[dict]:
    """Validate seed rows; an error names the row and the missing or empty field."""
    rows = list(rows)
    for i, row in enumerate(rows):
        for field in SEED_FIELDS:
            if field not in row:
                raise ValueError(
                    f"{source}: row {i} (id={row.get('id')!r}) has no field {field!r}; expected {SEED_FIELDS}"
                )
            if not isinstance(row[field], str) or not row[field].strip():
                raise ValueError(
                    f"{source}: row {i} (id={row.get('id')!r}) field {field!r} must be a non-empty string"
                )
    return rows


def build_cross_lingual_pairs(rows: Iterable[dict], system_prompt: str | None = None) -> list[dict]:
    """Two preference triples per seed, the table of docs/method.md §1:

    | prompt | chosen | rejected | direction |
    | x_en   | y_en   | y_tgt    | "en"      |  answer English in English
    | x_tgt  | y_tgt  | y_en     | "tgt"     |  answer the target language in the target language

    Chosen and rejected carry the same content; only the language differs.
    """
    pairs = []
    for row in check_seed_rows(rows):
        common = {"seed_id": row["id"], "lang": row["lang"]}
        pairs.append(
            {
                "prompt": chat_messages(row["prompt_en"], system_prompt),
                "chosen": _assistant(row["response_en"]),
                "rejected": _assistant(row["response_tgt"]),
                "direction": "en",
                **common,
            }
        )
        pairs.append(
            {
                "prompt": chat_messages(row["prompt_tgt"], system_prompt),
                "chosen": _assistant(row["response_tgt"]),
                "rejected": _assistant(row["response_en"]),
                "direction": "tgt",
                **common,
            }
        )
    return pairs


def build_sft_rows(rows: Iterable[dict], variant: str = "both", system_prompt: str | None = None) -> list[dict]:
    """SFT rows (TRL conversational prompt-completion) for the baselines on the same seeds:
    "both" (x_en -> y_en and x_tgt -> y_tgt, the paper's SFT), "en" (SFT-en), "tgt" (SFT-tgt)."""
    if variant not in SFT_VARIANTS:
        raise ValueError(f"SFT variant must be one of {SFT_VARIANTS}, got {variant!r}")
    out = []
    for row in check_seed_rows(rows):
        sides = {"en": ("prompt_en", "response_en"), "tgt": ("prompt_tgt", "response_tgt")}
        for side in ("en", "tgt") if variant == "both" else (variant,):
            p, r = sides[side]
            out.append(
                {
                    "prompt": chat_messages(row[p], system_prompt),
                    "completion": _assistant(row[r]),
                    "side": side,
                    "seed_id": row["id"],
                    "lang": row["lang"],
                }
            )
    return out


def make_seed_row(row: dict, lang: str, prompt_tgt: str, response_tgt: str) -> dict:
    """An English row plus its translation, in the seed format of docs/run-layout.md."""
    return {
        "id": row["id"],
        "lang": lang,
        "prompt_en": row["prompt"],
        "response_en": row["response"],
        "prompt_tgt": prompt_tgt,
        "response_tgt": response_tgt,
        "source": row["source"],
    }
