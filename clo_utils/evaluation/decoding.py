"""Greedy decoding without generate's padding: `greedy_stream` / `greedy_answers`, and the shrinking loop.

Models whose cache layers are all full attention decode through clo_utils.evaluation.continuous (one
decode batch refilled as answers finish, a KV cache written in place); the others (Gemma-3's
sliding-window layers, attention that takes no 4D mask) through the shrinking loop below, `max_rows`
prompts at a time.

transformers' `generate` keeps every row of a batch until the last one stops: a row that reached its
end of turn goes on computing padding, and every prompt is left-padded to the batch's longest. This
shrinking loop computes the same greedy tokens with less:

    1. prefill: the batch's prompts, sorted by length, are forwarded in chunks of at most
       `max_padding` left padding each (clo_utils.batching.length_chunks), each into its own KV cache;
    2. join: the chunks' caches are left-padded (zeros, masked) to the widest prompt and concatenated
       into one batch, so decoding runs every row in one forward per step;
    3. decode: one token per active row per step, the argmax of the last position's logits (as
       `generate` takes it, in fp32); a row that emits an end-of-turn token or reaches
       `max_new_tokens` leaves the batch at once (its KV-cache rows, mask and position dropped).

Inputs match `generate`'s for the same rows: left padding, positions counted from the attention
mask (cumsum - 1), the mask extended by one per step, logits at the last position only. Padded
columns are masked out, so a row's tokens do not depend on its neighbours.

Caches of full-attention layers (DynamicLayer) join at any width; sliding-window layers
(DynamicSlidingWindowLayer, Gemma-3) join while the widest prompt is shorter than the window, since
their cache then still holds every prompt token; past that, or with any other cache layer type, each
chunk is decoded as its own batch (still shrinking). `DecodeStats` counts the positions each forward
computes, for the padding and utilisation benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..batching import length_chunks

# Left padding per prefill chunk: at most this share of a chunk's positions.
PREFILL_MAX_PADDING = 0.10


@dataclass
class DecodeStats:
    """Positions computed by a generation call, for padding and FLOP accounting.

    rows: one (prompt tokens, new tokens up to and including the end-of-turn token) per answer;
    computed: positions run through the model (padded prefill rows x width, plus one per active row
    per decode step); real: the prompt tokens and the generated tokens fed back (the last generated
    token of a row is never fed)."""

    rows: list[tuple[int, int]] = field(default_factory=list)
    computed: int = 0
    real: int = 0

    def add_rows(self, rows: Sequence[tuple[int, int]]) -> None:
        self.rows.extend(rows)
        self.real += sum(p + n - 1 for p, n in rows)

    def add_padded_batch(self, prompt_lengths: Sequence[int], width: int, generated: Sequence[Sequence[int]], eos_ids):
        """A batch run by transformers' generate: `width` prompt columns, then every row fed each new token
        (but the last) until the last row stops, its tokens after its EOS being padding."""
        steps = max(map(len, generated), default=0)
        self.computed += len(generated) * (width + max(steps - 1, 0))
        self.add_rows(
            [
                (p, next((k + 1 for k, t in enumerate(g) if t in eos_ids), len(g)))
                for p, g in zip(prompt_lengths, generated)
            ]
        )

    @property
    def padding_share(self) -> float:
        return 1.0 - self.real / self.computed if self.computed else 0.0


def _left_padded(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[r, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """generate's position ids for a left-padded prompt: real tokens count from 0, padding gets 0."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _next_tokens(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, :].to(dtype=torch.float32).argmax(-1)


def _joinable(caches, width: int) -> bool:
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    for cache in caches:
        for layer in cache.layers:
            if type(layer) is DynamicSlidingWindowLayer:
                if width >= layer.sliding_window:
                    return False
            elif type(layer) is not DynamicLayer:
                return False
    return True


def _join_caches(model, caches, widths: Sequence[int]):
    """One DynamicCache holding every chunk's rows, each left-padded with zeros to the widest chunk."""
    from transformers import DynamicCache

    width = max(widths)
    joined = DynamicCache(config=model.config)
    for index in range(len(caches[0].layers)):
        keys, values = [], []
        for cache, w in zip(caches, widths):
            layer = cache.layers[index]
            pad = (0, 0, width - w, 0)  # (head_dim: none, sequence: on the left)
            keys.append(torch.nn.functional.pad(layer.keys, pad))
            values.append(torch.nn.functional.pad(layer.values, pad))
        joined.layers[index].update(torch.cat(keys), torch.cat(values))
    return joined


