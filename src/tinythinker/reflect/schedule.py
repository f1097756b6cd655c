"""What both DPO trainers share (the T5 one of dpo_seq2seq.py, TRL's of dpo_causal.py): the curriculum intervals
over the pair kinds (spec 6.3), the training arguments of an iteration and its batch sampler."""
from __future__ import annotations

from ..params import Params
from ..lm.curriculum import CurriculumBatchSampler


def schedule_intervals(n_recall: int, n_analyze: int, batch_size: int, n_summarize: int = 0) -> dict[str, int]:
    """Batches per block for each stage that has pairs (spec 6.3); each covers its stage in one block. Summarize
    pairs (not the paper's) get a block of their own after analyze, sized the way a single stage's is.

    `batch_size` is the examples of one optimizer step: the per-process batch x gradient_accumulation_steps x the
    number of processes (n_gpu).
    """
    out = {}
    if n_recall:
        out["recall"] = n_recall // batch_size + 1
    if n_analyze:
        out["analyze"] = (n_analyze // n_recall + 1) * out["recall"] if n_recall else n_analyze // batch_size + 1
    if n_summarize:
        out["summarize"] = n_summarize // batch_size + 1
    return out


def training_args(run, params: Params, intervals: dict[str, int], factory=None):
    """An iteration's arguments (`run`: its engine.Run; `factory`: the trainer's `arguments`): evaluation and
    checkpoints once per schedule cycle (in optimizer steps), `dpo.passes` cycles in all, a log every step (an
    iteration is short, and each pair kind's rewards come only from the steps of its blocks)."""
    d, cycle = params.dpo, sum(intervals.values())
    return run.arguments(factory, eval_every=cycle, log_every=1, max_steps=d.passes * cycle,
                         per_device_train_batch_size=d.batch_size, learning_rate=d.learning_rate,
                         warmup_steps=d.warmup_ratio,  # float = ratio
                         weight_decay=0.0, max_grad_norm=d.max_grad_norm)


def batch_sampler(params: Params, sizes: dict[str, int], intervals: dict[str, int], args) -> CurriculumBatchSampler:
    """The curriculum over the pair kinds (`sizes`: rows per kind, concatenated in that order) for the processes of
    `args`."""
    d = params.dpo
    return CurriculumBatchSampler(sizes, intervals, d.batch_size, params.seed,
                                  accumulation=d.gradient_accumulation_steps, num_replicas=args.world_size,
                                  rank=args.process_index)
