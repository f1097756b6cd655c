"""Seq2seq DPO: the loss against hand-computed values, the trainer on a tiny T5, the stage's outputs."""
import math
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import BASE, ANALYZE, BLOCK, RECALL, SUMMARIZE, VALID, assert_per_kind, curves, dpo_trainer
from tinythinker import protocol as P
from tinythinker.io import read_json, write_jsonl
from tinythinker.params import load
from tinythinker.paths import Paths
from tinythinker.reflect import dpo_seq2seq
from tinythinker.reflect.dpo_seq2seq import (collate, disable_dropout, dpo_loss, policy_logps, reference_logps,
                                             sequence_logps, tokenize_pairs)
from tinythinker.reflect.schedule import schedule_intervals
from tinythinker.reflect.stages import dpo_train

# Its module fixture builds what every test here reads: one xdist worker runs them all (`--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("dpo")


PARAMS = BASE.replace(**{
    "student.embedded.vocab_size": 90, "student.embedded.d_model": 32, "student.embedded.d_ff": 64,
    "student.embedded.d_kv": 8, "student.embedded.num_heads": 2, "student.embedded.num_layers": 1,
    "student.embedded.num_decoder_layers": 1, "student.embedded.dropout_rate": 0.1,  # test_dropout_disabled
    "generation.max_new_tokens": 6, "generation.batch_size": 8,
    "dpo.batch_size": 2, "dpo.passes": 2, "dpo.learning_rate": 3e-3, "dpo.warmup_ratio": 0.0,
    "dpo.iterations": {"iter1": {"init": "models/sft"}},
    "student.pretrain.steps": 0})


# --- loss on a toy batch -------------------------------------------------------------------------------
def test_sequence_logps_and_loss_by_hand():
    # 2 pairs -> 4 rows (chosen 1, chosen 2, rejected 1, rejected 2), vocabulary 3, up to 3 label tokens
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]],
                           [[0.0, 0.0, 3.0], [9.0, 9.0, 9.0], [9.0, 9.0, 9.0]],
                           [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]],
                           [[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [9.0, 9.0, 9.0]]])
    labels = torch.tensor([[0, 1, -100], [2, -100, -100], [1, 2, 1], [0, 0, -100]])

    def lp(row, tok):  # log-softmax by hand
        return row[tok] - math.log(sum(math.exp(v) for v in row))
    expect = [sum(lp(logits[i, t].tolist(), int(labels[i, t])) for t in range(3) if labels[i, t] >= 0)
              for i in range(4)]
    sums, counts = sequence_logps(logits, labels)
    assert sums.tolist() == pytest.approx(expect, abs=1e-6)
    assert counts.tolist() == [2, 1, 3, 2]  # padding (-100) is not a token

    pi_c, pi_r = sums[:2], sums[2:]
    ref_c, ref_r = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -0.5])
    nll = -(expect[0] + expect[1]) / 3  # token mean over the chosen half of the batch
    beta = 0.5
    dpo = [-math.log(1 / (1 + math.exp(-beta * ((expect[i] - expect[2 + i]) - (c - r)))))
           for i, (c, r) in enumerate([(-1.0, -1.5), (-2.0, -0.5)])]
    loss, m = dpo_loss(pi_c, pi_r, ref_c, ref_r, torch.tensor(nll), beta, ("sigmoid", "sft"), (1.0, 0.5))
    assert loss.item() == pytest.approx(sum(dpo) / 2 + 0.5 * nll, abs=1e-5)
    assert m["rewards/chosen"] == pytest.approx(beta * ((expect[0] + 1) + (expect[1] + 2)) / 2, abs=1e-5)
    assert m["logps/rejected"] == pytest.approx((expect[2] + expect[3]) / 2, abs=1e-5)
    only_sft, _ = dpo_loss(pi_c, pi_r, ref_c, ref_r, torch.tensor(nll), beta, ("sft",), (2.0,))
    assert only_sft.item() == pytest.approx(2 * nll, abs=1e-6)


def test_collate_repeats_prompts_and_pads_labels():
    feats = [{"input_ids": [5, 6, 1], "chosen": [7, 1], "rejected": [8, 9, 4, 1]},
             {"input_ids": [5, 1], "chosen": [3, 3, 1], "rejected": [1]}]
    b = collate(feats, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 1], [5, 1, 0]] * 2
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]] * 2
    assert b["labels"].tolist() == [[7, 1, -100, -100], [3, 3, 1, -100], [8, 9, 4, 1], [1, -100, -100, -100]]