def _prefill(model, rows: Sequence[Sequence[int]], pad_id: int, stats: DecodeStats | None):
    from transformers import DynamicCache

    ids, mask = _left_padded(rows, pad_id, model.device)
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=_positions(mask),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    if stats is not None:
        stats.computed += ids.numel()
    return out.past_key_values, mask, _next_tokens(out.logits)


# fp32 logits a scored forward may hold at once (positions x vocabulary x 4 bytes), besides the model's own copy.
SCORED_LOGITS_BYTES = 2**30


def scored_positions(model) -> int | None:
    """Padded positions per scored forward (prompt and reference answer in one row): at most
    PREFILL_POSITIONS_CPU on a CPU (where that size runs fastest), and on any device few enough that the
    kept logits stay under SCORED_LOGITS_BYTES; None: no cap (a model without a vocabulary size)."""
    from .continuous import PREFILL_POSITIONS_CPU

    vocab = getattr(model.config, "vocab_size", None) or getattr(model.config.get_text_config(), "vocab_size", None)
    cap = max(1, SCORED_LOGITS_BYTES // (4 * vocab)) if vocab else None
    if model.device.type == "cpu":
        return min(PREFILL_POSITIONS_CPU, cap) if cap else PREFILL_POSITIONS_CPU
    return cap


def _prefill_scored(
    model,
    prompts: Sequence[Sequence[int]],
    references: Sequence[Sequence[int]],
    pad_id: int,
    stats: DecodeStats | None = None,
    use_cache: bool = True,
):
    """Each row's prompt followed by its reference answer, right-padded, in one forward.

    Returns (cache, first tokens, NLL sums, token counts): the summed NLL (nats, fp32 log-softmax) of each
    row's reference tokens given its prompt, and their number; the greedy first answer token of each row,
    taken from the logits at the prompt's last position (the same logits predict the reference's first
    token); and, with `use_cache`, a DynamicCache whose columns 0..len(prompt)-1 of row r hold the keys and
    values of row r's prompt alone (causal attention: a position never sees the tokens after it). The LM
    head runs on the scored positions only (`logits_to_keep` mask)."""
    from transformers import DynamicCache

    if len(prompts) != len(references):
        raise ValueError(f"{len(prompts)} prompts but {len(references)} references")
    if any(len(p) == 0 for p in prompts) or any(len(r) == 0 for r in references):
        raise ValueError("every prompt and every reference answer needs at least one token")
    lengths = [len(p) + len(r) for p, r in zip(prompts, references)]
    width = max(lengths)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    keep = torch.zeros((len(prompts), width), dtype=torch.bool)  # positions whose logits predict a reference token
    for row, (prompt, reference) in enumerate(zip(prompts, references)):
        ids[row, : lengths[row]] = torch.tensor([*prompt, *reference], dtype=torch.long)
        mask[row, : lengths[row]] = 1
        keep[row, len(prompt) - 1 : lengths[row] - 1] = True
    device = model.device
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=torch.arange(width, device=device).expand(len(prompts), -1),
        past_key_values=DynamicCache(config=model.config) if use_cache else None,
        use_cache=use_cache,
        logits_to_keep=keep.to(device),
    )
    logits = out.logits
    if logits.ndim == 3:  # a model that ignores the mask returns every position's logits
        logits = logits[keep.to(logits.device)]
    targets = ids[:, 1:][keep[:, :-1]].to(logits.device)  # position t predicts token t+1
    token_nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none").double()
    counts = keep.sum(-1).tolist()
    sums = [float(part.sum()) for part in token_nll.split(counts)]
    firsts = torch.tensor([0, *counts[:-1]], device=logits.device).cumsum(0)  # each row's first kept position
    first = logits[firsts].to(dtype=torch.float32).argmax(-1)
    if stats is not None:
        stats.computed += ids.numel()
        stats.real += sum(len(r) for r in references)  # the prompts are counted with their answers
    return (out.past_key_values if use_cache else None), first, sums, counts


