"""What every trainer shares: TrainingArguments fields (precision, TF32, gradient accumulation and checkpointing,
trackers; each param carries the name of the field it sets) and the curriculum + chain-validation mixin of the
trainers of sft and dpo-train (the run around a trainer is engine.py).

TF32 is set here, not through `TrainingArguments(tf32=...)`: transformers caches that switch per process (one
call per value), and a DPO iteration without pairs validates its starting model without any TrainingArguments.
`dpo_train` calls `trainer_kwargs` (through `engine.Run.settle`) before its first forward pass, so the start
validation and the reference log-probs (computed inside the Trainer) run under the iteration's TF32 setting and
precision.
"""
from __future__ import annotations

import os
from contextlib import nullcontext

from ..io import DataError
from ..params import Params, ParamsError
from ..paths import Paths

# report_to name -> (transformers' availability check, package to install)
TRACKERS = {"wandb": ("is_wandb_available", "wandb"), "mlflow": ("is_mlflow_available", "mlflow"),
            "tensorboard": ("is_tensorboard_available", "tensorboard")}


def resolve_precision(precision: str, key: str) -> str:
    """fp32, bf16 or fp16 for a `<stage>.precision` value; auto = bf16 on a GPU that has it, else fp32."""
    import torch

    cuda = torch.cuda.is_available()
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not cuda:
        raise ParamsError(f"{key}: fp16 needs a CUDA GPU (fp32 or bf16 run on a CPU)")
    return precision


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN on or off (a no-op for CPU work and for GPUs older than Ampere)."""
    import torch

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9, where mixing in the legacy flags is an error
        matmul.fp32_precision = cudnn.fp32_precision = "tf32" if enabled else "ieee"
    else:
        matmul.allow_tf32 = cudnn.allow_tf32 = enabled


def autocast(precision: str, device):
    """The autocast the Trainer trains under for a resolved precision, for forward passes outside it (the DPO
    reference log-probs must be computed the way the policy's are)."""
    import torch

    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type,
                          dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def check_trackers(params: Params) -> None:
    import transformers.integrations as integrations

    for name in params.report_to:
        check, package = TRACKERS[name]
        if not getattr(integrations, check)():
            raise ParamsError(f"report_to: {name} is not installed (pip install {package})")


def trainer_kwargs(params: Params, paths: Paths, stage: str, run: str) -> dict:
    """TrainingArguments fields from `params.<stage>` (sft or dpo) and `report_to`; TF32 is set as a side effect.

    `run` names the tracker run (e.g. sft, dpo/iter1): TensorBoard writes to runs/<run>, not into the checkpoint
    directory that is deleted when training ends.
    """
    s = getattr(params, stage)
    precision = resolve_precision(s.precision, f"{stage}.precision")
    check_trackers(params)
    set_tf32(s.tf32)
    # `accelerate launch --config_file` exports its mixed_precision (the shipped configs say bf16), which
    # TrainingArguments would take for an fp32 run: the param decides, so a paper preset stays fp32 under any launcher.
    os.environ["ACCELERATE_MIXED_PRECISION"] = {"fp32": "no"}.get(precision, precision)
    if "tensorboard" in params.report_to:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(paths.tracker_logs(run)))
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "tf32": None,
            "gradient_accumulation_steps": s.gradient_accumulation_steps,
            # the name transformers 5 gives `gradient_checkpointing` (kept as the param's name, its deprecated alias)
            "activation_checkpointing": s.gradient_checkpointing,
            "report_to": list(params.report_to) or "none", "run_name": f"{params.dataset.name}/{run}"}


class CurriculumChainMixin:
    """What every training stage's Trainer adds to its library base (Seq2SeqTrainer, TRL's SFTTrainer and DPOTrainer,
    the project's T5 DPO trainer): batches from the curriculum batch sampler, evaluation = the greedy chain on the
    validation questions scored by answer accuracy (spec 5.5, 9.13: numbers only). Put it before the base."""

    def __init__(self, *args, batch_sampler, valid, chain_kwargs, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_sampler, self.valid, self.chain_kwargs = batch_sampler, valid, chain_kwargs
        # The sampler indexes the stages concatenated in order: a trainer that drops rows while preparing its
        # dataset (TRL drops a prompt that fills the whole max length) would shift every stage after it.
        expected, got = sum(batch_sampler.stage_sizes.values()), len(self.train_dataset)
        if got != expected:
            raise DataError(f"the trainer kept {got} of {expected} training rows: a prompt fills the whole max length "
                            "(raise sft.max_source_length)")

    def get_train_dataloader(self):
        from . import distributed
        return distributed.prepare_sharded_loader(
            self.accelerator, self.train_dataset, self.batch_sampler, self.data_collator,
            self.args.dataloader_num_workers, self.args.dataloader_pin_memory)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        from . import distributed
        acc = distributed.chain_accuracy(self.accelerator, self.model, self.processing_class, self.valid,
                                         desc="valid", **self.chain_kwargs)
        metrics = {f"{metric_key_prefix}_accuracy": acc}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def curriculum_trainer(base, *mixins, **kwargs):
    """An instance of the library Trainer class `base` with `mixins` (e.g. a loss; their methods first, as a subclass'
    would be) and CurriculumChainMixin before it in the bases (`kwargs`: the Trainer's and the mixins')."""
    return type(f"Curriculum{base.__name__}", (*mixins, CurriculumChainMixin, base), {})(**kwargs)


def sft_trainer(kind, params: Params, model, tokenizer, rows, valid, **kwargs):
    """Phase 1's trainer for the student family `kind` (seq2seq.py or causal.py): the family's library Trainer
    (`kind.sft_trainer`) with the curriculum sampler and chain validation."""
    base, fields = kind.sft_trainer(params, model, tokenizer, rows, valid)
    return curriculum_trainer(base, **fields, valid=valid, **kwargs)

