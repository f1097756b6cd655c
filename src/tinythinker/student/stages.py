"""Stage `sft`: phase 1 curriculum SFT (spec 5) on a stock trainer: HF's Seq2SeqTrainer for a T5 student, TRL's
SFTTrainer (prompt-completion data) for a decoder-only one (the student's family, `seq2seq.py` / `causal.py`).

Only two things differ from a plain trainer run (`training.CurriculumChainMixin`): the training batches come from
the curriculum batch sampler (blocks of recall / analyze / summarize, spec 5.4), and evaluation is the full greedy
chain on the validation questions (spec 5.5) scored by answer accuracy. The best checkpoint by that accuracy (ties
keep the earlier one) becomes models/sft. Checkpoints live in models/checkpoints/sft, outside DVC, so a killed
run resumes where it stopped as long as params and data are unchanged.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from .. import protocol as P
from ..io import DataError, read_jsonl, replace_dir, write_json
from ..params import Params, to_dict
from ..paths import Paths
from ..protocol import STAGE_FIELDS, read_questions
from . import distributed
from .chain import Decoding
from .curriculum import CurriculumBatchSampler, eval_steps, sft_intervals
from .model import family, load_student
from .training import sft_trainer, trainer_callbacks, trainer_kwargs


def _stage_data(params: Params, paths: Paths) -> dict[str, list[dict]]:
    """The stage datasets of sft.stage_type, in chain order."""
    out = {}
    for stage in P.STAGES[params.sft.stage_type]:
        data = read_jsonl(paths.stage_file(params.sft.stage_type, stage), STAGE_FIELDS)
        if not data:
            raise DataError(f"{paths.stage_file(params.sft.stage_type, stage)}: empty stage dataset")
        out[stage] = data
    return out


def _fingerprint(params: Params, paths: Paths, processes: int = 1) -> str:
    """Everything a resumed run must share with the interrupted one: its params, its input files and the
    number of processes (a step's batch and so the schedule depend on it)."""
    g = params.generation
    keys = {k: to_dict(getattr(params, k)) for k in ("seed", "student", "sft")}
    keys["generation"] = [g.batch_size, g.max_new_tokens]  # what validation uses; as in dvc.yaml
    keys["processes"] = processes
    h = hashlib.sha256(json.dumps(keys, sort_keys=True).encode())
    files = sorted(paths.sft_data.glob(f"{params.sft.stage_type}/*.jsonl")) + [paths.sft_data / "valid.jsonl"]
    files += sorted(p for d in (paths.tokenizer, paths.pretrained_model) for p in d.rglob("*") if p.is_file())
    for f in files:
        h.update(f.relative_to(paths.root).as_posix().encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def sft(params: Params, paths: Paths, max_steps: int | None = None) -> dict:
    """Train, keep the best checkpoint by validation chain accuracy, write models/sft and metrics/sft.json.

    `max_steps` stops early (tests: an interrupted run); the schedule and cosine decay still span the
    full run, so a later call resumes exactly.
    """
    import torch
    from transformers import TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint

    s = params.sft
    procs = distributed.state()  # the process group before anything else (see distributed.py)
    valid = read_questions(paths.sft_data / "valid.jsonl")
    num_options = max(len(q["options"]) for q in valid)
    intervals = sft_intervals(s.stage_type, s.interval, num_options)
    eval_every = eval_steps(s.eval_every, s.stage_type, s.interval, num_options)

    ckpt_dir = paths.checkpoints / "sft"
    fingerprint = _fingerprint(params, paths, procs.num_processes)
    stamp = ckpt_dir / "fingerprint.txt"
    cuda = torch.cuda.is_available()
    kind = family(params)
    args = kind.sft_arguments(
        params, output_dir=str(ckpt_dir), per_device_train_batch_size=s.batch_size, learning_rate=s.learning_rate,
        num_train_epochs=s.epochs, lr_scheduler_type="cosine", warmup_steps=s.warmup_ratio,  # float = ratio
        weight_decay=s.weight_decay, max_grad_norm=s.max_grad_norm, seed=params.seed,
        eval_strategy="steps", eval_steps=eval_every, save_strategy="steps", save_steps=eval_every,
        logging_steps=max(1, min(50, eval_every // 4)), logging_first_step=True,
        load_best_model_at_end=True, metric_for_best_model="accuracy", greater_is_better=True,
        save_total_limit=2,  # the best and the latest (to resume); 1 would drop the latest at train end
        remove_unused_columns=False, disable_tqdm=False, dataloader_pin_memory=cuda,
        use_cpu=not cuda,  # also makes a multi-process launch on CPU one DDP job (gloo), not N lone runs
        ddp_find_unused_parameters=False,  # every parameter takes part in every step
        **trainer_kwargs(params, paths, "sft", "sft"),  # precision, TF32, accumulation, checkpointing, trackers
    )
    # The model after the arguments: under ZeRO-3 they register the DeepSpeed config that makes loading build
    # the model partitioned, and FSDP's cpu_ram_efficient_loading needs the process group (distributed.py).
    model, tokenizer = load_student(params, paths)
    stages = _stage_data(params, paths)
    sizes = {stage: len(rows) for stage, rows in stages.items()}
    rows, lengths = kind.sft_data(params, stages, tokenizer)
    # One optimizer step = batch_size x accumulation per process, all processes in the same stage block
    # (curriculum.py).
    sampler = CurriculumBatchSampler(sizes, intervals, s.batch_size, params.seed,
                                     lengths if s.group_by_length else None, s.gradient_accumulation_steps,
                                     num_replicas=procs.num_processes, rank=procs.process_index)
    with distributed.main_first() as main:
        if main and not (stamp.exists() and stamp.read_text() == fingerprint):
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # other params or data: stale checkpoints must go
            ckpt_dir.mkdir(parents=True)
            stamp.write_text(fingerprint)
        resume = get_last_checkpoint(str(ckpt_dir))

    chain_kwargs = {"stage_type": s.stage_type, "batch_size": params.generation.batch_size}
    greedy = Decoding(max_new_tokens=params.generation.max_new_tokens)
    chain_kwargs |= {"recall": greedy, "analyze": greedy, "summarize": greedy}
    EvaluateAtEnd, LiveCallback = trainer_callbacks()
    # The curves are written beside and moved into metrics/ with the model: an interrupted run leaves the last
    # run's curves whole (a resumed one replays its checkpoint's history into a fresh copy).
    callbacks: list[TrainerCallback] = [EvaluateAtEnd(), LiveCallback(paths.curves_work("sft"))]
    if max_steps is not None:
        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step >= max_steps:
                    control.should_training_stop = control.should_save = True
        callbacks.append(Stop())
    trainer = sft_trainer(kind, params, model, tokenizer, rows, valid, args=args, callbacks=callbacks,
                          batch_sampler=sampler, chain_kwargs=chain_kwargs)
    out = trainer.train(resume_from_checkpoint=resume)
    resumed = {"resumed_from_step": int(Path(resume).name.split("-")[-1]) if resume else 0}
    if max_steps is not None and trainer.state.global_step < trainer.state.max_steps:
        return {"train_steps": trainer.state.global_step} | resumed  # interrupted on purpose: no outputs

    kind.finish(trainer)  # LoRA adapters folded into the weights
    distributed.save_model(trainer, paths.sft_model)  # the best checkpoint (load_best_model_at_end)
    metrics = {"valid_accuracy": trainer.state.best_metric, "best_step": trainer.state.best_global_step,
               "train_steps": trainer.state.global_step, "train_loss": out.training_loss,
               "processes": trainer.accelerator.num_processes}
    if trainer.is_world_process_zero():
        replace_dir(paths.curves_work("sft"), paths.curves("sft"))
        write_json(paths.metric("sft"), metrics)
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # done: nothing to resume, and a rerun must retrain
    return metrics | resumed
