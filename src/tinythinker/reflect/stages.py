"""Stage `dpo-train`: one DPO iteration (spec 6.3), on the trainer of the student's family (dpo_seq2seq.py for
T5, dpo_causal.py for a decoder-only student on TRL), with the same schedule, validation and metric names.

Training interleaves recall and analyze pairs (and summarize pairs, where `dpo.stage_type` has them) with the
curriculum sampler (spec 6.3 intervals, which count optimizer steps of batch_size x gradient_accumulation_steps x
processes pairs: N processes, or k accumulated micro-batches, make the same passes over the pairs in 1/N (1/k) of
the steps and validate at the same points in data terms) and validates with the full greedy chain; the best of the
starting model and every evaluated step is the output (the starting model wins ties, so an iteration never makes
the student worse on validation).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Sequence

from ..io import atomic_path, read_json, read_jsonl, replace_dir, write_json
from ..params import Params, to_dict
from ..paths import Paths
from ..protocol import PAIR_FIELDS, read_questions
from ..student import distributed
from ..student.training import SKIP_LOG, autocast, resolve_precision, trainer_kwargs
from .pairs import iteration_init
from .schedule import STAGES, schedule_intervals, training_args

REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected")



def _callback_classes():
    from transformers import TrainerCallback

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

    return LiveCallback, PrePass




def trainer_for(family):
    """The one place that picks the DPO trainer of a student family (student.model.family): its module answers
    `arguments`, `train_data`, `build_trainer`, and, unless OWN_REFERENCE, `reference_logps` / `set_reference`."""
    from . import dpo_causal, dpo_seq2seq

    return {dpo_seq2seq.KIND: dpo_seq2seq, dpo_causal.KIND: dpo_causal}[family.KIND]


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

    from ..student.chain import Decoding
    from ..student.model import check_checkpoint, family, load_student

    d, g = params.dpo, params.generation
    init = paths.root / iteration_init(params, iteration)
    check_checkpoint(init, f"dpo.iterations.{iteration}.init", tokenizer=False)  # missing or unreadable: one line
    kind = family(params, init, f"dpo.iterations.{iteration}.init")
    trainer_kind = trainer_for(kind)
    data_dir = paths.dpo_data(iteration)
    pairs = {s: read_jsonl(data_dir / f"{s}_pairs.jsonl", PAIR_FIELDS) for s in STAGES}
    valid = read_questions(paths.sft_data / "valid.jsonl")
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
    # Curves are written beside and moved into metrics/ with the model: an interrupted run leaves the last ones whole.
    run = f"dpo/{iteration}"
    live = Live(dir=str(paths.curves_work(run)), dvcyaml=False, save_dvc_exp=False) if main else None
    counts = {f"{s}_pairs": len(pairs[s]) for s in STAGES}
    # spec 6.3: intervals count optimizer steps of batch x n_gpu pairs (x gradient_accumulation_steps)
    intervals = schedule_intervals(len(pairs["recall"]), len(pairs["analyze"]),
                                   d.batch_size * d.gradient_accumulation_steps * procs.num_processes,
                                   len(pairs["summarize"]))
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
            replace_dir(paths.curves_work(run), paths.curves(run))
            write_json(metrics_file, metrics)
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        return metrics

    # The model after the arguments (ZeRO-3 / FSDP memory-efficient loading, distributed.py); the Trainer puts it
    # on its device.
    args = training_args(params, intervals, ckpt_dir, train_kwargs, trainer_kind.arguments(params))
    model, tokenizer = load_student(params, paths, init, f"dpo.iterations.{iteration}.init")
    data = trainer_kind.train_data(params, model, tokenizer, pairs)

    fingerprint = _fingerprint(params, [p for p in init.rglob("*") if p.is_file()]
                               + [data_dir / f"{s}_pairs.jsonl" for s in STAGES] + [paths.sft_data / "valid.jsonl"],
                               procs.num_processes)
    stamp, start_file, ref_file = ckpt_dir / "fingerprint.txt", ckpt_dir / "start.json", ckpt_dir / "reference.json"
    with distributed.main_first() as first:
        if first and not (stamp.exists() and stamp.read_text() == fingerprint and start_file.exists()
                          and (trainer_kind.OWN_REFERENCE or ref_file.exists())):
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # other params, data or starting model: stale checkpoints
            ckpt_dir.mkdir(parents=True)
            stamp.write_text(fingerprint)
        resume = get_last_checkpoint(str(ckpt_dir))
    have_start, have_refs = distributed.from_main((start_file.exists(), ref_file.exists()))

    LiveCallback, PrePass = _callback_classes()
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
        if trainer_kind.OWN_REFERENCE:
            return
        if have_refs:
            refs = read_json(ref_file)
        else:
            refs = distributed.map_sharded(lambda share: trainer_kind.reference_logps(
                prepared, share, d.batch_size, tokenizer.pad_token_id, precision), data)
            if main:
                write_json(ref_file, refs)
        trainer_kind.set_reference(data, refs)

    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop_after is not None and state.global_step >= stop_after:
                control.should_training_stop = control.should_save = True

    callbacks = [PrePass(prepass), live_cb, Stop()]
    trainer = trainer_kind.build_trainer(params, model, tokenizer, data, {s: len(pairs[s]) for s in STAGES},
                                         intervals, ckpt_dir, valid, chain_kwargs, callbacks, args=args)
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
        replace_dir(paths.curves_work(run), paths.curves(run))
        write_json(metrics_file, metrics)
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # done: nothing to resume, and a rerun must retrain
    return metrics