def test_schedule_intervals_spec_6_3():
    assert schedule_intervals(70, 300, 32) == {"recall": 3, "analyze": 15}  # (300 // 70 + 1) x 3
    assert schedule_intervals(0, 64, 32) == {"analyze": 3}
    assert schedule_intervals(5, 0, 32) == {"recall": 1}
    assert schedule_intervals(0, 0, 32) == {}
    # summarize pairs (not the paper's): a block of their own after analyze, sized as a single stage's
    assert schedule_intervals(70, 300, 32, 40) == {"recall": 3, "analyze": 15, "summarize": 2}
    assert schedule_intervals(0, 0, 32, 64) == {"summarize": 3}


# --- tiny model ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sft_model(tmp_path_factory):
    """A tiny T5 and its tokenizer saved like models/sft (tokenizer trained here, weights seeded)."""
    from tinythinker.lm.model import build_initial, train_tokenizer

    root = tmp_path_factory.mktemp("sft")
    texts = [t for r in RECALL + ANALYZE for t in r.values()] + [P.summarize_target(x) for x in "AB"]
    texts += [P.summarize_prompt(BLOCK, "Iron is a metal.", {"A": "no.", "B": "yes."})]
    tokenizer = train_tokenizer(iter(texts * 3), PARAMS.student.embedded.vocab_size)
    tokenizer.save_pretrained(Paths(root).tokenizer)
    model, tokenizer = build_initial(PARAMS, Paths(root))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root / "model"


