"""The interval-switching curriculum (spec 5.4) as a batch sampler over one concatenated dataset.

Per epoch every stage is shuffled afresh and cut into batches; blocks of `intervals[stage]` batches are
taken from the stages in order, cycling (R(I) A(I x options) S(I) R(I) ...). An exhausted stage is skipped,
so every example of every stage is seen exactly once per epoch. This is the project's decision: the
original's counter carry-over after an exhaustion (spec 9.11) is not reproduced.

The sampler yields global indices (stage offset + index within stage), so the HF Trainer stays stock apart
from handing it this batch sampler.
"""
from __future__ import annotations

import random
from typing import Iterator, Mapping, Optional, Sequence

from . import protocol as P

MEGABATCH = 50  # batches per length-sorted chunk, as in transformers' LengthGroupedSampler


def sft_intervals(stage_type: str, interval: int, num_options: int) -> dict[str, int]:
    """Batches per block for each stage of an SFT stage type, in chain order (spec 5.1 table)."""
    per_stage = {"recall": interval, "analyze": interval * num_options, "summarize": interval}
    return {s: per_stage[s] for s in P.STAGES[stage_type]}


def _stage_batches(size: int, batch_size: int, rng: random.Random,
                   lengths: Optional[Sequence[int]]) -> list[list[int]]:
    perm = list(range(size))
    rng.shuffle(perm)
    if lengths is None:
        return [perm[i:i + batch_size] for i in range(0, size, batch_size)]
    # Length grouping: sort random megabatches by length so a batch pads little, then shuffle the batches
    # so the stage is not seen longest-first.
    mega = batch_size * MEGABATCH
    batches = []
    for m in range(0, size, mega):
        chunk = sorted(perm[m:m + mega], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def schedule(stage_sizes: Mapping[str, int], intervals: Mapping[str, int], batch_size: int, epoch_seed: int,
             lengths: Optional[Mapping[str, Sequence[int]]] = None) -> list[tuple[str, list[int]]]:
    """One epoch's batches as (stage, indices within that stage), in training order.

    Stages run in the order of `intervals` (those with interval 0 or no examples are left out).
    `lengths[stage]` (optional) turns on length grouping within that stage.
    """
    queues = {}
    for k, (stage, interval) in enumerate(intervals.items()):
        if interval > 0 and stage_sizes.get(stage, 0) > 0:
            rng = random.Random(f"{epoch_seed}/{k}/{stage}")  # str seeds hash deterministically
            queues[stage] = _stage_batches(stage_sizes[stage], batch_size, rng, (lengths or {}).get(stage))
    out: list[tuple[str, list[int]]] = []
    pos = dict.fromkeys(queues, 0)
    while any(pos[s] < len(q) for s, q in queues.items()):
        for stage, q in queues.items():
            block = q[pos[stage]:pos[stage] + intervals[stage]]
            out += [(stage, b) for b in block]
            pos[stage] += len(block)
    return out


class CurriculumBatchSampler:
    """Batch sampler over the stages concatenated in `stage_sizes` order; call `set_epoch` each epoch."""

    def __init__(self, stage_sizes: Mapping[str, int], intervals: Mapping[str, int], batch_size: int,
                 seed: int, lengths: Optional[Mapping[str, Sequence[int]]] = None):
        self.stage_sizes, self.intervals, self.batch_size = dict(stage_sizes), dict(intervals), batch_size
        self.seed, self.lengths, self.epoch = seed, lengths, 0
        self.offsets, total = {}, 0
        for stage, n in self.stage_sizes.items():
            self.offsets[stage], total = total, total + n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[tuple[str, list[int]]]:
        return schedule(self.stage_sizes, self.intervals, self.batch_size, self.seed * 100_003 + self.epoch,
                        self.lengths)

    def __iter__(self) -> Iterator[list[int]]:
        for stage, idx in self.batches():
            yield [self.offsets[stage] + i for i in idx]

    def __len__(self) -> int:
        return sum(-(-self.stage_sizes.get(s, 0) // self.batch_size) for s, i in self.intervals.items() if i > 0)
