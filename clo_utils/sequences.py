"""Sequences for training: a conversation tokenised as the trainers see it, and batches of them.

One tokenisation for every method (TRL's convention: the prompt rendered with the generation prompt,
the completion the rest of the rendered conversation, EOS at its end), so SFT, SFT+DPO and CLO learn the
same response endings; the CLO collator pads or packs a batch of seeds (four sequences each).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

# Order of the four sequences of one seed inside a batch.
SEQUENCE_ORDER = ("en_chosen", "en_rejected", "tgt_chosen", "tgt_rejected")
# Where packed batches are proven equal to padded ones (tests/test_train.py, tiny models of each): the model
# types whose transformers code builds its masks with masking_utils, and the attention implementations for
# which masking_utils turns restarting position_ids into a block-diagonal mask.
PADDING_FREE_MODEL_TYPES = ("llama", "qwen2", "mistral", "gemma3_text")
PADDING_FREE_ATTENTION = ("eager", "sdpa")


def _chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    # The chat template renders BOS itself when the model wants one, so the text is tokenised
    # without adding special tokens again: one BOS, never two.
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )
    return list(out["input_ids"])


def tokenize_prompt_response(tokenizer, prompt: list[dict], response: list[dict]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation: labels are -100 on the prompt, the token ids on the response.

    Same convention as TRL's DPOTrainer: the completion is what the rendered full conversation
    adds after the prompt rendered with the generation prompt. If the template does not close the
    turn with EOS, EOS is appended so the model learns to stop.
    """
    if tokenizer.chat_template is None:
        raise ValueError("the tokenizer has no chat template; set tokenizer.chat_template before training")
    prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
    full_ids = _chat_ids(tokenizer, prompt + response)
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(
            "the chat template renders the prompt differently inside the full conversation; "
            "CLO needs the prompt to be a token prefix of prompt+response"
        )
    response_ids = full_ids[len(prompt_ids) :]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in response_ids:
        response_ids.append(tokenizer.eos_token_id)
    return prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids


def tokenize_clo_pairs(pairs: list[dict], tokenizer, max_length: int) -> tuple[list[dict], dict]:
    """One training example per seed: its four sequences (SEQUENCE_ORDER) tokenised.

    A seed whose en or tgt triple is missing is dropped and counted. A sequence longer than
    `max_length` is an error: `seeds_within_max_length` filters the seeds once, before any method
    tokenises them, so SFT, SFT+DPO and CLO train on the same seeds and never on a cut copy.
    """
    by_seed: dict[str, dict] = defaultdict(dict)
    for pair in pairs:
        if pair.get("direction") not in ("en", "tgt"):
            raise ValueError(
                f"pair for seed {pair.get('seed_id')!r}: direction must be 'en' or 'tgt', "
                f"got {pair.get('direction')!r}"
            )
        by_seed[pair["seed_id"]][pair["direction"]] = pair
    examples, stats = [], {"seeds_in": len(by_seed), "dropped_incomplete": 0}
    too_long = []
    for seed_id, triples in by_seed.items():
        if set(triples) != {"en", "tgt"}:
            stats["dropped_incomplete"] += 1
            continue
        seqs = []
        for name in SEQUENCE_ORDER:
            direction, side = name.split("_")
            triple = triples[direction]
            seqs.append(tokenize_prompt_response(tokenizer, triple["prompt"], triple[side]))
        if any(len(ids) > max_length for ids, _ in seqs):
            too_long.append(seed_id)
            continue
        examples.append(
            {
                "seed_id": seed_id,
                "index": len(examples),
                "input_ids": [ids for ids, _ in seqs],
                "labels": [lab for _, lab in seqs],
            }
        )
    _refuse_too_long(too_long, len(by_seed), max_length, "CLO seeds")
    stats["seeds_kept"] = len(examples)
    if not examples:
        raise ValueError(f"no seed left to train on after tokenisation: {stats}")
    return examples, stats


def seeds_within_max_length(
    seeds: list[dict], tokenizer, max_length: int, system_prompt: str | None = None
) -> tuple[list[dict], list[str]]:
    """(the seeds whose four CLO sequences all fit `max_length` tokens, the ids of the others).

    The sequences are tokenised exactly as training tokenises them (`tokenize_prompt_response` on
    `build_cross_lingual_pairs`). Every SFT row and DPO pair of a seed is one of its four CLO
    sequences, so the kept seeds fit every method: filtering once here gives SFT, SFT+DPO and CLO
    the same seeds, where per-method dropping would keep the English half of a seed CLO drops.
    """
    from .data import build_cross_lingual_pairs

    seeds = list(seeds)
    too_long: set[str] = set()
    for pair in build_cross_lingual_pairs(seeds, system_prompt=system_prompt):
        if pair["seed_id"] in too_long:
            continue
        for side in ("chosen", "rejected"):
            if len(tokenize_prompt_response(tokenizer, pair["prompt"], pair[side])[0]) > max_length:
                too_long.add(pair["seed_id"])
                break
    kept = [s for s in seeds if s["id"] not in too_long]
    dropped = [s["id"] for s in seeds if s["id"] in too_long]
    if not kept:
        raise ValueError(
            f"no seed fits max_length={max_length} tokens: all {len(seeds)} have a longer "
            "prompt+response sequence; raise max_length"
        )
    if dropped:
        log.warning(
            "dropped %d of %d seeds with a sequence longer than max_length=%d tokens: %s",
            len(dropped),
            len(seeds),
            max_length,
            dropped[:10],
        )
    return kept, dropped


