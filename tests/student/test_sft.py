"""Curriculum SFT on a tiny T5 and a small learnable task: loss falls, chain accuracy rises, resume works."""
import csv

import pytest

from tests.helpers import SFT_PARAMS, questions, student_stages, write_task
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
                                                                "train_loss", "processes",
                                                                "inputs_over_max_source_length",
                                                                "targets_over_max_target_length")}
    assert m["inputs_over_max_source_length"] == m["targets_over_max_target_length"] == 0
    assert m["processes"] == 1
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
    runs = {}
    for name, params, p in (("plain", base, paths), ("accumulated", accumulated, other)):
        assert sft(params, p, max_steps=6) == {"train_steps": 6, "resumed_from_step": 0}
        # interrupted: its curves are still beside, in the working copy
        evals = csv.DictReader(open(p.curves_work("sft") / "plots" / "metrics" / "eval" / "accuracy.tsv"),
                               delimiter="\t")
        assert [int(r["step"]) for r in evals] == [5], name
        runs[name] = load_file(p.checkpoints / "sft" / "checkpoint-6" / "model.safetensors")
    a, b = runs["plain"], runs["accumulated"]
    assert all(torch_allclose(a[k], b[k]) for k in a)
    first = load_file(paths.checkpoints / "sft" / "checkpoint-5" / "model.safetensors")
    assert not all(torch_allclose(first[k], a[k]) for k in a)  # training moved the weights


def torch_allclose(x, y):
    import torch
    return torch.allclose(x, y, atol=1e-5, rtol=1e-4)
