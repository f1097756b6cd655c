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
    validation questions scored by answer accuracy (spec 5.5, 9.13: numbers only). Put it before the base.

    Curves beside the library's: every training log adds the mean loss of each curriculum stage's steps since the
    last log (`<stage>_loss`: recall_loss, analyze_loss, ...) and, for a DPO trainer, TRL's reward metrics per pair
    kind (`rewards/<kind>/margins`, ...). With `held_out` (teacher rows per stage kept out of training; the base's
    `eval_dataset` is then the same rows prepared as its training rows) every evaluation adds their teacher-forced
    loss (eval_loss, eval_<stage>_loss) and each step run alone on the teacher's input (chain.step_scores)."""

    def __init__(self, *args, batch_sampler, valid, chain_kwargs, held_out=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_sampler, self.valid, self.chain_kwargs = batch_sampler, valid, chain_kwargs
        self.held_out = held_out or {}
        # The stage of every optimizer step of an epoch: blocks of whole stages, the same order every epoch.
        self.stage_of_step = [stage for stage, _ in batch_sampler.batches()]
        self._by_stage: dict = {}  # stage -> {"steps": set, "loss": sum, metric: [values]} since the last log
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

    def _reward_store(self) -> dict:
        """The per-micro-batch metric lists the loss appends to (TRL's `_metrics["train"]`, dpo_seq2seq.DPOLoss's)."""
        return getattr(self, "_metrics", {}).get("train", {})

    def training_step(self, model, inputs, num_items_in_batch=None):
        store = self._reward_store()
        before = {k: len(v) for k, v in store.items() if k.startswith("rewards/")}
        loss = super().training_step(model, inputs, num_items_in_batch)
        stage = self.stage_of_step[self.state.global_step % len(self.stage_of_step)]
        mine = self._by_stage.setdefault(stage, {"steps": set(), "loss": 0.0})
        mine["steps"].add(self.state.global_step)
        # the micro-batches' shares of the step's loss, summed as the Trainer sums them (a tensor: no device sync)
        mine["loss"] = mine["loss"] + loss
        for k, v in self._reward_store().items():
            if k.startswith("rewards/"):
                mine.setdefault(k, []).extend(v[before.get(k, 0):])
        return loss

    def _stage_logs(self) -> dict:
        """The per-stage means since the last training log, averaged over processes (each saw its share)."""
        logs = {}
        for stage, m in sorted(self._by_stage.items()):
            logs[f"{stage}_loss"] = float(m["loss"]) / len(m["steps"])
            for k, v in m.items():
                if k.startswith("rewards/") and v:
                    logs[k.replace("rewards/", f"rewards/{stage}/", 1)] = sum(v) / len(v)
        self._by_stage = {}
        from . import distributed
        return distributed.mean_over_processes(self.accelerator, logs)

    def log(self, logs, start_time=None):
        if "loss" in logs and self._by_stage:  # a training log
            logs |= self._stage_logs()
        super().log(logs, start_time)

    def _held_out_metrics(self, prefix: str) -> dict:
        from . import chain, distributed

        losses, counts = {}, {}
        for stage in self.held_out:
            out = self.evaluation_loop(self.get_eval_dataloader(stage), description=f"eval loss ({stage})",
                                       prediction_loss_only=True, metric_key_prefix=f"{prefix}_{stage}")
            losses[stage], counts[stage] = out.metrics[f"{prefix}_{stage}_loss"], out.num_samples
        metrics = {f"{prefix}_loss": sum(losses[s] * counts[s] for s in losses) / max(1, sum(counts.values()))}
        metrics |= {f"{prefix}_{s}_loss": v for s, v in losses.items()}
        scores = chain.step_scores(self.model, self.processing_class, self.held_out, distributed.map_sharded,
                                   batch_size=self.chain_kwargs["batch_size"], decoding=self.chain_kwargs["summarize"])
        return metrics | {f"{prefix}_{k}": v for k, v in scores.items()}

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        from . import distributed
        metrics = self._held_out_metrics(metric_key_prefix) if self.held_out else {}
        acc = distributed.chain_accuracy(self.accelerator, self.model, self.processing_class, self.valid,
                                         desc="valid", **self.chain_kwargs)
        metrics[f"{metric_key_prefix}_accuracy"] = acc
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def curriculum_trainer(base, *mixins, **kwargs):
    """An instance of the library Trainer class `base` with `mixins` (e.g. a loss; their methods first, as a subclass'
    would be) and CurriculumChainMixin before it in the bases (`kwargs`: the Trainer's and the mixins')."""
    return type(f"Curriculum{base.__name__}", (*mixins, CurriculumChainMixin, base), {})(**kwargs)


def sft_trainer(kind, params: Params, model, tokenizer, rows, valid, held_out=None, **kwargs):
    """Phase 1's trainer for the student family `kind` (seq2seq.py or causal.py): the family's library Trainer
    (`kind.sft_trainer`; its eval dataset the `held_out` teacher rows per stage, prepared as `rows` are) with the
    curriculum sampler and chain validation."""
    prepared = {stage: kind.sft_data(params, {stage: r}, tokenizer)[0] for stage, r in (held_out or {}).items()}
    base, fields = kind.sft_trainer(params, model, tokenizer, rows, valid, prepared or None)
    return curriculum_trainer(base, **fields, valid=valid, held_out=held_out, **kwargs)

