"""Stage `dpo-train`: one DPO iteration (spec 6.3); for a T5 student on a plain transformers Trainer.

A decoder-only student trains on TRL's DPOTrainer (dpo_trl.py) in the same stage, schedule and validation. TRL's
DPOTrainer handles causal LMs only, so the encoder-decoder loss lives here: per pair, the prompt is the encoder
input and chosen / rejected are two label sequences run in one concatenated forward pass; a sequence's
log-prob is the sum of its label-token log-probs. The loss is a weighted sum of TRL-named terms
(`dpo.loss_type` / `dpo.loss_weights`): "sigmoid" = -log sigmoid(beta * policy-vs-reference margin),
"sft" = token-mean NLL of the chosen responses. The reference is the iteration's starting model; its
log-probs are computed once, before the first step, and carried in the dataset, so no second model is held.
They are computed inside the Trainer once it has prepared the model (under FSDP / ZeRO-3 only the prepared
model has usable weights on every process), each process its share, and saved beside the checkpoints so a
resumed run reuses them (its model then holds trained weights, no longer the reference).

Training interleaves recall and analyze pairs with the curriculum sampler (spec 6.3 intervals, which count
optimizer steps of batch_size x gradient_accumulation_steps x processes pairs: N processes, or k accumulated
micro-batches, make the same passes over the pairs in 1/N (1/k) of the steps and validate at the same points
in data terms) and validates with the full greedy chain; the best of the starting model and every evaluated
step is the output (the starting model wins ties, so an iteration never makes the student worse on validation).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Sequence

from ..student import distributed
from ..teacher.build import QUESTION_FIELDS
from ..io import DataError, atomic_path, read_json, read_jsonl, write_json
from .pairs import FIELDS, iteration_init
from ..params import Params, to_dict
from ..paths import Paths
from ..student.training import SKIP_LOG, autocast, resolve_precision, trainer_kwargs

STAGES = ("recall", "analyze")
REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected")


# --- data --------------------------------------------------------------------------------------------
def tokenize_pairs(rows: Sequence[dict], tokenizer, max_source: int, max_target: int) -> list[dict]:
    """Token ids per pair; the tokenizer appends </s> to prompt and both responses (kept when truncating)."""
    if not rows:
        return []

    def enc(key, n):
        return tokenizer([r[key] for r in rows], truncation=True, max_length=n)["input_ids"]

    return [{"input_ids": i, "chosen": c, "rejected": r}
            for i, c, r in zip(enc("prompt", max_source), enc("chosen", max_target), enc("rejected", max_target))]


def collate(features: Sequence[dict], pad_id: int) -> dict:
    """One batch of 2B rows: the prompts twice, labels = chosen responses then rejected ones (-100 padded)."""
    import torch

    def pad(seqs, value):
        width = max(len(s) for s in seqs)
        return torch.tensor([list(s) + [value] * (width - len(s)) for s in seqs], dtype=torch.long)

    prompts = [f["input_ids"] for f in features] * 2
    batch = {"input_ids": pad(prompts, pad_id),
             "attention_mask": pad([[1] * len(p) for p in prompts], 0),
             "labels": pad([f["chosen"] for f in features] + [f["rejected"] for f in features], -100)}
    if "ref_chosen" in features[0]:
        batch["ref_chosen"] = torch.tensor([f["ref_chosen"] for f in features], dtype=torch.float32)
        batch["ref_rejected"] = torch.tensor([f["ref_rejected"] for f in features], dtype=torch.float32)
    return batch


# --- loss --------------------------------------------------------------------------------------------
def sequence_logps(logits, labels):
    """(sum of label-token log-probs, number of label tokens) per row; -100 positions are ignored."""
    import torch.nn.functional as F

    # cross_entropy gives the per-token -log p without materialising a second vocabulary-wide tensor
    token = -F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return token.sum(-1), (labels != -100).sum(-1)


def policy_logps(model, batch):
    """Chosen and rejected sequence log-probs and the token-mean NLL of the chosen half, one forward pass."""
    labels = batch["labels"]
    base = getattr(model, "module", model)  # under DDP the forward goes through the wrapper, helpers do not
    decoder_input_ids = base.prepare_decoder_input_ids_from_labels(labels=labels)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=decoder_input_ids).logits
    sums, counts = sequence_logps(logits, labels)
    b = labels.shape[0] // 2
    nll = -sums[:b].sum() / counts[:b].sum().clamp(min=1)
    return sums[:b], sums[b:], nll


def dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, nll, beta: float,
             loss_type: Sequence[str], loss_weights: Sequence[float]):
    """(scalar loss, logged metrics) with TRL's metric names."""
    import torch.nn.functional as F

    margin = (pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)
    terms = {"sigmoid": -F.logsigmoid(beta * margin).mean(), "sft": nll}
    loss = sum(w * terms[t] for t, w in zip(loss_type, loss_weights))
    chosen_reward = beta * (pi_chosen - ref_chosen).detach()
    rejected_reward = beta * (pi_rejected - ref_rejected).detach()
    metrics = {"rewards/chosen": chosen_reward.mean().item(), "rewards/rejected": rejected_reward.mean().item(),
               "rewards/accuracies": (chosen_reward > rejected_reward).float().mean().item(),
               "rewards/margins": (chosen_reward - rejected_reward).mean().item(),
               "logps/chosen": pi_chosen.detach().mean().item(), "logps/rejected": pi_rejected.detach().mean().item(),
               "nll_loss": nll.detach().item()}
    return loss, metrics


