"""Curriculum SFT on a tiny T5 and a small learnable task: loss falls, chain accuracy rises, resume works."""
import csv

import pytest

from tests.helpers import SFT_PARAMS, curves, questions, student_stages, write_task
from tinythinker.io import read_json
from tinythinker.paths import Paths
from tinythinker.lm.chain import Decoding, accuracy, run_chain
from tinythinker.lm.model import load_student
from tinythinker.student.stages import sft, sft_fingerprint

PARAMS = SFT_PARAMS
pytestmark = pytest.mark.usefixtures("one_thread")


def chain_accuracy(params, paths, model_dir=None):
    model, tok = load_student(params, paths, model_dir)
    d = Decoding(max_new_tokens=40)
    return accuracy(run_chain(model, tok, [q for q in questions(12)], recall=d, analyze=d, summarize=d))


def test_learns_and_resumes(paths, tmp_path_factory):
    before = chain_accuracy(PARAMS, paths)
    # 12 recall + 36 analyze + 12 summarize rows, batch 8: 2 + 5 + 2 = 9 steps per epoch, 360 in all
    first = sft(PARAMS, paths, max_steps=50)
    assert first == {"train_steps": 50, "resumed_from_step": 0}
    assert (paths.checkpoints / "sft" / "checkpoint-50").is_dir() and not paths.sft_model.exists()
    assert not paths.curves("sft").exists()  # the curves reach metrics/ with the model, not before

    m = sft(PARAMS, paths)  # picks up the interrupted run
    assert m["resumed_from_step"] == 50 and m["train_steps"] == 360
    assert read_json(paths.metric("sft")) == {k: m[k] for k in ("valid_accuracy", "best_step", "train_steps",
                                                                "train_loss", "processes", "eval_questions",
                                                                "inputs_over_max_source_length",
                                                                "targets_over_max_target_length")}
    assert m["inputs_over_max_source_length"] == m["targets_over_max_target_length"] == 0
    assert m["processes"] == 1 and m["eval_questions"] == 0
    after = chain_accuracy(PARAMS, paths, paths.sft_model)  # the saved model is the best checkpoint
    assert before == 0 and after >= 50 and after == m["valid_accuracy"]
    assert not (paths.checkpoints / "sft").exists()  # finished: nothing left to resume

    # the resumed run is the uninterrupted run: same batches, optimizer and schedule state
    from safetensors.torch import load_file
    straight = Paths(tmp_path_factory.mktemp("straight"))
    write_task(straight, questions(12))
    student_stages(PARAMS, straight)
    whole = sft(PARAMS, straight)
    assert whole["best_step"] == m["best_step"]
    assert whole["train_loss"] == m["train_loss"]  # over all 360 steps, not the 310 after the resume
    a, b = (load_file(p.sft_model / "model.safetensors") for p in (paths, straight))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)

    # dvclive curves on the global step, history replayed across the resume, no step logged twice
    plots = paths.metrics / "sft_live" / "plots" / "metrics"
    loss = [(int(r["step"]), float(r["loss"]))
            for r in csv.DictReader(open(plots / "train" / "loss.tsv"), delimiter="\t")]
    steps = [s for s, _ in loss]
    assert steps[0] == 1 and len(steps) == len(set(steps)) and steps[-1] >= 350
    assert loss[-1][1] < loss[0][1] / 3
    evals = [(int(r["step"]), float(r["accuracy"]))
             for r in csv.DictReader(open(plots / "eval" / "accuracy.tsv"), delimiter="\t")]
    assert [s for s, _ in evals] == list(range(40, 361, 40))
    assert not (plots / "train" / "train_loss.tsv").exists()  # the end-of-training summary is no one-point curve
    best = max(a for _, a in evals)
    assert m["best_step"] == next(s for s, a in evals if a == best)  # ties keep the earlier checkpoint

    # a later run that is interrupted (killed, or stopped here) leaves these curves whole
    curves = {f: f.read_bytes() for f in paths.curves("sft").rglob("*") if f.is_file()}
    assert sft(PARAMS.replace(**{"sft.learning_rate": 1e-3}), paths, max_steps=3)["train_steps"] == 3
    assert {f: f.read_bytes() for f in paths.curves("sft").rglob("*") if f.is_file()} == curves


def test_fingerprint_changes_with_params_and_data(paths):
    f = sft_fingerprint(PARAMS, paths)
    assert sft_fingerprint(PARAMS, paths) == f
    assert sft_fingerprint(PARAMS.replace(**{"sft.learning_rate": 1e-3}), paths) != f
    assert sft_fingerprint(PARAMS.replace(**{"generation.times": 3}), paths) == f  # not used by training
    write_task(paths, questions(11))
    assert sft_fingerprint(PARAMS, paths) != f


def test_changed_params_start_fresh(paths):
    assert sft(PARAMS, paths, max_steps=3)["resumed_from_step"] == 0
    other = PARAMS.replace(**{"sft.learning_rate": 2e-2})
    assert sft(other, paths, max_steps=4) == {"train_steps": 4, "resumed_from_step": 0}
    assert sorted(p.name for p in (paths.checkpoints / "sft").glob("checkpoint-*")) == ["checkpoint-4"]


