"""Answer generation: held-out prompts through the chat template, batched, with an on-disk cache.

Prompts are grouped into length-sorted batches; generation stops at any end-of-turn token (the chat
template's, the tokenizer's and the model's EOS) or at a ChatML turn end written as text. Greedy
answers run through clo_utils.evaluation.decoding (the prompts of all uncached batches in one decode
batch refilled as answers finish, prompts prefilled in chunks of similar length), which gives
transformers' `generate`'s tokens at less compute; sampling and a text turn end run through `generate`
itself, batch by batch. Generated answers are cached on disk (generations.sqlite in the kit's cache folder), one entry
per batch keyed by the weights' fingerprint, the batch's prompt tokens and every decoding setting,
written in one transaction each: evaluation killed mid-generation resumes with the batches it
lacks, and a complete rerun generates nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from ..common.cache import DiskCache, cache_key, default_cache_dir, open_cache
from ..common.text import chat_messages
from ..models import CHATML_TURN_END, end_of_turn_token_ids
from .decoding import DecodeStats, greedy_stream
from .packed_linear import DEFAULT as DEFAULT_LINEAR
from .packed_linear import linear_backend, packed_linears

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- chat prompts


def chat_prompt_text(tokenizer, prompt: str, system_prompt: str | None = None) -> str:
    """The prompt as the model sees it, ending where the assistant's answer begins."""
    return tokenizer.apply_chat_template(
        chat_messages(prompt, system_prompt), tokenize=False, add_generation_prompt=True
    )


def _token_ids(tokenizer, text: str) -> list[int]:
    # The chat template already writes any BOS it wants; adding special tokens would double it.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a turn: the chat template's turn end, the tokenizer's EOS and the model's."""
    return end_of_turn_token_ids(tokenizer, model)


# --------------------------------------------------------------------------- batches


def _until_eos(token_ids: list[int], eos_ids: Sequence[int]) -> list[int]:
    """The answer's tokens before its first end-of-turn token (and the padding after it); an EOS
    that the tokenizer does not mark as special would otherwise be decoded into the text."""
    for position, token in enumerate(token_ids):
        if token in eos_ids:
            return token_ids[:position]
    return token_ids


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first: memory trouble shows early)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


# --------------------------------------------------------------------------- generation cache

GENERATIONS_FILE = "generations.sqlite"
GENERATION_KEY_VERSION = "clo-generation-v1"  # part of every key: a changed decoding loop never reuses old answers


def weights_fingerprint(model) -> str:
    """sha256 over every tensor of the model's state dict (name, dtype, shape and raw bytes).

    It hashes the weights generation actually runs with, so it is sound whatever they were loaded
    from (a run's model/, a merged LoRA adapter, a dequantized embedded GGUF, a hub id) and in any
    dtype. The bytes are hashed as they are (no conversion to fp32), tensor by tensor on threads
    (hashlib releases the GIL), so an 8B model costs seconds, next to the minutes or hours of
    generation it keys.
    """
    state = sorted(model.state_dict().items())

    def tensor_digest(item) -> str:
        raw = item[1].detach().contiguous().reshape(-1).view(torch.uint8).cpu()
        return hashlib.sha256(raw.numpy()).hexdigest()

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(tensor_digest, state))
    total = hashlib.sha256()
    for (name, tensor), digest in zip(state, digests):
        total.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|{digest}\n".encode())
    return total.hexdigest()


@dataclass
class GenerationCache:
    """Generated answers on disk, one entry per batch. A key holds `model_key` (the weights'
    fingerprint), the batch's exact prompt token ids and every decoding setting; the value is the
    batch's answer token ids. `hits` and `misses` count the batches read and generated. The same file
    holds each reference answer's score ([summed NLL, tokens]; clo_utils.evaluation.reference_nll),
    under keys of their own version string."""

    store: DiskCache
    model_key: str
    hits: int = 0
    misses: int = 0


