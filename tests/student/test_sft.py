"""Curriculum SFT on a tiny T5 and a small learnable task: loss falls, chain accuracy rises, resume works."""
import csv
import random
from pathlib import Path

import pytest

from tinythinker import protocol as P
from tinythinker.io import read_json, write_jsonl
from tinythinker.params import load
from tinythinker.paths import Paths
from tinythinker.student.chain import Decoding, accuracy, run_chain
from tinythinker.student.model import load_student, tokenizer_stage
from tinythinker.student.pretrain import pretrain
from tinythinker.student.sft import _fingerprint, sft

BASE = load(Path(__file__).resolve().parents[2] / "params.yaml")  # params.yaml holds every value

KINDS = {"color": ["red", "blue", "green"], "animal": ["dog", "cat", "cow"], "fruit": ["apple", "pear", "plum"],
         "tool": ["saw", "hammer", "drill"]}
KIND_OF = {w: k for k, ws in KINDS.items() for w in ws}


def questions(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = rng.choice(sorted(KINDS))
        others = [w for k, ws in KINDS.items() if k != kind for w in ws]
        words = [rng.choice(KINDS[kind])] + rng.sample(others, 2)
        rng.shuffle(words)
        choices = [{"label": x, "text": w} for x, w in zip("ABC", words)]
        gt = "ABC"[words.index(next(w for w in words if KIND_OF[w] == kind))]
        out.append({"qid": f"q{i}", "block": P.question_block(f"Which one is a {kind}?", choices),
                    "options": ["A", "B", "C"], "gt": gt, "words": words, "kind": kind})
    return out


def write_task(paths: Paths, qs: list[dict]) -> None:
    st = "recall_analyze_summarize"
    recall = {q["qid"]: f"A {q['kind']} is a kind of thing." for q in qs}
    analyses = {q["qid"]: {x: f"{w} is a {KIND_OF[w]}." for x, w in zip("ABC", q["words"])} for q in qs}
    write_jsonl(paths.stage_file(st, "recall"),
                [{"qid": q["qid"], "input": P.recall_prompt(q["block"]), "target": recall[q["qid"]]} for q in qs])
    write_jsonl(paths.stage_file(st, "analyze"),
                [{"qid": q["qid"], "input": P.analyze_prompt(q["block"], x, recall[q["qid"]]), "target": t, "option": x}
                 for q in qs for x, t in analyses[q["qid"]].items()])
    write_jsonl(paths.stage_file(st, "summarize"),
                [{"qid": q["qid"], "input": P.summarize_prompt(q["block"], recall[q["qid"]], analyses[q["qid"]]),
                  "target": P.summarize_target(q["gt"])} for q in qs])
    plain = [{k: q[k] for k in ("qid", "block", "options", "gt")} for q in qs]
    for name in ("valid", "test", "train_questions"):  # validation on the training questions: learnability
        write_jsonl(paths.sft_data / f"{name}.jsonl", plain)
    # the corpus stage's outputs: the world's facts, and a probe of each
    write_jsonl(paths.corpus / "text.jsonl", [{"text": f"the {w} is a kind of {k}."} for w, k in KIND_OF.items()])
    write_jsonl(paths.corpus / "probe.jsonl", [{"prompt": f"the {w} is a kind of", "answer": k, "held_out": w == "plum"}
                                               for w, k in KIND_OF.items()])


def student_stages(params, paths: Paths) -> None:
    """The tokenizer and pretrain stages (`params` with student.pretrain.steps 0: the initial student, saved)."""
    tokenizer_stage(params, paths)
    pretrain(params, paths)


PARAMS = BASE.replace(**{
    "student.embedded.vocab_size": 200, "student.embedded.d_model": 32, "student.embedded.d_ff": 64,
    "student.embedded.d_kv": 8, "student.embedded.num_heads": 4, "student.embedded.num_layers": 2,
    "student.embedded.num_decoder_layers": 2, "student.embedded.dropout_rate": 0.0,
    "sft.batch_size": 8, "sft.learning_rate": 1e-2, "sft.epochs": 40.0, "sft.interval": 1,
    "sft.eval_every": 40, "generation.max_new_tokens": 40, "generation.batch_size": 64,
    "student.pretrain.steps": 0})


@pytest.fixture(autouse=True)
def one_thread():
    """A tiny model gains nothing from threads, and on a shared, loaded machine idle spinning threads
    slow training tenfold."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def paths(tmp_path):
    p = Paths(tmp_path)
    write_task(p, questions(12))
    student_stages(PARAMS, p)
    return p


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
                                                                "train_loss", "processes")}
    assert m["processes"] == 1
    after = chain_accuracy(PARAMS, paths, paths.sft_model)  # the saved model is the best checkpoint
    assert before == 0 and after >= 50 and after == m["valid_accuracy"]
    assert not (paths.checkpoints / "sft").exists()  # finished: nothing left to resume

    # the resumed run is the uninterrupted run: same batches, optimizer and schedule state
    from safetensors.torch import load_file
    straight = Paths(tmp_path_factory.mktemp("straight"))
    write_task(straight, questions(12))
    student_stages(PARAMS, straight)
    assert sft(PARAMS, straight)["best_step"] == m["best_step"]
    a, b = (load_file(p.sft_model / "model.safetensors") for p in (paths, straight))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)

    # dvclive curves on the global step, history replayed across the resume, no step logged twice
    plots = paths.metrics / "sft_live" / "plots" / "metrics"
    loss = [(int(r["step"]), float(r["train_loss"])) for r in csv.DictReader(open(plots / "train_loss.tsv"), delimiter="\t")]
    steps = [s for s, _ in loss]
    assert steps[0] == 1 and len(steps) == len(set(steps)) and steps[-1] >= 350
    assert loss[-1][1] < loss[0][1] / 3
    evals = [(int(r["step"]), float(r["eval_accuracy"]))
             for r in csv.DictReader(open(plots / "eval_accuracy.tsv"), delimiter="\t")]
    assert [s for s, _ in evals] == list(range(40, 361, 40))
    assert not (plots / "train_train_loss.tsv").exists()  # the end-of-training summary is no one-point curve
    best = max(a for _, a in evals)
    assert m["best_step"] == next(s for s, a in evals if a == best)  # ties keep the earlier checkpoint

    # a later run that is interrupted (killed, or stopped here) leaves these curves whole
    curves = {f: f.read_bytes() for f in paths.curves("sft").rglob("*") if f.is_file()}
    assert sft(PARAMS.replace(**{"sft.learning_rate": 1e-3}), paths, max_steps=3)["train_steps"] == 3
    assert {f: f.read_bytes() for f in paths.curves("sft").rglob("*") if f.is_file()} == curves


def test_fingerprint_changes_with_params_and_data(paths):
    f = _fingerprint(PARAMS, paths)
    assert _fingerprint(PARAMS, paths) == f
    assert _fingerprint(PARAMS.replace(**{"sft.learning_rate": 1e-3}), paths) != f
    assert _fingerprint(PARAMS.replace(**{"generation.times": 3}), paths) == f  # not used by training
    write_task(paths, questions(11))
    assert _fingerprint(PARAMS, paths) != f


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
        evals = csv.DictReader(open(p.curves_work("sft") / "plots" / "metrics" / "eval_accuracy.tsv"), delimiter="\t")
        assert [int(r["step"]) for r in evals] == [5], name
        runs[name] = load_file(p.checkpoints / "sft" / "checkpoint-6" / "model.safetensors")
    a, b = runs["plain"], runs["accumulated"]
    assert all(torch_allclose(a[k], b[k]) for k in a)
    first = load_file(paths.checkpoints / "sft" / "checkpoint-5" / "model.safetensors")
    assert not all(torch_allclose(first[k], a[k]) for k in a)  # training moved the weights


def torch_allclose(x, y):
    import torch
    return torch.allclose(x, y, atol=1e-5, rtol=1e-4)
