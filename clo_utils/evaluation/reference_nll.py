"""The NLL of held-out reference answers given their prompts: each prompt and its reference in one row.

A row is the chat template's prompt followed by the reference answer up to and including its end-of-turn
token; the reference tokens are scored (fp32 log-softmax), the prompt's are context. Rows go through the
model in chunks of similar length (at most PREFILL_MAX_PADDING padding each, right-padded; on a CPU at most
PREFILL_POSITIONS_CPU positions a forward, and on any device few enough that the kept logits stay under
decoding.SCORED_LOGITS_BYTES), with the LM head on the scored positions only.

When answers are generated, the continuous decoding loop prefills each prompt together with its reference
(clo_utils.evaluation.generation `reference_ids`), so the prompts are forwarded once for both; this module
scores the rest (answers from the cache, sliding-window models). Each pair's score is cached beside the
answers, keyed by the weights' fingerprint, the pair's token ids and the settings that change the numbers,
so an evaluation rerun on unchanged weights forwards nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..batching import length_chunks
from ..common.cache import cache_key
from ..common.text import chat_messages
from .decoding import PREFILL_MAX_PADDING, _prefill_scored, scored_positions
from .generation import GenerationCache, _token_ids, chat_prompt_text
from .packed_linear import linear_backend, packed_linears

SCORE_KEY_VERSION = "clo-reference-nll-v1"  # part of every key: a changed scoring never reuses old scores

Pair = tuple[list[int], list[int]]  # (prompt token ids, reference-answer token ids)


def prompt_completion_ids(tokenizer, prompt: str, reference: str, system_prompt: str | None = None) -> Pair:
    """(prompt ids, reference-answer ids) as the chat template lays out the whole conversation.

    The answer part is the rendered assistant turn up to and including its end-of-turn token (the
    template's trailing newline is dropped): the model is scored on answering and then stopping,
    as it was trained. Prompt and answer are tokenised separately so the boundary is exact; the prompt
    ids are those generation feeds the model.
    """
    prompt_text = chat_prompt_text(tokenizer, prompt, system_prompt)
    messages = chat_messages(prompt, system_prompt) + [{"role": "assistant", "content": reference}]
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError(
            "the chat template renders the prompt differently with and without the answer; "
            "cannot separate the reference tokens"
        )
    return _token_ids(tokenizer, prompt_text), _token_ids(tokenizer, full_text[len(prompt_text) :].rstrip("\n"))


def forward_scores(
    model, pairs: Sequence[Pair], pad_id: int, batch_size: int | None = None
) -> list[tuple[float, int]]:
    """(summed NLL in nats, reference tokens) of every pair, in order: rows in length chunks of at most
    PREFILL_MAX_PADDING padding, at most `batch_size` rows and `scored_positions(model)` positions a forward,
    the linear layers packed as in the decoding loop (packed_linear)."""
    lengths = [len(p) + len(r) for p, r in pairs]
    positions = scored_positions(model)
    scores: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), packed_linears(model):
            for chunk in length_chunks(lengths, PREFILL_MAX_PADDING) if pairs else []:
                rows = len(chunk) if positions is None else max(1, positions // lengths[chunk[0]])
                rows = min(rows, batch_size or rows)
                for start in range(0, len(chunk), rows):
                    part = chunk[start : start + rows]
                    _, _, sums, counts = _prefill_scored(
                        model, [pairs[i][0] for i in part], [pairs[i][1] for i in part], pad_id, use_cache=False
                    )
                    for i, s, n in zip(part, sums, counts):
                        scores[i] = (s, n)
    finally:
        model.train(was_training)
    return scores


def _scoring_settings(model) -> dict:
    """Everything besides weights and token ids that changes a score."""
    import transformers

    return {
        "version": SCORE_KEY_VERSION,
        "linear": linear_backend(model),
        "dtype": str(model.dtype),
        "device": model.device.type,
        "attention": getattr(model.config, "_attn_implementation", None),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def pair_scores(
    model,
    pairs: Sequence[Pair],
    pad_id: int,
    batch_size: int | None = None,
    cache: GenerationCache | None = None,
    known: dict[int, tuple[float, int]] | None = None,
) -> list[tuple[float, int]]:
    """(summed NLL, reference tokens) of every pair: from `known` (scored while generating), then from
    `cache`, and the rest by forward_scores; new scores are stored in `cache`."""
    known = dict(known or {})
    fresh = set(known)  # scored here, not read from the cache
    keys: list[str] = []
    if cache is not None:
        settings = _scoring_settings(model)
        keys = [cache_key(cache.model_key, settings, p, r) for p, r in pairs]
        stored = cache.store.get_many([k for i, k in enumerate(keys) if i not in known])
        known.update((i, tuple(stored[k])) for i, k in enumerate(keys) if i not in known and k in stored)
    missing = [i for i in range(len(pairs)) if i not in known]
    known.update(zip(missing, forward_scores(model, [pairs[i] for i in missing], pad_id, batch_size)))
    fresh.update(missing)
    if cache is not None and fresh:
        cache.store.put_many({keys[i]: list(known[i]) for i in sorted(fresh)})
    return [known[i] for i in range(len(pairs))]


def corpus_nll(scores: Sequence[tuple[float, int]]) -> tuple[float, float]:
    """(token-mean NLL in nats, perplexity) over every reference token of the set: long answers weigh
    more, as in a corpus perplexity."""
    tokens = sum(n for _, n in scores)
    if tokens == 0:
        raise ValueError("no reference tokens to score")
    nll = sum(s for s, _ in scores) / tokens
    return nll, math.exp(nll)


def reference_nll(
    model,
    tokenizer,
    prompts: Sequence[str],
    references: Sequence[str],
    system_prompt: str | None = None,
    batch_size: int = 4,
    cache: GenerationCache | None = None,
) -> tuple[float, float]:
    """(token-mean NLL in nats, perplexity) of the reference answers given their prompts."""
    if len(prompts) != len(references):
        raise ValueError(f"{len(prompts)} prompts but {len(references)} references")
    pairs = [prompt_completion_ids(tokenizer, p, r, system_prompt) for p, r in zip(prompts, references)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return corpus_nll(pair_scores(model, pairs, pad_id, batch_size, cache))