def test_accumulation_trains_the_same_optimizer_steps(paths, tmp_path_factory):
    """batch 4 x 2 micro-batches (with activation checkpointing) = batch 8: the same optimizer steps, curriculum
    blocks and validation cadence ("cycle" = 1 + 3 + 1 steps here), and the same weights."""
    from safetensors.torch import load_file

    base = PARAMS.replace(**{"sft.eval_every": "cycle", "sft.epochs": 1.0})
    accumulated = base.replace(**{"sft.batch_size": 4, "sft.gradient_accumulation_steps": 2,
                                  "sft.gradient_checkpointing": True})
    other = Paths(tmp_path_factory.mktemp("accumulated"))
    write_task(other, questions(12))
    student_stages(PARAMS, other)
    runs, losses = {}, {}
    for name, params, p in (("plain", base, paths), ("accumulated", accumulated, other)):
        assert sft(params, p, max_steps=6) == {"train_steps": 6, "resumed_from_step": 0}
        # interrupted: its curves are still beside, in the working copy
        evals = csv.DictReader(open(p.curves_work("sft") / "plots" / "metrics" / "eval" / "accuracy.tsv"),
                               delimiter="\t")
        assert [int(r["step"]) for r in evals] == [5], name
        runs[name] = load_file(p.checkpoints / "sft" / "checkpoint-6" / "model.safetensors")
        losses[name] = {stage: read_curve(p.curves_work("sft"), f"train/{stage}_loss")
                        for stage in ("recall", "analyze", "summarize")}
    # a step's loss per stage is the whole batch's, however it was split into micro-batches
    for stage, curve in losses["plain"].items():
        other_curve = losses["accumulated"][stage]
        assert [s for s, _ in curve] == [s for s, _ in other_curve] and curve, stage
        assert all(abs(x - y) <= 1e-3 * abs(x) for (_, x), (_, y) in zip(curve, other_curve)), stage
    a, b = runs["plain"], runs["accumulated"]
    assert all(torch_allclose(a[k], b[k]) for k in a)
    first = load_file(paths.checkpoints / "sft" / "checkpoint-5" / "model.safetensors")
    assert not all(torch_allclose(first[k], a[k]) for k in a)  # training moved the weights


def torch_allclose(x, y):
    import torch
    return torch.allclose(x, y, atol=1e-5, rtol=1e-4)


def read_curve(live, name: str) -> list[tuple[int, float]]:
    """(step, value) of one dvclive curve under `live` (a run's curves directory), in step order."""
    return sorted(curves(live)[name].items())


def test_curves_per_stage_and_on_held_out_questions(paths):
    """Each step's loss is drawn under its curriculum stage (log every step here: one stage per step, the step's loss);
    every validation also scores the held-out questions' teacher rows: their loss per stage falls as SFT learns, and
    each step run alone on the teacher's input is scored."""
    from tinythinker.lm.curriculum import CurriculumBatchSampler
    from tinythinker.student.stages import hold_out, stage_data

    params = PARAMS.replace(**{"sft.eval_questions": 3, "sft.epochs": 12.0, "sft.eval_every": 4})
    stages = stage_data(params, paths)
    train, held = hold_out(stages, 3, params.seed)
    assert {r["qid"] for rows in held.values() for r in rows} == {r["qid"] for r in held["recall"]}
    assert len(held["recall"]) == 3 and len(held["analyze"]) == 9 and len(held["summarize"]) == 3
    assert not {r["qid"] for r in held["recall"]} & {r["qid"] for rows in train.values() for r in rows}
    assert hold_out(stages, 3, params.seed) == (train, held) and hold_out(stages, 3, params.seed + 1) != (train, held)

    m = sft(params, paths)
    assert m["eval_questions"] == 3
    live = paths.curves("sft")
    total = dict(read_curve(live, "train/loss"))
    order = [s for s, _ in CurriculumBatchSampler({k: len(v) for k, v in train.items()},
                                                  {"recall": 1, "analyze": 3, "summarize": 1}, 8, 0).batches()]
    seen = {}
    for stage in ("recall", "analyze", "summarize"):
        for step, value in read_curve(live, f"train/{stage}_loss"):
            assert order[(step - 1) % len(order)] == stage and step not in seen
            assert abs(value - total[step]) <= 1e-4 * total[step]
            seen[step] = stage
    assert sorted(seen) == sorted(total)

    evals = [s for s, _ in read_curve(live, "eval/accuracy")]
    for name in ("loss", "recall_loss", "analyze_loss", "summarize_loss", "recall_f1", "analyze_f1",
                 "summarize_accuracy"):
        curve = read_curve(live, f"eval/{name}")
        assert [s for s, _ in curve] == evals[1:] or [s for s, _ in curve] == evals, name
        if name.endswith("loss"):
            assert curve[-1][1] < curve[0][1] / 2, (name, curve)  # learnt on questions it never trained on
        else:
            assert all(0 <= v <= 100 for _, v in curve), (name, curve)
    recall = read_curve(live, "eval/recall_f1")  # 0 -> ~90 here on one and two threads
    assert max(v for _, v in recall) >= recall[0][1] + 40, recall
