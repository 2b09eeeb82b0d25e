"""English SFT data, cross-lingual preference pairs and SFT rows.

A *seed* is one English example with its translation:
    {"id", "lang", "prompt_en", "response_en", "prompt_tgt", "response_tgt"}
Each seed gives two cross-lingual triples (clo-method.md §1) in TRL's conversational
preference format, and one or two SFT rows for the baselines.
"""

from __future__ import annotations

from typing import Iterable

SEED_FIELDS = ("id", "lang", "prompt_en", "response_en", "prompt_tgt", "response_tgt")
SFT_VARIANTS = ("both", "en", "tgt")


def _prompt_messages(text: str, system_prompt: str | None) -> list[dict]:
    # None keeps the chat template's own default (SmolLM2's inserts an English system prompt);
    # the choice is recorded in every run's manifest.
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return messages + [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def check_seed_rows(rows: Iterable[dict], source: str = "seed rows") -> list[dict]:
    """Validate seed rows; an error names the row and the missing or empty field."""
    rows = list(rows)
    for i, row in enumerate(rows):
        for field in SEED_FIELDS:
            if field not in row:
                raise ValueError(f"{source}: row {i} (id={row.get('id')!r}) has no field {field!r}; expected {SEED_FIELDS}")
            if not isinstance(row[field], str) or not row[field].strip():
                raise ValueError(f"{source}: row {i} (id={row.get('id')!r}) field {field!r} must be a non-empty string")
    return rows


def build_cross_lingual_pairs(rows: Iterable[dict], system_prompt: str | None = None) -> list[dict]:
    """Two preference triples per seed, the table of clo-method.md §1:

    | prompt | chosen | rejected | direction |
    | x_en   | y_en   | y_tgt    | "en"      |  answer English in English
    | x_tgt  | y_tgt  | y_en     | "tgt"     |  answer the target language in the target language

    Chosen and rejected carry the same content; only the language differs.
    """
    pairs = []
    for row in check_seed_rows(rows):
        common = {"seed_id": row["id"], "lang": row["lang"]}
        pairs.append({
            "prompt": _prompt_messages(row["prompt_en"], system_prompt),
            "chosen": _assistant(row["response_en"]),
            "rejected": _assistant(row["response_tgt"]),
            "direction": "en", **common,
        })
        pairs.append({
            "prompt": _prompt_messages(row["prompt_tgt"], system_prompt),
            "chosen": _assistant(row["response_tgt"]),
            "rejected": _assistant(row["response_en"]),
            "direction": "tgt", **common,
        })
    return pairs


def build_sft_rows(rows: Iterable[dict], variant: str = "both", system_prompt: str | None = None) -> list[dict]:
    """SFT rows (TRL conversational prompt-completion) for the baselines on the same seeds:
    "both" (x_en -> y_en and x_tgt -> y_tgt, the paper's SFT), "en" (SFT-en), "tgt" (SFT-tgt)."""
    if variant not in SFT_VARIANTS:
        raise ValueError(f"SFT variant must be one of {SFT_VARIANTS}, got {variant!r}")
    out = []
    for row in check_seed_rows(rows):
        sides = {"en": ("prompt_en", "response_en"), "tgt": ("prompt_tgt", "response_tgt")}
        for side in (("en", "tgt") if variant == "both" else (variant,)):
            p, r = sides[side]
            out.append({
                "prompt": _prompt_messages(row[p], system_prompt),
                "completion": _assistant(row[r]),
                "side": side, "seed_id": row["id"], "lang": row["lang"],
            })
    return out