def load(path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    return AutoModelForSeq2SeqLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_dropout_disabled(sft_model):
    model, tok = load(sft_model)
    assert model.config.dropout_rate > 0
    disable_dropout(model)
    model.train()
    batch = collate(tokenize_pairs(RECALL, tok, 64, 16), tok.pad_token_id)
    with torch.no_grad():
        assert torch.equal(policy_logps(model, batch)[0], policy_logps(model, batch)[0])


def test_training_raises_margin_and_leaves_reference_alone(sft_model, tmp_path):
    from tinythinker.lm.chain import Decoding

    short = Decoding(max_new_tokens=6)
    model, tok = load(sft_model)
    feats = tokenize_pairs(RECALL + ANALYZE, tok, 64, 16)
    disable_dropout(model)
    reference_logps(model, feats, 2, tok.pad_token_id)
    refs = [(f["ref_chosen"], f["ref_rejected"]) for f in feats]
    with torch.no_grad():  # the policy starts as the reference: computed in a different batching, same values
        c, r, _ = policy_logps(model, collate(feats, tok.pad_token_id))
    assert c.tolist() == pytest.approx([x for x, _ in refs], abs=1e-4)

    params = PARAMS.replace(**{"dpo.passes": 4})
    intervals = schedule_intervals(len(RECALL), len(ANALYZE), 2)
    trainer = dpo_trainer(dpo_seq2seq, params, tmp_path, model, tok, feats, {"recall": 3, "analyze": 2}, intervals,
                          VALID, {"batch_size": 8, **dict.fromkeys(("recall", "analyze", "summarize"), short)})
    trainer.train()
    assert trainer.state.global_step == 4 * sum(intervals.values())
    assert [(f["ref_chosen"], f["ref_rejected"]) for f in feats] == refs  # precomputed once, never touched

    with torch.no_grad():
        model = trainer.model.eval()
        c, r, _ = policy_logps(model, {k: v.to(model.device) for k, v in collate(feats, tok.pad_token_id).items()})
        c, r = c.cpu(), r.cpu()
    ref_c, ref_r = torch.tensor(refs).T
    margins = (c - r) - (ref_c - ref_r)
    assert margins.mean() > 1.0 and (margins > 0).all()
    logged = [e for e in trainer.state.log_history if "rewards/margins" in e]
    assert logged and logged[-1]["rewards/accuracies"] > 0.5


# --- the stage -----------------------------------------------------------------------------------------
def repo(tmp_path, sft_model, recall, analyze, summarize=()):
    paths = Paths(tmp_path)
    shutil.copytree(sft_model, paths.sft_model)
    write_jsonl(paths.sft_data / "valid.jsonl", VALID)
    for stage, pairs in (("recall", recall), ("analyze", analyze), ("summarize", summarize)):
        write_jsonl(paths.dpo_data("iter1") / f"{stage}_pairs.jsonl", pairs)
    return paths


def same_files(a, b):
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return names == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def test_empty_pairs_pass_the_starting_model_through(tmp_path, sft_model):
    paths = repo(tmp_path, sft_model, [], [])
    metrics = dpo_train(PARAMS, paths, "iter1")
    assert same_files(paths.sft_model, paths.dpo_model("iter1"))
    saved = read_json(paths.metrics / "dpo" / "iter1.json")
    assert saved == metrics and saved["steps"] == 0 and saved["skipped"] == 1
    assert (saved["recall_pairs"], saved["analyze_pairs"], saved["summarize_pairs"], saved["best_step"]) == (0, 0, 0, 0)
    assert (paths.metrics / "dpo_live" / "iter1" / "plots" / "metrics" / "eval" / "accuracy.tsv").exists()
    assert not (paths.checkpoints / "dpo" / "iter1").exists()


@pytest.mark.parametrize("improves", [True, False])
def test_stage_keeps_best_of_start_and_checkpoints(tmp_path, sft_model, monkeypatch, improves):
    import tinythinker.lm.chain as chain
    import tinythinker.lm.distributed as distributed

    # Validation accuracy scripted per call (start, eval 1, eval 2): a random tiny model scores 0 throughout.
    scores = iter([50.0, 60.0, 55.0] if improves else [50.0, 40.0, 50.0])
    monkeypatch.setattr(chain, "accuracy", lambda results: next(scores))  # the starting model
    monkeypatch.setattr(distributed, "chain_accuracy", lambda *a, **k: next(scores))  # the evaluations
    paths = repo(tmp_path, sft_model, RECALL, ANALYZE, SUMMARIZE)
    m = dpo_train(PARAMS, paths, "iter1")

    cycle = sum(schedule_intervals(3, 2, 2, 2).values())
    assert (m["steps"], m["recall_pairs"], m["analyze_pairs"], m["summarize_pairs"], m["start_valid_accuracy"]) == (
        2 * cycle, 3, 2, 2, 50.0)
    assert set(m) >= {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                      "logps/chosen", "logps/rejected"}
    assert read_json(paths.metrics / "dpo" / "iter1.json") == m
    out = paths.dpo_model("iter1")
    if improves:
        assert (m["valid_accuracy"], m["best_step"]) == (60.0, cycle)
        assert not same_files(paths.sft_model, out)
        assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {
            p.name for p in out.iterdir()}
    else:  # no step beat the starting model (a tie does not count): it is the output, unchanged
        assert (m["valid_accuracy"], m["best_step"]) == (50.0, 0)
        assert same_files(paths.sft_model, out)
    live = paths.metrics / "dpo_live" / "iter1" / "plots" / "metrics"
    steps = [line.split("\t")[0] for line in (live / "eval" / "accuracy.tsv").read_text().splitlines()[1:]]
    assert steps == ["0", str(cycle), str(2 * cycle)]
    assert (live / "rewards" / "margins.tsv").exists() and (live / "train" / "loss.tsv").exists()
    assert not (paths.checkpoints / "dpo" / "iter1").exists()
    assert_per_kind(curves(live), ("recall", "analyze", "summarize"), 2 * cycle)

def test_bad_pair_row_is_a_data_error(tmp_path, sft_model):
    from tinythinker.io import DataError

    paths = repo(tmp_path, sft_model, [{"qid": "q1", "prompt": "p", "chosen": "c"}], [])
    with pytest.raises(DataError, match=r"recall_pairs\.jsonl:1: missing field 'rejected'"):
        dpo_train(PARAMS, paths, "iter1")


def test_interrupted_run_resumes_to_the_same_model(tmp_path, sft_model, monkeypatch):
    from safetensors.torch import load_file

    import tinythinker.lm.chain as chain
    import tinythinker.lm.distributed as distributed

    cycle = sum(schedule_intervals(3, 2, 2).values())
    runs = {}
    for name, stops in (("straight", [None]), ("resumed", [cycle - 1, None])):
        scores = iter([0.0, 10.0, 20.0])  # rising: the last step is the output
        monkeypatch.setattr(chain, "accuracy", lambda results: next(scores))
        monkeypatch.setattr(distributed, "chain_accuracy", lambda *a, **k: next(scores))
        paths = repo(tmp_path / name, sft_model, RECALL, ANALYZE)
        for stop in stops:
            m = dpo_train(PARAMS, paths, "iter1", stop_after=stop)
            if stop:  # interrupted: a checkpoint to resume from, no outputs yet, the curves not in metrics/
                assert m == {"steps": stop} and not paths.dpo_model("iter1").exists()
                assert (paths.checkpoints / "dpo" / "iter1" / f"checkpoint-{stop}").exists()
                assert not paths.curves("dpo/iter1").exists()
        runs[name] = m, load_file(paths.dpo_model("iter1") / "model.safetensors")
        # the curves moved into metrics/ with the model, the resumed run's history replayed, no step twice
        tsv = paths.curves("dpo/iter1") / "plots" / "metrics" / "eval" / "accuracy.tsv"
        steps = [int(line.split("\t")[0]) for line in tsv.read_text().splitlines()[1:]]
        assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 2 * cycle
        assert not paths.curves_work("dpo/iter1").exists()
    (m1, w1), (m2, w2) = runs["straight"], runs["resumed"]
    assert m1["steps"] == m2["steps"] == 2 * cycle and m2["best_step"] == 2 * cycle
    assert m1 == pytest.approx(m2, rel=1e-5)
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)


