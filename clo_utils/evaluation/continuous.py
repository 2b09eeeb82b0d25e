"""Greedy decoding with continuous batching: one decode batch of up to `max_rows` answers, refilled with waiting
prompts as answers finish, over a KV cache written in place.

The shrinking loop (clo_utils.evaluation.decoding) decodes one generation batch at a time, so a run of B
batches costs B x (longest answer) decode steps, and on a CPU a decode step costs about the same whatever
its rows (the weights are read once per step). Here every prompt of a call shares one decode batch:

    1. admit: while the batch has free rows (at least `max_rows` // 8, or it is empty), the next
       waiting prompts (in the order given) are prefilled in chunks of at most `max_padding` left
       padding (clo_utils.batching.length_chunks; on a CPU cut to PREFILL_POSITIONS_CPU padded positions
       a forward), each through a DynamicCache as before; each row's
       real keys and values are copied into a free slot of the preallocated cache, from column 0;
    2. decode: one token per active row per step, the argmax of the last position's logits in fp32;
       each row's key and value are written in place at its own column (its length so far), and a
       4D mask lets each row see its own columns only, so rows of different lengths and ages share
       the step without left padding or a per-step torch.cat;
    3. leave: a row that emits an end-of-turn token or reaches `max_new_tokens` is yielded at once and
       its slot freed (the last active row moves into it, so active rows stay slots 0..n-1).

With reference answers (evaluation's NLL), step 1 forwards each prompt followed by its reference,
right-padded, in chunks of similar total length (decoding._prefill_scored): the logits at the prompt's last
position give the first answer token and, with the reference's positions, the reference's NLL, and the row's
first columns are the prompt's keys and values, since causal attention never lets a position see later
tokens. The prompts are then forwarded once for both.

Inputs match `generate`'s for each row: positions count the row's own tokens from 0, the mask covers
the row's prompt and fed-back tokens and nothing else, logits come from the last position only, so a
row's tokens do not depend on its neighbours. The slot cache serves full-attention layers only, with
sdpa or eager attention (the 4D mask is handed to them as is); `supported` says whether a model
qualifies, and clo_utils.evaluation.decoding runs the others (Gemma-3's sliding-window layers among
them) through its shrinking loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ..batching import length_chunks
from .decoding import PREFILL_MAX_PADDING, DecodeStats, _next_tokens, _prefill, _prefill_scored, scored_positions

# Rows decoded together; memory: max_rows x (longest prompt + max_new_tokens) keys and values per layer.
DECODE_ROWS = 128
# Padded positions per prefill forward on a CPU: a 256-position forward keeps its activations in cache, and
# measured 6.0-6.2 s against 6.4-7.3 s for one forward per chunk (SmolLM2-135M, 48 prompts, 1 thread). On a
# GPU a chunk is one forward.
PREFILL_POSITIONS_CPU = 256


def supported(model) -> bool:
    """Whether every cache layer of `model` is full attention (DynamicLayer) and its attention takes a 4D mask."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    attention = getattr(model.config, "_attn_implementation", None)
    if attention not in ("sdpa", "eager"):
        return False
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


