"""Stage `control` (one per DPO iteration): what self-reflection adds over more training.

The control of an iteration starts from the same model (its `init`) and trains as many optimizer steps as the
iteration did, at its learning rate, batch size, warm-up and accumulation, validating as often (once per pass), on
the SFT curriculum data alone: the sft stage's own code, in a scratch workspace beside the run's models (models/.control/<iteration>). Like the iteration it
keeps the best of its start and its checkpoints by validation chain accuracy; then the kept model is tested. The
report sets each iteration's test accuracy beside its control's (`over control`); `tinythinker seeds` aggregates it.
With `dpo.control: false` the stage writes only that it was skipped.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..io import DataError, write_json
from ..params import Params
from ..paths import Paths
from ..protocol import read_questions
from .report import stage_metrics


def _metric(paths: Paths, name: str, stage: str) -> dict:
    return stage_metrics(paths.metric(name), stage, "the control")


def _start_test(paths: Paths, params: Params, iteration: str) -> tuple[str, float | None]:
    """The iteration's start (`sft` or an earlier iteration) and its test accuracy."""
    init = paths.root / params.dpo.iterations[iteration].init
    name = "sft" if init.resolve() == paths.sft_model.resolve() else init.name
    return name, _metric(paths, f"test/{name}", "test_sft" if name == "sft" else f"test@{name}").get("accuracy")


def control_params(params: Params, init: Path, steps: int, per_epoch: int) -> Params:
    """The sft params of a control: the iteration's start as a local student, the iteration's optimizer knobs, one
    validation per pass, and epochs such that the trainer's ceil(epochs x batches per epoch) is exactly `steps`."""
    d = params.dpo
    return params.replace(**{"student.model": str(init.resolve()), "sft.learning_rate": d.learning_rate,
                             "sft.batch_size": d.batch_size, "sft.warmup_ratio": d.warmup_ratio,
                             "sft.gradient_accumulation_steps": d.gradient_accumulation_steps,
                             "sft.eval_every": max(1, steps // d.passes), "sft.epochs": (steps - 0.5) / per_epoch})


def _scratch(paths: Paths, iteration: str, init: Path) -> Paths:
    """The control's workspace, models/.control/<iteration>: the run's data/sft and the start's tokenizer as links. The
    same path on every process (a launch of several processes trains one control), made afresh by the main one."""
    from ..lm import distributed

    scratch = Paths(paths.root / "models" / ".control" / iteration)  # beside the run's models: a large student's
    with distributed.main_first() as main:                            # checkpoints may not fit a small /tmp
        if main:
            shutil.rmtree(scratch.root, ignore_errors=True)  # what a killed control left
            (scratch.root / "data").mkdir(parents=True)
            os.symlink(paths.sft_data.resolve(), scratch.sft_data)
            scratch.tokenizer.parent.mkdir(parents=True)
            os.symlink(init.resolve(), scratch.tokenizer)  # the start's own tokenizer
    return scratch


def _train(params: Params, paths: Paths, iteration: str, steps: int, start_valid: float) -> dict:
    """Train and test the control of `iteration` (`steps` optimizer steps) in its scratch workspace."""
    from ..lm import distributed
    from ..lm.curriculum import CurriculumBatchSampler, sft_intervals
    from ..student.stages import hold_out, sft, stage_data, test

    init = paths.root / params.dpo.iterations[iteration].init
    scratch = _scratch(paths, iteration, init)
    s, d = params.sft, params.dpo
    stages, _ = hold_out(stage_data(params, paths), s.eval_questions, params.seed)  # what sft trained on
    options = max(len(q["options"]) for q in read_questions(paths.sft_data / "valid.jsonl"))
    per_epoch = len(CurriculumBatchSampler({k: len(v) for k, v in stages.items()},
                                           sft_intervals(s.stage_type, s.interval, options),
                                           d.batch_size * d.gradient_accumulation_steps, params.seed))
    p = control_params(params, init, steps, per_epoch)
    t0 = time.time()
    m = sft(p, scratch)
    kept = m["valid_accuracy"] > start_valid  # as an iteration: a tie keeps the start
    out = {"steps": m["train_steps"], "best_valid_accuracy": m["valid_accuracy"], "kept_start": int(not kept),
           "valid_accuracy": m["valid_accuracy"] if kept else start_valid}
    if kept:
        out["test_accuracy"] = test(p, scratch, scratch.sft_model, "test/control")["accuracy"]
    out["seconds"] = round(time.time() - t0, 1)
    distributed.state().wait_for_everyone()
    if distributed.is_main():
        shutil.rmtree(scratch.root, ignore_errors=True)
    return out


def control(params: Params, paths: Paths, iteration: str) -> dict:
    """Train, test and write metrics/control/<iteration>.json: the iteration's and its control's test accuracy from
    the same start and the gain of self-reflection over the control."""
    if iteration not in params.dpo.iterations:
        raise DataError(f"{iteration}: no such key in dpo.iterations ({', '.join(params.dpo.iterations)})")
    if not params.dpo.control:
        return _write(paths, iteration, {"skipped": 1})
    dpo = _metric(paths, f"dpo/{iteration}", f"dpo_train@{iteration}")
    start, start_test = _start_test(paths, params, iteration)
    dpo_test = _metric(paths, f"test/{iteration}", f"test@{iteration}").get("accuracy")
    row = {"start": start, "start_test_accuracy": start_test, "dpo_steps": dpo.get("steps", 0),
           "dpo_test_accuracy": dpo_test}
    if not row["dpo_steps"]:  # nothing trained: the control is the start too
        ctl = {"steps": 0, "kept_start": 1, "valid_accuracy": dpo.get("start_valid_accuracy")}
    else:
        ctl = _train(params, paths, iteration, row["dpo_steps"], dpo.get("start_valid_accuracy") or 0.0)
    ctl.setdefault("test_accuracy", start_test)
    metrics = row | {f"control_{k}": v for k, v in ctl.items()}
    if None not in (dpo_test, ctl["test_accuracy"]):
        metrics["over_control"] = round(dpo_test - ctl["test_accuracy"], 2)
    return _write(paths, iteration, metrics)


def _write(paths: Paths, iteration: str, metrics: dict) -> dict:
    from ..lm import distributed

    if distributed.is_main():
        write_json(paths.metric(f"control/{iteration}"), metrics)
    return metrics