def _decode(
    model, cache, mask: torch.Tensor, first: torch.Tensor, eos_ids, max_new_tokens: int, stats: DecodeStats | None
) -> tuple[list[list[int]], list[int]]:
    """(greedy tokens of every row of a prefilled batch, each up to and without its end-of-turn token;
    the tokens each row generated, its end-of-turn token included)."""
    n = mask.shape[0]
    eos = torch.tensor(sorted(set(eos_ids)), device=mask.device)
    answers: list[list[int]] = [[] for _ in range(n)]
    steps = [0] * n
    active = list(range(n))  # row of the batch -> index of the answer
    position = _positions(mask)[:, -1:]
    token = first
    while True:
        done = torch.isin(token, eos).tolist()
        tokens = token.tolist()
        keep = []
        for row, answer in enumerate(active):
            steps[answer] += 1
            if done[row]:
                continue
            answers[answer].append(tokens[row])
            if steps[answer] < max_new_tokens:
                keep.append(row)
        if not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=mask.device)
            cache.batch_select_indices(index)
            mask, position, token = mask[index], position[index], token[index]
            active = [active[row] for row in keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
        position = position + 1
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=position,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        if stats is not None:
            stats.computed += len(active)
        token = _next_tokens(out.logits)
    return answers, steps


@torch.inference_mode()
def _shrinking_answers(
    model,
    prompts: Sequence[Sequence[int]],
    eos_ids: Sequence[int],
    pad_id: int,
    max_new_tokens: int,
    max_padding: float = PREFILL_MAX_PADDING,
    stats: DecodeStats | None = None,
) -> list[list[int]]:
    """The shrinking loop on one batch: greedy_answers' result, for any cache layer type."""
    lengths = [len(p) for p in prompts]
    chunks = length_chunks(lengths, max_padding)
    prefilled = [_prefill(model, [prompts[i] for i in chunk], pad_id, stats) for chunk in chunks]
    widths = [mask.shape[1] for _, mask, _ in prefilled]
    caches = [cache for cache, _, _ in prefilled]
    if len(chunks) > 1 and _joinable(caches, max(widths)):
        width = max(widths)
        cache = _join_caches(model, caches, widths)
        mask = torch.cat([torch.nn.functional.pad(m, (width - m.shape[1], 0)) for _, m, _ in prefilled])
        first = torch.cat([t for _, _, t in prefilled])
        groups = [([i for chunk in chunks for i in chunk], cache, mask, first)]
    else:
        groups = [(chunk, cache, mask, first) for chunk, (cache, mask, first) in zip(chunks, prefilled)]
    answers: list[list[int]] = [[] for _ in prompts]
    for indices, cache, mask, first in groups:
        tokens, steps = _decode(model, cache, mask, first, eos_ids, max_new_tokens, stats)
        for i, answer in zip(indices, tokens):
            answers[i] = answer
        if stats is not None:
            stats.add_rows([(lengths[i], n) for i, n in zip(indices, steps)])
    return answers


def greedy_stream(
    model,
    prompts: Sequence[Sequence[int]],
    eos_ids: Sequence[int],
    pad_id: int,
    max_new_tokens: int,
    max_rows: int | None = None,
    max_padding: float = PREFILL_MAX_PADDING,
    stats: DecodeStats | None = None,
    references: Sequence[Sequence[int]] | None = None,
    scores: dict[int, tuple[float, int]] | None = None,
) -> Iterator[tuple[int, list[int]]]:
    """(index into `prompts`, greedy answer tokens) for every prompt (token ids, chat template applied), each
    cut before its first end-of-turn token: the tokens `generate` gives. Answers come as they finish.

    Models whose cache is full attention only (clo_utils.evaluation.continuous.supported) decode every prompt
    in one continuously refilled batch of up to `max_rows` rows (default continuous.DECODE_ROWS); the others
    (sliding-window layers, attention without 4D masks) run the shrinking loop on `max_rows` prompts at a time,
    in the order given. `stats` (optional) receives the positions computed. `references` and `scores`: each
    prompt's reference answer scored in its prefill (continuous.greedy_stream); the shrinking loop ignores
    them and fills no score (a sliding-window cache keeps too few columns to give the prompt's back)."""
    from . import continuous

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    max_rows = continuous.DECODE_ROWS if max_rows is None else max_rows
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if continuous.supported(model):
        yield from continuous.greedy_stream(
            model,
            prompts,
            eos_ids,
            pad_id,
            max_new_tokens,
            max_rows=max_rows,
            max_padding=max_padding,
            stats=stats,
            references=references,
            scores=scores,
        )
        return
    for start in range(0, len(prompts), max_rows):
        group = prompts[start : start + max_rows]
        answers = _shrinking_answers(model, group, eos_ids, pad_id, max_new_tokens, max_padding, stats)
        yield from enumerate(answers, start=start)


def greedy_answers(
    model,
    prompts: Sequence[Sequence[int]],
    eos_ids: Sequence[int],
    pad_id: int,
    max_new_tokens: int,
    max_padding: float = PREFILL_MAX_PADDING,
    stats: DecodeStats | None = None,
    max_rows: int | None = None,
) -> list[list[int]]:
    """greedy_stream's answers in the order of `prompts`."""
    answers: list[list[int]] = [[] for _ in prompts]
    for i, tokens in greedy_stream(model, prompts, eos_ids, pad_id, max_new_tokens, max_rows, max_padding, stats):
        answers[i] = tokens
    return answers
