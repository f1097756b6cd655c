"""The training engine: the lifecycle of one training run, written once for pretrain, sft and every DPO iteration.

    run = Run(params, paths, "sft", section="sft")   # its checkpoints, curves, metrics file and tracker run
    args = run.arguments(factory, eval_every=..., log_every=..., **fields)   # TrainingArguments from params
    resume = run.resume(fingerprint(keys, files, root))  # stale checkpoints go; the last one to resume from
    trainer = Trainer(..., args=args, callbacks=run.callbacks(stop_at=...))   # curves, evaluation, stop
    if run.train(trainer, resume):                     # False: stopped on purpose at `stop_at`
        run.complete(metrics, out, trainer=trainer, family=kind)   # model, curves, metrics moved in atomically

A run is named as its outputs are: `pretrain`, `sft`, `dpo/<iteration>` (models/checkpoints/<name>,
metrics/<stage>_live/..., metrics/<name>.json, the tracker's run). Its curves are written beside the checkpoints
and moved into metrics/ with the model, so an interrupted run leaves the last run's curves whole; a resumed run
replays its checkpoint's history first. Every curve and metric has the Trainer's and TRL's name
(`protocol.curve_name`: train/loss, eval/accuracy, rewards/margins).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from transformers import TrainerCallback

from ..io import atomic_path, read_json, replace_dir, write_json
from ..params import Params
from ..paths import Paths
from ..protocol import curve_name
from . import distributed
from .training import autocast, resolve_precision, trainer_kwargs

START = "start.json"  # the starting model's validation accuracy, beside a run's checkpoints (validate_start)

# bookkeeping the trainers log that makes no useful curve (and wall-clock values would make the curves of two
# identical runs differ)
SKIP_LOG = {"step", "epoch", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second"}


class EvaluateAtEnd(TrainerCallback):
    """The last step is evaluated (and saved) even when it is no multiple of the eval interval."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = control.should_save = True


