"""The interval-switching curriculum (spec 5.4) as a batch sampler over one concatenated dataset.

Per epoch every stage is shuffled afresh and cut into batches; blocks of `intervals[stage]` batches are
taken from the stages in order, cycling (R(I) A(I x options) S(I) R(I) ...). An exhausted stage is skipped,
so every example of every stage is seen exactly once per epoch. This is the project's decision: the
original's counter carry-over after an exhaustion (spec 9.11) is not reproduced.

The sampler yields global indices (stage offset + index within stage), so the HF Trainer stays stock apart
from handing it this batch sampler.

Gradient accumulation (k micro-batches per optimizer step): intervals count optimizer steps, as in the spec.
The schedule is cut in batches of k x batch_size (one per optimizer step) and each is split into k near-equal
micro-batches, so every optimizer step sees the examples of one stage that a single batch of k x batch_size
would hold. A stage's last batch with fewer than k examples joins the batch before it (no empty micro-batch).
"""
from __future__ import annotations

import random
from typing import Iterator, Mapping, Optional, Sequence, Union

from . import protocol as P
from .io import DataError

MEGABATCH = 50  # batches per length-sorted chunk, as in transformers' LengthGroupedSampler


def sft_intervals(stage_type: str, interval: int, num_options: int) -> dict[str, int]:
    """Batches per block for each stage of an SFT stage type, in chain order (spec 5.1 table)."""
    per_stage = {"recall": interval, "analyze": interval * num_options, "summarize": interval}
    return {s: per_stage[s] for s in P.STAGES[stage_type]}


def eval_steps(eval_every: Union[int, str], stage_type: str, interval: int, num_options: int) -> int:
    """Optimizer steps between validations: `eval_every`, or for "cycle" one R/A/S cycle (spec 5.1 table:
    I x (2 + options) for the full chain, I, 2I, I x (1 + options) for the ablations)."""
    if eval_every == "cycle":
        return sum(sft_intervals(stage_type, interval, num_options).values())
    return int(eval_every)


def _stage_batches(size: int, batch_size: int, rng: random.Random, lengths: Optional[Sequence[int]],
                   min_batch: int = 1) -> list[list[int]]:
    perm = list(range(size))
    rng.shuffle(perm)
    if lengths is None:
        chunks = [perm]
    else:  # length grouping: sort random megabatches by length so a batch pads little
        mega = batch_size * MEGABATCH
        chunks = [sorted(perm[m:m + mega], key=lambda i: -lengths[i]) for m in range(0, size, mega)]
    batches = [c[i:i + batch_size] for c in chunks for i in range(0, len(c), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < min_batch:  # too few to split into micro-batches
        tail = batches.pop()
        batches[-1] = batches[-1] + tail
    if lengths is not None:
        rng.shuffle(batches)  # so the stage is not seen longest-first
    return batches


def _num_batches(size: int, batch_size: int, min_batch: int) -> int:
    n = -(-size // batch_size)
    return n - 1 if n > 1 and size - (n - 1) * batch_size < min_batch else n


def schedule(stage_sizes: Mapping[str, int], intervals: Mapping[str, int], batch_size: int, epoch_seed: int,
             lengths: Optional[Mapping[str, Sequence[int]]] = None,
             min_batch: int = 1) -> list[tuple[str, list[int]]]:
    """One epoch's batches as (stage, indices within that stage), in training order.

    Stages run in the order of `intervals` (those with interval 0 or no examples are left out).
    `lengths[stage]` (optional) turns on length grouping within that stage. A stage's last batch smaller than
    `min_batch` joins the batch before it.
    """
    queues = {}
    for k, (stage, interval) in enumerate(intervals.items()):
        if interval > 0 and stage_sizes.get(stage, 0) > 0:
            rng = random.Random(f"{epoch_seed}/{k}/{stage}")  # str seeds hash deterministically
            queues[stage] = _stage_batches(stage_sizes[stage], batch_size, rng, (lengths or {}).get(stage),
                                           min_batch)
    out: list[tuple[str, list[int]]] = []
    pos = dict.fromkeys(queues, 0)
    while any(pos[s] < len(q) for s, q in queues.items()):
        for stage, q in queues.items():
            block = q[pos[stage]:pos[stage] + intervals[stage]]
            out += [(stage, b) for b in block]
            pos[stage] += len(block)
    return out


class CurriculumBatchSampler:
    """Batch sampler over the stages concatenated in `stage_sizes` order; call `set_epoch` each epoch.

    Yields micro-batches of about `batch_size`, `accumulation` of them per optimizer step (see the module doc).
    """

    def __init__(self, stage_sizes: Mapping[str, int], intervals: Mapping[str, int], batch_size: int,
                 seed: int, lengths: Optional[Mapping[str, Sequence[int]]] = None, accumulation: int = 1):
        self.stage_sizes, self.intervals, self.batch_size = dict(stage_sizes), dict(intervals), batch_size
        self.seed, self.lengths, self.epoch, self.accumulation = seed, lengths, 0, accumulation
        for stage, n in self.stage_sizes.items():
            if 0 < n < accumulation and self.intervals.get(stage, 0) > 0:
                raise DataError(f"{stage}: {n} examples cannot fill {accumulation} micro-batches "
                                "(gradient_accumulation_steps); lower it")
        self.offsets, total = {}, 0
        for stage, n in self.stage_sizes.items():
            self.offsets[stage], total = total, total + n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[tuple[str, list[int]]]:
        """One epoch's optimizer-step batches (stage, indices within the stage), before the micro-batch split."""
        return schedule(self.stage_sizes, self.intervals, self.batch_size * self.accumulation,
                        self.seed * 100_003 + self.epoch, self.lengths, min_batch=self.accumulation)

    def __iter__(self) -> Iterator[list[int]]:
        k = self.accumulation
        for stage, idx in self.batches():
            n, off = len(idx), self.offsets[stage]
            for j in range(k):
                yield [off + i for i in idx[j * n // k:(j + 1) * n // k]]

    def __len__(self) -> int:
        return self.accumulation * sum(_num_batches(self.stage_sizes.get(s, 0), self.batch_size * self.accumulation,
                                                    self.accumulation)
                                       for s, i in self.intervals.items() if i > 0)
