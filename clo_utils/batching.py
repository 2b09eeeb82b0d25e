"""Batches of seeds of similar length, so little of a training step's compute goes to padding.

A CLO batch pads every sequence of every seed in it to the longest one. Seeds drawn at random mix
short and long ones, so a large share of the computed positions is padding. Grouping keeps the
randomness that matters (which seeds come early, which batches come late) while the seeds inside
one batch have similar lengths:

    1. shuffle the seeds (a generator seeded by `seed + epoch`: reproducible, new each epoch)
    2. cut the shuffled list into mega-batches of `mega_batch_size` batches each
    3. sort each mega-batch by length (longest first) and cut it into batches
    4. shuffle the order of the full batches; a short last batch stays last

The sampler yields seed indices; the DataLoader cuts them back into the same batches, because
every batch but the last is full. The batching unit is the seed, so both triples of a seed stay in
one batch. Only the composition and order of batches change: each seed appears once per epoch and
its log-probs do not depend on its batch neighbours (right padding under a causal mask).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, mega_batch_size: int = 16
) -> list[list[int]]:
    """Indices of `lengths` in batches of similar length (the steps above); the short batch, if any, last."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if mega_batch_size < 1:
        raise ValueError(f"mega_batch_size must be >= 1, got {mega_batch_size}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    span = batch_size * mega_batch_size
    batches = []
    for start in range(0, len(order), span):
        group = sorted(order[start : start + span], key=lambda i: -lengths[i])  # stable: ties keep shuffled order
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    short = [b for b in batches if len(b) < batch_size]
    full = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
    return full + short


class LengthGroupedSeedSampler(torch.utils.data.Sampler):
    """Seed indices in length-grouped batches (`length_grouped_batches`), a new order every epoch.

    The Trainer calls `set_epoch` at the start of each epoch; the order is a function of
    `seed` and the epoch only, so a resumed run sees the same batches.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch_size: int = 16):
        super().__init__()
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_size = mega_batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        return length_grouped_batches(self.lengths, self.batch_size, self.seed + self.epoch, self.mega_batch_size)

    def __iter__(self) -> Iterator[int]:
        return iter([i for batch in self.batches() for i in batch])

    def __len__(self) -> int:
        return len(self.lengths)


def sequence_batches(lengths: Sequence[Sequence[int]], rows_per_batch: int) -> list[list[tuple[int, int]]]:
    """(item, column) pairs in batches of `rows_per_batch` sequences sorted by length, longest first.

    For a pass that scores each sequence on its own (the reference pass): a seed's four sequences
    differ in length (the two languages tokenise to different lengths), so batching sequences rather
    than seeds pads each row only to rows of nearly its own length.
    """
    if rows_per_batch < 1:
        raise ValueError(f"rows_per_batch must be >= 1, got {rows_per_batch}")
    rows = sorted(
        ((i, c) for i, seq in enumerate(lengths) for c in range(len(seq))), key=lambda ic: (-lengths[ic[0]][ic[1]], ic)
    )
    return [rows[k : k + rows_per_batch] for k in range(0, len(rows), rows_per_batch)]


def length_chunks(lengths: Sequence[int], max_padding: float) -> list[list[int]]:
    """Row indices of one padded batch, longest first, cut into contiguous chunks of at most
    `max_padding` padding each: a chunk padded to its own longest row computes rows x width positions,
    of which at most that share are padding (1 - sum(lengths) / (rows x width) <= max_padding).

    Greedy: a chunk starts at the longest row not yet taken and takes the next rows while the bound
    holds. Rows come sorted by length (ties by index), so once the next row breaks the bound every
    shorter one would too, and every chunk meets the bound: so does the whole batch, whose computed
    positions are the chunks' sum. 0 keeps only rows of equal length together; 1 gives one chunk.
    """
    if not 0.0 <= max_padding <= 1.0:
        raise ValueError(f"max_padding must be in [0, 1], got {max_padding}")
    if any(n < 1 for n in lengths):
        raise ValueError(f"every row length must be >= 1, got {min(lengths)}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    chunks: list[list[int]] = []
    for i in order:
        if chunks:
            chunk = chunks[-1]
            width = lengths[chunk[0]]
            real = sum(lengths[j] for j in chunk) + lengths[i]
            if 1.0 - real / ((len(chunk) + 1) * width) <= max_padding:
                chunk.append(i)
                continue
        chunks.append([i])
    return chunks


def seed_lengths(input_ids: Sequence[Sequence[Sequence[int]]]) -> list[int]:
    """The padded width each CLO example asks for: the longest of its four sequences."""
    return [max(len(ids) for ids in seqs) for seqs in input_ids]