def _refuse_too_long(ids: list, n_total: int, max_length: int | None, what: str) -> None:
    if ids:
        raise ValueError(
            f"{len(ids)} of {n_total} {what} are longer than max_length={max_length} tokens "
            f"(seeds {list(dict.fromkeys(ids))[:5]}): filter the seeds once with "
            "seeds_within_max_length(seeds, tokenizer, max_length) before building the rows, so that "
            "every method trains on the same seeds"
        )


def tokenize_sft_rows(rows: list[dict], tokenizer, max_length: int | None) -> list[dict]:
    """TRL pre-tokenised rows {"input_ids", "labels"} from `build_sft_rows`, tokenised like CLO's
    sequences (`tokenize_prompt_response`): every method's labels end the same way."""
    out, too_long = [], []
    for row in rows:
        ids, labels = tokenize_prompt_response(tokenizer, row["prompt"], row["completion"])
        if max_length is not None and len(ids) > max_length:
            too_long.append(row.get("seed_id", len(out)))
        out.append({"input_ids": ids, "labels": labels})
    _refuse_too_long(too_long, len(out), max_length, "SFT rows")
    return out


def tokenize_dpo_pairs(pairs: list[dict], tokenizer, max_length: int | None) -> list[dict]:
    """TRL pre-tokenised preference rows {"prompt_ids", "chosen_ids", "rejected_ids"}, tokenised
    like CLO's sequences (`tokenize_prompt_response`), and the padded width each pair asks for
    ("length": prompt plus the longer completion), read by group_by_length sampling."""
    out, too_long = [], []
    for pair in pairs:
        chosen, labels = tokenize_prompt_response(tokenizer, pair["prompt"], pair["chosen"])
        rejected, _ = tokenize_prompt_response(tokenizer, pair["prompt"], pair["rejected"])
        n_prompt = next(i for i, x in enumerate(labels) if x != -100)
        if max_length is not None and max(len(chosen), len(rejected)) > max_length:
            too_long.append(pair.get("seed_id", len(out)))
        out.append(
            {
                "prompt_ids": chosen[:n_prompt],
                "chosen_ids": chosen[n_prompt:],
                "rejected_ids": rejected[n_prompt:],
                "length": max(len(chosen), len(rejected)),
            }
        )
    _refuse_too_long(too_long, len(out), max_length, "preference pairs")
    return out


def pad_sequences(seqs: list[list[int]], labels: list[list[int]], pad_token_id: int) -> dict:
    """(len(seqs), L) right-padded input_ids, attention_mask and labels (-100 on padding)."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    label_t = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, (s, lab) in enumerate(zip(seqs, labels)):
        input_ids[row, : len(s)] = torch.tensor(s)
        label_t[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(s)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": label_t}


def pack_sequences(seqs: list[list[int]], labels: list[list[int]]) -> dict:
    """The sequences end to end in one (1, T) row, T their total length: no padding.

    `position_ids` restart at 0 with each sequence, and there is no attention mask: transformers then
    builds a block-diagonal causal mask from the position_ids (masking_utils.find_packed_sequence_indices),
    so each sequence attends to itself only, at the positions it has alone. `segment_ids` says which
    sequence each position belongs to. Each sequence's first label is -100, so no position predicts
    the next sequence's first token (a prompt token, never a label in CLO).
    """
    labels = [[-100, *lab[1:]] for lab in labels]
    lengths = torch.tensor([len(s) for s in seqs])
    return {
        "input_ids": torch.tensor([t for s in seqs for t in s]).unsqueeze(0),
        "position_ids": torch.cat([torch.arange(n) for n in lengths.tolist()]).unsqueeze(0),
        "labels": torch.tensor([t for lab in labels for t in lab]).unsqueeze(0),
        "segment_ids": torch.repeat_interleave(torch.arange(len(seqs)), lengths).unsqueeze(0),
    }


@dataclass
class CLOCollator:
    """A batch of seeds as its 4 * n_seeds sequences (SEQUENCE_ORDER per seed): right-padded into a
    (4 * n_seeds, L) batch, or with `padding_free` packed into one row (`pack_sequences`).

    The batching unit is the seed, so both triples of a seed always share a batch, on one process,
    whatever the shuffling.
    """

    pad_token_id: int
    padding_free: bool = False

    def __call__(self, features: list[dict]) -> dict:
        seqs = [ids for f in features for ids in f["input_ids"]]
        labels = [lab for f in features for lab in f["labels"]]
        batch = pack_sequences(seqs, labels) if self.padding_free else pad_sequences(seqs, labels, self.pad_token_id)
        batch["seed_index"] = torch.tensor([f["index"] for f in features])
        if "ref_logps" in features[0]:
            batch["ref_logps"] = torch.tensor([f["ref_logps"] for f in features], dtype=torch.float32)
        return batch


def padding_free_support(model) -> str | None:
    """None when packed batches are proven for `model`, else why not (for the log)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    attn = getattr(config, "_attn_implementation", None)
    if model_type not in PADDING_FREE_MODEL_TYPES:
        return f"model type {model_type!r} is not among {PADDING_FREE_MODEL_TYPES}"
    if attn not in PADDING_FREE_ATTENTION:
        return f"attention implementation {attn!r} is not among {PADDING_FREE_ATTENTION}"
    return None
