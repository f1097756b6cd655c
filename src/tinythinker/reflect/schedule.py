"""What both DPO trainers share (the T5 one of dpo_seq2seq.py, TRL's of dpo_causal.py): the stages that have
pairs, the curriculum intervals over them (spec 6.3) and the training arguments."""
from __future__ import annotations

from pathlib import Path

from ..params import Params
from ..paths import Paths
from ..student.training import trainer_kwargs

STAGES = ("recall", "analyze", "summarize")


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


def training_args(params: Params, intervals: dict[str, int], ckpt_dir: Path, train_kwargs: dict | None = None,
                  arguments=None):
    """Evaluation and checkpoints once per schedule cycle (in optimizer steps), `dpo.passes` cycles in all.
    `train_kwargs`: the shared TrainingArguments fields (training.trainer_kwargs); `arguments`: what builds the
    arguments from these fields (the trainer kind's `arguments`: TrainingArguments for T5, TRL's DPOConfig for a
    decoder-only student)."""
    import torch
    from transformers import TrainingArguments

    d, cuda = params.dpo, torch.cuda.is_available()
    cycle = sum(intervals.values())
    return (arguments or TrainingArguments)(
        output_dir=str(ckpt_dir), max_steps=d.passes * cycle, per_device_train_batch_size=d.batch_size,
        learning_rate=d.learning_rate, lr_scheduler_type="cosine", warmup_steps=d.warmup_ratio,  # float = ratio
        weight_decay=0.0, max_grad_norm=d.max_grad_norm, seed=params.seed,
        eval_strategy="steps", eval_steps=cycle, save_strategy="steps", save_steps=cycle,
        logging_steps=max(1, min(50, cycle // 4)), logging_first_step=True,
        load_best_model_at_end=True, metric_for_best_model="accuracy", greater_is_better=True,
        save_total_limit=2,  # the best and the latest (to resume)
        remove_unused_columns=False, dataloader_pin_memory=cuda, use_cpu=not cuda,
        ddp_find_unused_parameters=False,
        **(train_kwargs if train_kwargs is not None else trainer_kwargs(params, Paths(), "dpo", "dpo")),
    )