class SlotCache:
    """Keys and values of up to `rows` sequences in preallocated buffers (rows x kv heads x width x head dim
    per layer); a sequence in slot s holds columns 0..lengths[s]-1. `model(..., past_key_values=cache)`
    calls `update` per layer during a decode step of the active slots 0..n-1."""

    def __init__(self, rows: int, width: int, like_keys: Sequence[torch.Tensor], like_values: Sequence[torch.Tensor]):
        # zeros, not empty: a masked column gets weight 0, and 0 x NaN would still spoil the sum
        self.keys = [k.new_zeros((rows, k.shape[1], width, k.shape[3])) for k in like_keys]
        self.values = [v.new_zeros((rows, v.shape[1], width, v.shape[3])) for v in like_values]
        self.lengths = torch.zeros(rows, dtype=torch.long, device=like_keys[0].device)
        self.active = 0
        self._rows = self.lengths[:0]
        self._columns = 0

    @property
    def width(self) -> int:
        return self.keys[0].shape[2]

    def widen(self, width: int) -> None:
        pad = (0, 0, 0, width - self.width)
        self.keys = [torch.nn.functional.pad(k, pad) for k in self.keys]
        self.values = [torch.nn.functional.pad(v, pad) for v in self.values]

    def put(self, slot: int, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
        """A prefilled row's keys and values (kv heads x its real tokens x head dim, one per layer) into `slot`."""
        length = keys[0].shape[1]
        for layer, (k, v) in enumerate(zip(keys, values)):
            self.keys[layer][slot, :, :length] = k
            self.values[layer][slot, :, :length] = v
        self.lengths[slot] = length

    def move(self, sources: list[int], targets: list[int]) -> None:
        src, dst = torch.tensor(sources, device=self.lengths.device), torch.tensor(targets, device=self.lengths.device)
        for buffers in (self.keys, self.values):
            for buffer in buffers:
                buffer[dst] = buffer[src]
        self.lengths[dst] = self.lengths[src]

    def step_inputs(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(position ids, 4D mask) of a decode step over slots 0..n-1: each row's new token sits at column
        lengths[row] and sees columns 0..lengths[row]."""
        self.active = n
        self._rows = torch.arange(n, device=self.lengths.device)
        lengths = self.lengths[:n]
        self._columns = int(lengths.max()) + 1
        columns = torch.arange(self._columns, device=lengths.device)
        return lengths[:, None], (columns[None, :] <= lengths[:, None])[:, None, None, :]

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        n, rows = self.active, self._rows
        columns = self.lengths[:n]
        self.keys[layer_idx][rows, :, columns] = key_states[:, :, 0]
        self.values[layer_idx][rows, :, columns] = value_states[:, :, 0]
        return self.keys[layer_idx][:n, :, : self._columns], self.values[layer_idx][:n, :, : self._columns]

    def advance(self) -> None:
        self.lengths[: self.active] += 1


def _split(chunks: list[list[int]], lengths: Sequence[int], positions: int | None) -> list[list[int]]:
    """Each chunk cut into pieces of at most `positions` padded positions (at least one row each; None: uncut)."""
    if positions is None:
        return chunks
    pieces = []
    for chunk in chunks:
        rows = max(1, positions // lengths[chunk[0]])  # the chunk's first row is its longest
        pieces.extend(chunk[i : i + rows] for i in range(0, len(chunk), rows))
    return pieces


def _additive(mask: torch.Tensor, dtype) -> torch.Tensor:
    """eager attention adds its mask to the scores: 0 where seen, the dtype's minimum elsewhere."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


@torch.inference_mode()
def greedy_stream(
    model,
    prompts: Sequence[Sequence[int]],
    eos_ids: Sequence[int],
    pad_id: int,
    max_new_tokens: int,
    max_rows: int = DECODE_ROWS,
    max_padding: float = PREFILL_MAX_PADDING,
    stats: DecodeStats | None = None,
    references: Sequence[Sequence[int]] | None = None,
    scores: dict[int, tuple[float, int]] | None = None,
) -> Iterator[tuple[int, list[int]]]:
    """(index into `prompts`, greedy answer tokens cut before the first end-of-turn token) for every prompt,
    each as soon as it finishes; prompts are admitted in the order given (longest first decodes best).
    `stats` (optional) receives the positions computed and each row's lengths.

    `references` (optional, one token list per prompt): each prompt is prefilled together with its reference
    answer (decoding._prefill_scored), so one forward gives the prompt's keys and values, its first answer
    token and the reference's NLL; `scores[i]` receives (summed NLL in nats, reference tokens) of prompt i."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if references is not None and len(references) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(references)} references")
    eos = set(eos_ids)
    eager = getattr(model.config, "_attn_implementation", None) == "eager"
    waiting = list(range(len(prompts)))[::-1]  # popped from the end: the given order
    cache: SlotCache | None = None
    owner: list[int] = []  # slot -> prompt index
    answers: dict[int, list[int]] = {}
    steps: dict[int, int] = {}
    tokens: list[int] = []  # slot -> the last token generated, fed at the next step
    refill = max(1, max_rows // 8)
    if references is None:
        positions = PREFILL_POSITIONS_CPU if model.device.type == "cpu" else None
    else:
        positions = scored_positions(model)

    def emitted(slot_tokens: list[int], first_slot: int) -> list[int]:
        """Record one generated token per slot from `first_slot`; the slots whose answers are done."""
        done = []
        for slot, token in enumerate(slot_tokens, start=first_slot):
            i = owner[slot]
            steps[i] += 1
            if token in eos or steps[i] >= max_new_tokens:
                if token not in eos:
                    answers[i].append(token)
                done.append(slot)
            else:
                answers[i].append(token)
            tokens[slot] = token
        return done

    def release(done: list[int]) -> Iterator[tuple[int, list[int]]]:
        """Yield the finished rows and close their holes with the last active rows."""
        for slot in done:
            i = owner[slot]
            if stats is not None:
                stats.add_rows([(len(prompts[i]), steps[i])])
            yield i, answers.pop(i)
        keep = len(owner) - len(done)
        finished = set(done)
        holes = [s for s in done if s < keep]
        movers = [s for s in range(keep, len(owner)) if s not in finished]
        if holes:
            cache.move(movers, holes)
            for hole, mover in zip(holes, movers):
                owner[hole], tokens[hole] = owner[mover], tokens[mover]
        del owner[keep:], tokens[keep:]

    while waiting or owner:
        free = max_rows - len(owner)
        if waiting and (not owner or free >= min(refill, len(waiting))):
            admitted = [waiting.pop() for _ in range(min(free, len(waiting)))]
            lengths = [len(prompts[i]) + (len(references[i]) if references is not None else 0) for i in admitted]
            for chunk in _split(length_chunks(lengths, max_padding), lengths, positions):
                rows = [admitted[j] for j in chunk]
                if references is None:  # left-padded: a row's prompt is its last columns
                    prefill, _, first = _prefill(model, [prompts[i] for i in rows], pad_id, stats)
                    columns = [slice(prefill.layers[0].keys.shape[2] - len(prompts[i]), None) for i in rows]
                else:  # right-padded prompt + reference: a row's prompt is its first columns
                    prefill, first, sums, counts = _prefill_scored(
                        model, [prompts[i] for i in rows], [references[i] for i in rows], pad_id, stats
                    )
                    columns = [slice(0, len(prompts[i])) for i in rows]
                    if scores is not None:
                        scores.update(zip(rows, zip(sums, counts)))
                keys = [layer.keys for layer in prefill.layers]
                values = [layer.values for layer in prefill.layers]
                need = max(len(prompts[i]) for i in rows) + max_new_tokens
                if cache is None:
                    width = max(len(prompts[i]) for i in admitted) + max_new_tokens
                    cache = SlotCache(min(max_rows, len(prompts)), width, keys, values)
                elif need > cache.width:
                    cache.widen(need)
                start = len(owner)
                for r, i in enumerate(rows):
                    cache.put(start + r, [k[r, :, columns[r]] for k in keys], [v[r, :, columns[r]] for v in values])
                    owner.append(i)
                    answers[i], steps[i] = [], 0
                    tokens.append(0)
                del prefill, keys, values
                yield from release(emitted(first.tolist(), start))
            continue
        position, mask = cache.step_inputs(len(owner))
        out = model(
            input_ids=torch.tensor(tokens, device=position.device)[:, None],
            attention_mask=_additive(mask, model.dtype) if eager else mask,
            position_ids=position,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache.advance()
        if stats is not None:
            stats.computed += len(owner)
        yield from release(emitted(_next_tokens(out.logits).tolist(), 0))