def reference_logps(model, features: list[dict], batch_size: int, pad_id: int,
                    precision: str = "fp32") -> list[list[float]]:
    """The model's [chosen, rejected] log-probs per feature, also stored in each (eval mode, no grad, in order),
    under the autocast training will use for the policy's (`precision`: fp32, bf16 or fp16)."""
    import torch

    out: list[list[float]] = []
    was_training = model.training
    model.eval()
    with torch.inference_mode(), autocast(precision, model.device):
        for s in range(0, len(features), batch_size):
            chunk = features[s:s + batch_size]
            batch = {k: v.to(model.device) for k, v in collate(chunk, pad_id).items()}
            chosen, rejected, _ = policy_logps(model, batch)
            for f, c, r in zip(chunk, chosen.tolist(), rejected.tolist()):
                f["ref_chosen"], f["ref_rejected"] = c, r
                out.append([c, r])
    model.train(was_training)
    return out


def disable_dropout(model) -> None:
    """The policy must score a sequence the same way its frozen reference did (spec 6.3)."""
    import torch.nn as nn

    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        elif isinstance(getattr(m, "dropout", None), float):  # T5 attention keeps its rate as a float
            m.dropout = 0.0
    if hasattr(model.config, "dropout_rate"):
        model.config.dropout_rate = 0.0