# --- GPU-scale knobs ------------------------------------------------------------------------------------------
def test_tf32_and_precision_are_set_before_the_first_forward_pass(tmp_path, sft_model, monkeypatch):
    """TF32 is switched (off here) before the start validation and the reference log-probs (both inside the
    Trainer's pre-pass), which are computed in the training precision."""
    import tinythinker.reflect.dpo_seq2seq as dpo
    import tinythinker.lm.distributed as distributed
    import tinythinker.lm.training as training

    events = []
    monkeypatch.setattr(training, "set_tf32", lambda on: events.append(("tf32", on)))
    monkeypatch.setattr(distributed, "chain_accuracy",
                        lambda *a, **k: events.append(("valid", k.get("desc"))) or 40.0)
    real = dpo.reference_logps
    monkeypatch.setattr(dpo, "reference_logps",
                        lambda *a, **k: events.append(("reference", a[4])) or real(*a, **k))
    paths = repo(tmp_path, sft_model, RECALL, ANALYZE)
    dpo_train(PARAMS.replace(**{"dpo.tf32": False, "dpo.precision": "auto"}), paths, "iter1")
    # auto on a CPU: fp32
    assert events[:3] == [("tf32", False), ("valid", "valid (start)"), ("reference", "fp32")]


def test_accumulation_is_the_same_optimizer_step(sft_model, tmp_path):
    """batch 1 x 2 micro-batches = batch 2: the same optimizer steps over the same pairs, the same weights."""
    from tinythinker.lm.chain import Decoding

    recall = RECALL + [{**RECALL[0], "chosen": "Iron is a metal 9."}]  # 4 recall + 2 analyze pairs: no tails
    chain_kwargs = {"batch_size": 8, **dict.fromkeys(("recall", "analyze", "summarize"), Decoding(max_new_tokens=6))}
    weights, calls, losses = {}, {}, {}
    for name, batch, k in (("plain", 2, 1), ("accumulated", 1, 2)):
        params = PARAMS.replace(**{"dpo.batch_size": batch, "dpo.gradient_accumulation_steps": k,
                                   "dpo.loss_type": ["sigmoid"], "dpo.loss_weights": [1.0], "dpo.passes": 2})
        model, tok = load(sft_model)
        disable_dropout(model)
        feats = tokenize_pairs(recall + ANALYZE, tok, 64, 16)
        reference_logps(model, feats, 2, tok.pad_token_id)
        intervals = schedule_intervals(4, 2, batch * k)
        trainer = dpo_trainer(dpo_seq2seq, params, tmp_path / name, model, tok, feats, {"recall": 4, "analyze": 2},
                              intervals, VALID, chain_kwargs)
        seen = []
        original = trainer.compute_loss
        trainer.compute_loss = lambda m, inputs, **kw: (seen.append(len(inputs["labels"]) // 2)
                                                        or original(m, inputs, **kw))
        trainer.train()
        assert trainer.state.global_step == 2 * sum(intervals.values()) == 2 * (3 + 3)
        weights[name], calls[name] = {k_: v.detach().clone() for k_, v in trainer.model.state_dict().items()}, seen
        losses[name] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert calls["plain"] == [2] * 12 and calls["accumulated"] == [1] * 24  # pairs per forward pass
    assert losses["accumulated"] == pytest.approx(losses["plain"], rel=1e-4)  # the mean, not k x it
    a, b = weights["plain"], weights["accumulated"]
    assert all(torch.allclose(a[n], b[n], atol=1e-6, rtol=1e-4) for n in a)