class StopAt(TrainerCallback):
    """Stop (and save a checkpoint to resume from) at `step`: tests of an interrupted run."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = control.should_save = True


def validate(model, tokenizer, valid: list[dict], chain_kwargs: dict, precision: str) -> float:
    """Validation chain accuracy of `model` in the training precision (as the trainer's evaluations), every process
    generating its share."""
    procs = distributed.state()
    with autocast(precision, procs.device):
        return distributed.chain_accuracy(procs, model, tokenizer, valid, desc="valid (start)", **chain_kwargs)


class StartValidation(TrainerCallback):
    """The starting model's validation accuracy (best-of-start selection; the curves' step 0), once the Trainer has
    prepared the model and before the first batch; saved beside the checkpoints, so a resumed run, whose model then
    holds trained weights, reads it."""

    def __init__(self, file: Path, tokenizer, valid: list[dict], chain_kwargs: dict, precision: str):
        self.file, self.tokenizer, self.valid, self.chain_kwargs, self.precision = (file, tokenizer, valid,
                                                                                    chain_kwargs, precision)
        self.accuracy = read_json(file)["start_valid_accuracy"] if distributed.from_main(file.exists()) else None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.accuracy is None:
            self.accuracy = validate(model, self.tokenizer, self.valid, self.chain_kwargs, self.precision)
            if distributed.is_main():
                write_json(self.file, {"start_valid_accuracy": self.accuracy})


class LiveCallback(TrainerCallback):
    """dvclive curves indexed by the trainer's global step, named by `protocol.curve_name`.

    The stock DVCLiveCallback advances the dvclive step once per log call, so train and eval logs land on different
    steps and a resumed run starts over at 0; here every value is logged at its global step, `start()` (a log dict,
    e.g. the starting model's eval_accuracy) at step 0, and a resumed run first replays its checkpoint's history.
    """

    def __init__(self, live_dir: Path, start: Optional[Callable[[], dict]] = None):
        self.live_dir, self.start, self.live = live_dir, start, None

    def log(self, step: int, logs: dict) -> None:
        if self.live is None or "train_runtime" in logs:  # not the main process; the end-of-training summary
            return  # (its train_loss is one point, no curve: the run's metrics file has it)
        self.live.step = step
        for k, v in logs.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in SKIP_LOG:
                self.live.log_metric(curve_name(k), v)
        self.live.make_summary()

    def on_train_begin(self, args, state, control, **kwargs):
        from dvclive import Live

        if not state.is_world_process_zero:
            return
        self.live = Live(dir=str(self.live_dir), dvcyaml=False, save_dvc_exp=False)
        if self.start is not None:
            self.log(0, self.start())
        for entry in state.log_history:
            self.log(entry["step"], entry)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.log(state.global_step, logs or {})

    def on_train_end(self, args, state, control, **kwargs):
        if self.live is not None:
            self.live.end()


def fingerprint(keys, files: Iterable[Path], root: Path) -> str:
    """What a resumed run must share with the interrupted one: `keys` (params, number of processes; JSON) and the
    bytes of its input `files` (named relative to `root`)."""
    h = hashlib.sha256(json.dumps(keys, sort_keys=True).encode())
    for f in sorted(files):
        h.update(f.relative_to(root).as_posix().encode())
        digest = hashlib.sha256()
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        h.update(digest.digest())
    return h.hexdigest()


def resumed_step(resume: Optional[str]) -> int:
    """The step of the checkpoint a run resumed from (0: a fresh start)."""
    return int(Path(resume).name.split("-")[-1]) if resume else 0


def whole_run_loss(history: list[dict], trained_loss: float, resumed: int, steps: int) -> float:
    """The mean training loss over all `steps` of a run: the Trainer's `training_loss` covers only the steps
    since the checkpoint it resumed from (`resumed`); the steps before are the logged means of the checkpoint's
    history. Rounded to 6 places, so a resumed run records what an uninterrupted one does."""
    if not resumed or not steps:
        return round(trained_loss, 6)
    before, last = 0.0, 0
    for entry in history:
        if "loss" in entry and last < entry["step"] <= resumed:
            before += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return round((before + trained_loss * (steps - resumed)) / steps, 6)


def _writing_failed(e: Exception) -> bool:
    """A failure to write a file with no name to it: a full disk as the OS (no file name), safetensors
    (SafetensorError) or torch.save (a failed file write) reports it."""
    if isinstance(e, OSError):
        return e.filename is None
    return type(e).__name__ == "SafetensorError" or "file write failed" in str(e)


class Run:
    """One training run: `name` (pretrain, sft, dpo/<iteration>) places its outputs, `section` (sft, dpo) holds
    its precision, TF32, accumulation and checkpointing params."""

    def __init__(self, params: Params, paths: Paths, name: str, section: str):
        self.params, self.paths, self.name, self.section = params, paths, name, section
        self.checkpoints = paths.checkpoints / name
        self.curves_work = paths.curves_work(name)
        self.stop_at: Optional[int] = None
        self.output = None  # the Trainer's TrainOutput
        self.train_loss: Optional[float] = None  # over the whole run, a resumed one included (whole_run_loss)
        self.start: Optional[StartValidation] = None
        self._shared: Optional[dict] = None

    @property
    def precision(self) -> str:
        """fp32, bf16 or fp16: the run's `<section>.precision` resolved on this machine."""
        return resolve_precision(getattr(self.params, self.section).precision, f"{self.section}.precision")

    @property
    def processes(self) -> int:
        """The number of processes training together (the process group is set up on first use)."""
        return distributed.state().num_processes

    def settle(self) -> dict:
        """The TrainingArguments fields every trainer shares (training.trainer_kwargs); TF32 and the launcher's
        precision are set as a side effect, so call it before the first forward pass."""
        if self._shared is None:
            self._shared = trainer_kwargs(self.params, self.paths, self.section, self.name)
        return self._shared

    def arguments(self, factory=None, *, log_every: int, eval_every: Optional[int] = None,
                  overrides: Optional[dict] = None, **fields):
        """`factory(**fields)` (TrainingArguments by default) for this run: the shared fields (precision, TF32,
        accumulation, checkpointing, trackers; `overrides` replace some), a cosine schedule, logs every `log_every`
        steps; with `eval_every`, evaluation and a checkpoint every `eval_every` steps and the best by accuracy
        loaded at the end (ties keep the earlier), else no checkpoints."""
        import torch
        from transformers import TrainingArguments

        cuda = torch.cuda.is_available()
        common = dict(output_dir=str(self.checkpoints), seed=self.params.seed, lr_scheduler_type="cosine",
                      logging_steps=log_every, logging_first_step=True, remove_unused_columns=False,
                      disable_tqdm=False, dataloader_pin_memory=cuda,
                      use_cpu=not cuda)  # also makes a multi-process launch on CPU one DDP job (gloo), not N lone runs
        if eval_every:
            common |= dict(eval_strategy="steps", eval_steps=eval_every, save_strategy="steps", save_steps=eval_every,
                           load_best_model_at_end=True, metric_for_best_model="accuracy", greater_is_better=True,
                           save_total_limit=2,  # the best and the latest (to resume); 1 would drop the latest at end
                           ddp_find_unused_parameters=False)  # every parameter takes part in every step
        else:
            common["save_strategy"] = "no"
        return (factory or TrainingArguments)(**common, **fields, **(self.settle() | (overrides or {})))

    def resume(self, stamp: str, keep: Sequence[str] = ()) -> Optional[str]:
        """The last checkpoint of an interrupted run with the same fingerprint `stamp` (and the files `keep` beside
        its checkpoints), else None after the stale checkpoints are gone (other params, data or process count)."""
        from transformers.trainer_utils import get_last_checkpoint

        file = self.checkpoints / "fingerprint.txt"
        with distributed.main_first() as main:
            if main and not (file.exists() and file.read_text() == stamp
                             and all((self.checkpoints / k).exists() for k in keep)):
                shutil.rmtree(self.checkpoints, ignore_errors=True)
                self.checkpoints.mkdir(parents=True)
                file.write_text(stamp)
            return get_last_checkpoint(str(self.checkpoints))

    def callbacks(self, stop_at: Optional[int] = None, evaluate_at_end: bool = False,
                  validate_start: Optional[tuple] = None, before: Sequence = ()) -> list:
        """The run's callbacks: with `validate_start` (tokenizer, valid questions, chain kwargs) the starting model
        validated first (`start_accuracy`, logged at step 0); `before` (more callbacks, e.g. a reference pass); the
        last step evaluated; the curves; a stop at `stop_at`. Call after `resume`."""
        self.stop_at, out = stop_at, []
        if validate_start is not None:
            self.start = StartValidation(self.checkpoints / START, *validate_start, self.precision)
            out.append(self.start)
        out += list(before) + ([EvaluateAtEnd()] if evaluate_at_end else [])
        start = (lambda: {"eval_accuracy": self.start.accuracy}) if self.start is not None else None
        out.append(LiveCallback(self.curves_work, start))
        return out + ([StopAt(stop_at)] if stop_at is not None else [])

    @property
    def start_accuracy(self) -> Optional[float]:
        return None if self.start is None else self.start.accuracy

    def train(self, trainer, resume: Optional[str] = None) -> bool:
        """Train (from `resume`); False when the run stopped on purpose at `stop_at` before its last step. A
        checkpoint that cannot be written (a full disk: safetensors and torch say so in their own errors) is an
        OSError naming the checkpoints' directory."""
        try:
            self.output = trainer.train(resume_from_checkpoint=resume)
        except Exception as e:
            if not _writing_failed(e):
                raise
            raise distributed.save_error(e, self.checkpoints) from None
        self.train_loss = whole_run_loss(trainer.state.log_history, self.output.training_loss,
                                         resumed_step(resume), trainer.state.global_step)
        return self.stop_at is None or trainer.state.global_step >= trainer.state.max_steps

    def log_points(self, points: dict[int, dict], resume: bool = False) -> None:
        """Values logged beside (`resume`) or instead of the trainer's curves at the given steps (main process)."""
        from dvclive import Live

        if not distributed.is_main():
            return
        live = Live(dir=str(self.curves_work), resume=resume, dvcyaml=False, save_dvc_exp=False)
        for step, values in points.items():
            live.step = step
            for k, v in values.items():
                if v is not None:
                    live.log_metric(curve_name(k), v)
        live.make_summary()
        live.end()
        self.curves_work.joinpath("plots", "metrics").mkdir(parents=True, exist_ok=True)

    def complete(self, metrics: dict, out: Path, *, trainer=None, family=None, copy_of: Optional[Path] = None,
                 save: Optional[Callable[[Path], None]] = None) -> dict:
        """The run's outputs, each moved in atomically: the model in `out` (the trainer's best after
        `family.finish`, every process taking part; else a copy of `copy_of`; else what `save(dir)` writes), then
        its curves and `metrics` (main process); the checkpoints go (nothing to resume, a rerun retrains)."""
        if trainer is not None:
            family.finish(trainer)  # e.g. LoRA adapters folded into the weights
            distributed.save_model(trainer, out)  # the best checkpoint (load_best_model_at_end)
        if not distributed.is_main():
            return metrics
        if trainer is None:
            with atomic_path(out) as tmp:
                shutil.copytree(copy_of, tmp) if copy_of is not None else save(tmp)
        replace_dir(self.curves_work, self.paths.curves(self.name))
        write_json(self.paths.metric(self.name), metrics)
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        return metrics