def schedule_intervals(n_recall: int, n_analyze: int, batch_size: int) -> dict[str, int]:
    """Batches per block for each stage that has pairs (spec 6.3); each covers its stage in one block.

    `batch_size` is the examples of one optimizer step: the per-process batch x gradient_accumulation_steps x the
    number of processes (n_gpu).
    """
    if n_recall and n_analyze:
        recall = n_recall // batch_size + 1
        return {"recall": recall, "analyze": (n_analyze // n_recall + 1) * recall}
    if n_recall:
        return {"recall": n_recall // batch_size + 1}
    if n_analyze:
        return {"analyze": n_analyze // batch_size + 1}
    return {}


# --- trainer -----------------------------------------------------------------------------------------
def _trainer_classes():
    from transformers import Trainer, TrainerCallback

    from ..student.training import CurriculumChainMixin

    class Seq2SeqDPOTrainer(CurriculumChainMixin, Trainer):
        # compute_loss returns a mean per micro-batch: the Trainer divides it by gradient_accumulation_steps
        loss_is_scaled_for_ga = False

        def __init__(self, *args, dpo, **kwargs):
            super().__init__(*args, **kwargs)
            self.dpo = dpo
            self._stored: dict[str, list[float]] = {}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            chosen, rejected, nll = policy_logps(model, inputs)
            d = self.dpo
            loss, metrics = dpo_loss(chosen, rejected, inputs["ref_chosen"], inputs["ref_rejected"], nll,
                                     d.beta, d.loss_type, d.loss_weights)
            for k, v in metrics.items():
                self._stored.setdefault(k, []).append(v)
            return (loss, {}) if return_outputs else loss

        def log(self, logs, start_time=None):
            if "loss" in logs and self._stored:  # a training log: add the reward means since the last one
                means = {k: sum(v) / len(v) for k, v in self._stored.items()}
                if self.accelerator.num_processes > 1:  # each process saw its share: the mean over all
                    import torch
                    t = torch.tensor(list(means.values()), dtype=torch.float64, device=self.accelerator.device)
                    means = dict(zip(means, self.accelerator.reduce(t, reduction="mean").tolist()))
                logs |= means
                self._stored = {}
            super().log(logs, start_time)

    class PrePass(TrainerCallback):
        """`fn(model)` once the Trainer has prepared the model and before the first batch is drawn (the
        reference log-probs go into the dataset the loader reads lazily)."""

        def __init__(self, fn):
            self.fn = fn

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.fn(model)

    class LiveCallback(TrainerCallback):
        """dvclive curves at the trainer's global step, TRL's metric names, eval_x logged as eval/x."""

        def __init__(self, live, start_accuracy: float | None):
            self.live, self.start_accuracy = live, start_accuracy  # None: set by the pre-pass

        def log(self, step: int, logs: dict) -> None:
            if self.live is None:  # not the main process
                return
            self.live.step = step
            for k, v in logs.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in SKIP_LOG:
                    self.live.log_metric(f"eval/{k[5:]}" if k.startswith("eval_") else k, v)
            self.live.make_summary()

        def on_train_begin(self, args, state, control, **kwargs):
            self.log(0, {"eval_accuracy": self.start_accuracy})
            for entry in state.log_history:  # a resumed run replays what its checkpoint logged
                self.log(entry["step"], entry)

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.log(state.global_step, logs or {})

    return Seq2SeqDPOTrainer, LiveCallback, PrePass


def training_args(params: Params, intervals: dict[str, int], ckpt_dir: Path, train_kwargs: dict | None = None,
                  arguments=None):
    """Evaluation and checkpoints once per schedule cycle (in optimizer steps), `dpo.passes` cycles in all.
    `train_kwargs`: the shared TrainingArguments fields (training.trainer_kwargs); `arguments`: what builds the
    arguments from these fields (TrainingArguments; TRL's DPOConfig for a decoder-only student, dpo_causal.arguments)."""
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


def build_trainer(params: Params, model, tokenizer, features: list[dict], sizes: dict[str, int],
                  intervals: dict[str, int], ckpt_dir: Path, valid: list[dict], chain_kwargs: dict,
                  callbacks: Sequence = (), args=None):
    """The DPO trainer over `features` (reference log-probs in them, or put there by a PrePass callback),
    stages concatenated in `sizes` order; `args` default to `training_args`."""
    from ..student.curriculum import CurriculumBatchSampler

    args = args or training_args(params, intervals, ckpt_dir)
    Trainer = _trainer_classes()[0]
    d = params.dpo
    sampler = CurriculumBatchSampler(sizes, intervals, d.batch_size, params.seed,
                                     accumulation=d.gradient_accumulation_steps,
                                     num_replicas=args.world_size, rank=args.process_index)
    return Trainer(model=model, args=args, train_dataset=features, eval_dataset=valid, processing_class=tokenizer,
                   data_collator=lambda f: collate(f, tokenizer.pad_token_id), callbacks=list(callbacks),
                   batch_sampler=sampler, valid=valid, chain_kwargs=chain_kwargs, dpo=d)


def _fingerprint(params: Params, files: Sequence[Path], processes: int = 1) -> str:
    """What a resumed run must share with the interrupted one: its params, the bytes of its inputs and the
    number of processes (the schedule depends on it)."""
    g = params.generation
    dpo = {k: v for k, v in to_dict(params.dpo).items() if k != "iterations"}  # adding one must not restart
    h = hashlib.sha256(json.dumps([params.seed, dpo, g.batch_size, g.max_new_tokens, params.sft.stage_type,
                                   params.sft.max_source_length, processes], sort_keys=True).encode())
    for f in sorted(files):
        h.update(f.as_posix().encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def dpo_train(params: Params, paths: Paths, iteration: str, stop_after: int | None = None) -> dict:
    """Train one iteration; write models/dpo/<iteration> and metrics/dpo/<iteration>.json.

    `stop_after` interrupts after that many steps (tests of resuming): checkpoints stay, nothing else is
    written, and a later call with the same inputs resumes.
    """
    from dvclive import Live
    from transformers.trainer_utils import get_last_checkpoint

    from . import dpo_causal
    from ..student.chain import Decoding
    from ..student.model import family, load_student

    d, g = params.dpo, params.generation
    init = paths.root / iteration_init(params, iteration)
    if not (init / "config.json").exists():
        raise DataError(f"{init}: no model (dpo.iterations.{iteration}.init)")
    kind = family(params, init, f"dpo.iterations.{iteration}.init")
    trl = kind.KIND == "causal"  # decoder-only: TRL's DPOTrainer (dpo_trl.py); T5: the trainer of this module
    data_dir = paths.dpo_data(iteration)
    pairs = {s: read_jsonl(data_dir / f"{s}_pairs.jsonl", FIELDS) for s in STAGES}
    valid = read_jsonl(paths.sft_data / "valid.jsonl", QUESTION_FIELDS)
    out_model, metrics_file = paths.dpo_model(iteration), paths.metric(f"dpo/{iteration}")
    ckpt_dir = paths.checkpoints / "dpo" / iteration
    greedy = Decoding(max_new_tokens=g.max_new_tokens)
    chain_kwargs = {"stage_type": params.sft.stage_type, "batch_size": g.batch_size,  # the student's own chain
                    "recall": greedy, "analyze": greedy, "summarize": greedy}

    procs = distributed.state()  # the process group before anything else (see distributed.py)
    main = procs.is_main_process
    # TF32 and precision settle before the first forward pass: start validation and reference log-probs included.
    train_kwargs = trainer_kwargs(params, paths, "dpo", f"dpo/{iteration}")
    precision = resolve_precision(d.precision, "dpo.precision")
    live = Live(dir=str(paths.metrics / "dpo_live" / iteration), dvcyaml=False, save_dvc_exp=False) if main else None
    counts = {f"{s}_pairs": len(pairs[s]) for s in STAGES}
    # spec 6.3: intervals count optimizer steps of batch x n_gpu pairs (x gradient_accumulation_steps)
    intervals = schedule_intervals(len(pairs["recall"]), len(pairs["analyze"]),
                                   d.batch_size * d.gradient_accumulation_steps * procs.num_processes)
    if not intervals:  # spec 9.21: nothing to learn from; the starting model passes through unchanged
        with distributed.replicas():
            model, tokenizer = load_student(params, paths, init, f"dpo.iterations.{iteration}.init")
        model.to(procs.device)
        with autocast(precision, procs.device):  # as the trainer's evaluations
            start = distributed.chain_accuracy(procs, model, tokenizer, valid, desc="valid (start)", **chain_kwargs)
        metrics = {"valid_accuracy": start, "start_valid_accuracy": start, "best_step": 0, "steps": 0, **counts,
                   "skipped": 1}
        if live is not None:
            live.step = 0
            live.log_metric("eval/accuracy", start)
            live.end()
            with atomic_path(out_model) as tmp:
                shutil.copytree(init, tmp)
            write_json(metrics_file, metrics)
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        return metrics

    # The model after the arguments (ZeRO-3 / FSDP memory-efficient loading, distributed.py); the Trainer puts it
    # on its device.
    args = training_args(params, intervals, ckpt_dir, train_kwargs, dpo_causal.arguments(params) if trl else None)
    model, tokenizer = load_student(params, paths, init, f"dpo.iterations.{iteration}.init")
    features: list[dict] = []
    if not trl:  # TRL tokenises, disables dropout and precomputes the reference log-probs itself
        disable_dropout(model)  # the policy scores a sequence as its frozen reference did
        for s in STAGES:
            features += tokenize_pairs(pairs[s], tokenizer, params.sft.max_source_length, g.max_new_tokens)

    fingerprint = _fingerprint(params, [p for p in init.rglob("*") if p.is_file()]
                               + [data_dir / f"{s}_pairs.jsonl" for s in STAGES] + [paths.sft_data / "valid.jsonl"],
                               procs.num_processes)
    stamp, start_file, ref_file = ckpt_dir / "fingerprint.txt", ckpt_dir / "start.json", ckpt_dir / "reference.json"
    with distributed.main_first() as first:
        if first and not (stamp.exists() and stamp.read_text() == fingerprint and start_file.exists()
                          and (trl or ref_file.exists())):
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # other params, data or starting model: stale checkpoints
            ckpt_dir.mkdir(parents=True)
            stamp.write_text(fingerprint)
        resume = get_last_checkpoint(str(ckpt_dir))
    have_start, have_refs = distributed.from_main((start_file.exists(), ref_file.exists()))

    Trainer, LiveCallback, PrePass = _trainer_classes()
    live_cb = LiveCallback(live, read_json(start_file)["start_valid_accuracy"] if have_start else None)

    def prepass(prepared) -> None:
        """Starting accuracy and reference log-probs, with the starting weights (a resumed run reads both), in
        the training precision. TRL computed its reference log-probs in its constructor, from the starting model
        (a resumed run loads its checkpoint's weights only later, in `train`)."""
        if live_cb.start_accuracy is None:
            with autocast(precision, procs.device):  # as the trainer's evaluations
                live_cb.start_accuracy = distributed.chain_accuracy(procs, prepared, tokenizer, valid,
                                                                    desc="valid (start)", **chain_kwargs)
            if main:
                write_json(start_file, {"start_valid_accuracy": live_cb.start_accuracy})
        if trl:
            return
        if have_refs:
            refs = read_json(ref_file)
        else:
            refs = distributed.map_sharded(
                lambda share: reference_logps(prepared, share, d.batch_size, tokenizer.pad_token_id, precision),
                features)
            if main:
                write_json(ref_file, refs)
        for f, (c, r) in zip(features, refs):
            f["ref_chosen"], f["ref_rejected"] = c, r

    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop_after is not None and state.global_step >= stop_after:
                control.should_training_stop = control.should_save = True

    callbacks = [PrePass(prepass), live_cb, Stop()]
    if trl:
        trainer = dpo_causal.build_trainer(params, model, tokenizer, pairs, intervals, ckpt_dir, valid, chain_kwargs,
                                        callbacks, args=args)
    else:
        trainer = build_trainer(params, model, tokenizer, features, {s: len(pairs[s]) for s in STAGES}, intervals,
                                ckpt_dir, valid, chain_kwargs, callbacks, args=args)
    trainer.train(resume_from_checkpoint=resume)
    if live is not None:
        live.end()
    if trainer.state.global_step < trainer.state.max_steps:  # interrupted on purpose
        return {"steps": trainer.state.global_step}

    start_accuracy = live_cb.start_accuracy
    metrics = {"valid_accuracy": start_accuracy, "start_valid_accuracy": start_accuracy, "best_step": 0,
               "steps": 0, **counts}
    state = trainer.state
    train_logs = [e for e in state.log_history if "rewards/margins" in e]
    metrics |= {"steps": state.global_step, **{k: train_logs[-1][k] for k in REWARD_KEYS if train_logs}}
    if state.best_metric is not None and state.best_metric > start_accuracy:
        metrics |= {"valid_accuracy": state.best_metric, "best_step": state.best_global_step}
        kind.finish(trainer)  # LoRA adapters folded into the weights
        distributed.save_model(trainer, out_model)  # the best checkpoint (load_best_model_at_end)
    elif trainer.is_world_process_zero():
        with atomic_path(out_model) as tmp:
            shutil.copytree(init, tmp)
    if trainer.is_world_process_zero():
        write_json(metrics_file, metrics)
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # done: nothing to resume, and a rerun must retrain
    return metrics