@contextlib.contextmanager
def open_generation_cache(cache: DiskCache | str | os.PathLike | None, model) -> Iterator[GenerationCache]:
    """A GenerationCache for `model` in `cache` (a folder gets generations.sqlite; None: the kit's
    cache folder, clo_utils.common.cache.default_cache_dir()), open for the length of a `with` block."""
    start = time.perf_counter()
    model_key = weights_fingerprint(model)
    log.info("weights fingerprint %s in %.1f s", model_key[:12], time.perf_counter() - start)
    with open_cache(default_cache_dir() if cache is None else cache, GENERATIONS_FILE) as store:
        yield GenerationCache(store, model_key)


def _decoding_settings(model, config, do_sample: bool, seed: int, linear: str) -> dict:
    """Everything besides weights and prompts that decides the generated tokens."""
    import transformers

    return {
        "linear": linear,
        "version": GENERATION_KEY_VERSION,
        "generation_config": config.to_diff_dict(),
        "seed": seed if do_sample else None,
        "dtype": str(model.dtype),
        "device": model.device.type,
        "attention": getattr(model.config, "_attn_implementation", None),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


# --------------------------------------------------------------------------- generation


def _generate_batch(model, tokenizer, rows, config, eos_ids, stats: DecodeStats | None) -> list[list[int]]:
    """One left-padded batch through transformers' generate: every row runs until the last one stops."""
    inputs = tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt").to(model.device)
    output = model.generate(**inputs, generation_config=config, tokenizer=tokenizer)
    width = inputs["input_ids"].shape[1]
    generated = output[:, width:].tolist()
    if stats is not None:
        stats.add_padded_batch([len(r) for r in rows], width, generated, eos_ids)
    return [_until_eos(row, eos_ids) for row in generated]


def generate_answers(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 256,
    batch_size: int = 8,
    system_prompt: str | None = None,
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int = 0,
    progress: bool = True,
    cache: GenerationCache | None = None,
    shrinking: bool = True,
    stats: DecodeStats | None = None,
    decode_rows: int | None = None,
    reference_ids: Sequence[Sequence[int]] | None = None,
    reference_scores: dict[int, tuple[float, int]] | None = None,
) -> list[str]:
    """Answers to `prompts` through the chat template, in the order of `prompts`.

    Greedy by default (reproducible, and the same for every model compared); sampling when
    `do_sample`, each batch seeded from `seed` and its position (sampled answers then depend on the
    batch composition, not on which batches came from the cache). Batches are built from
    length-sorted prompts with left padding, so little compute goes to padding; generation stops at
    EOS (the tokenizer's and the model's) or after max_new_tokens. With `cache`, a batch found there
    is not generated, and each generated batch is stored as soon as it is done.

    Greedy batches run through clo_utils.evaluation.decoding.greedy_stream when `shrinking` (the
    default): the prompts of every batch not in the cache share one decode batch of up to `decode_rows`
    rows (None: continuous.DECODE_ROWS), refilled as answers finish, prompts prefilled in chunks of
    similar length; each batch is stored once its last answer is done. The tokens are those of
    transformers' `generate`, which runs batch by batch with `shrinking=False` and always for sampling
    and for a turn end written as text. On a CPU the loop runs its linear layers through oneDNN on
    packed weights (clo_utils.evaluation.packed_linear), the same fp32 arithmetic summed in another order,
    so the two paths' cache entries are keyed apart (one per `batch_size` batch either way); their
    answers are compared token for token in tests/evaluation and benchmarks/generation.py. `stats`
    (optional) receives the positions computed here.

    `reference_ids` (optional, one token list per prompt: a reference answer as the template writes it) and
    `reference_scores` (a dict): the continuous loop prefills each generated prompt together with its
    reference answer, and `reference_scores[i]` receives (summed NLL in nats, reference tokens) of prompt i,
    so the NLL of the references costs no second pass over the prompts. Only prompts generated here by that
    loop get a score (not those from the cache, sampled or decoded by the shrinking loop).
    """
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if reference_ids is not None and len(reference_ids) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(reference_ids)} reference answers")
    if not prompts:
        return []
    eos_ids = _eos_token_ids(model, tokenizer)
    if not eos_ids:
        raise ValueError(
            "neither the tokenizer nor the model's generation config names an EOS token: "
            "answers would never stop; set tokenizer.eos_token"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    # A fresh config: the comparison must not depend on each checkpoint's own sampling defaults.
    sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
    # A ChatML turn end that is text, not a token (a base model given the kit's ChatML template),
    # stops generation as a string; the answer is cut there below.
    turn_end_is_text = CHATML_TURN_END in (tokenizer.chat_template or "") and tokenizer.convert_tokens_to_ids(
        CHATML_TURN_END
    ) in (None, tokenizer.unk_token_id)
    stops = {"stop_strings": [CHATML_TURN_END]} if turn_end_is_text else {}
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=pad_id,
        eos_token_id=eos_ids,
        **stops,
        **sampling,
    )
    encoded = [_token_ids(tokenizer, chat_prompt_text(tokenizer, p, system_prompt)) for p in prompts]
    batches = _length_sorted_batches([len(e) for e in encoded], batch_size)
    continuous = shrinking and not do_sample and not turn_end_is_text
    keys: list[str | None] = [None] * len(batches)
    stored: dict[str, object] = {}
    if cache is not None:
        linear = linear_backend(model) if continuous else DEFAULT_LINEAR
        settings = _decoding_settings(model, config, do_sample, seed, linear)
        keys = [
            cache_key(cache.model_key, settings, index if do_sample else None, [encoded[i] for i in batch])
            for index, batch in enumerate(batches)
        ]
        stored = cache.store.get_many(keys)
    answers: list[str | None] = [None] * len(prompts)
    was_training, saved_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    try:
        with (
            torch.inference_mode(),
            tqdm(total=len(prompts), desc="generating", unit="answer", disable=not progress) as bar,
        ):

            def finish(index: int, new_tokens: list[list[int]], generated: bool) -> None:
                """A batch's answers: stored (one transaction: the whole batch or nothing) and decoded."""
                batch, key = batches[index], keys[index]
                if cache is not None and generated:
                    cache.store.put_many({key: new_tokens})
                    stored[key] = new_tokens
                    cache.misses += 1
                for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                    answers[i] = (text.split(CHATML_TURN_END, 1)[0] if turn_end_is_text else text).strip()
                bar.update(len(batch))

            missing = []
            for index, key in enumerate(keys):
                if key in stored:
                    cache.hits += 1
                    finish(index, stored[key], generated=False)
                elif continuous:
                    missing.append(index)
                else:
                    if do_sample:
                        torch.manual_seed(seed * 1_000_003 + index)
                    rows = [encoded[i] for i in batches[index]]
                    finish(index, _generate_batch(model, tokenizer, rows, config, eos_ids, stats), generated=True)
            if missing:
                # Every missing batch's prompts share one continuously refilled decode batch; a batch is stored
                # as soon as its last answer is done.
                slots = [(index, k) for index in missing for k in range(len(batches[index]))]
                pending = {index: [None] * len(batches[index]) for index in missing}
                left = {index: len(batches[index]) for index in missing}
                rows = [encoded[batches[index][k]] for index, k in slots]
                scored = None if reference_ids is None else [reference_ids[batches[index][k]] for index, k in slots]
                row_scores: dict[int, tuple[float, int]] = {}
                with packed_linears(model):
                    for row, new_tokens in greedy_stream(
                        model,
                        rows,
                        eos_ids,
                        pad_id,
                        max_new_tokens,
                        max_rows=decode_rows,
                        stats=stats,
                        references=scored,
                        scores=row_scores,
                    ):
                        index, k = slots[row]
                        pending[index][k] = new_tokens
                        left[index] -= 1
                        if not left[index]:
                            finish(index, pending.pop(index), generated=True)
                if reference_scores is not None:
                    reference_scores.update(
                        (batches[slots[row][0]][slots[row][1]], s) for row, s in row_scores.items()
                    )
    finally:
        tokenizer.padding_side = saved_side
        model.train(was_training)
    return answers  # type: ignore[return-value]
