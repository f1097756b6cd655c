"""Decoder-only students: tokenisation (prompt masked, EOS closes the completion), the chain with left padding,
phase 1 on TRL's SFTTrainer with the curriculum sampler, phase 2 on TRL's DPOTrainer, LoRA."""
from pathlib import Path

import pytest
import torch

from tests.helpers import (BASE, ANALYZE, BLOCK, RECALL, SUMMARIZE, VALID, assert_per_kind, curves,  # noqa: F401
                           dpo_trainer, questions, student_stages)

from tinythinker import protocol as P
from tinythinker.params import load
from tinythinker.paths import Paths
from tinythinker.lm import causal
from tinythinker.lm.chain import Decoding, generate, run_chain
from tinythinker.lm.curriculum import CurriculumBatchSampler, sft_intervals
from tinythinker.lm.model import family, load_student

# Its module fixture builds what every test here reads: one xdist worker runs them all (`--dist loadgroup`).
pytestmark = [pytest.mark.xdist_group("causal"), pytest.mark.usefixtures("one_thread")]

PARAMS = BASE.replace(**{
    "student.model": "embedded-causal",
    "student.embedded.vocab_size": 200, "student.embedded.d_model": 32, "student.embedded.d_ff": 64,
    "student.embedded.d_kv": 8, "student.embedded.num_heads": 4, "student.embedded.num_layers": 1,
    "student.embedded.num_decoder_layers": 1,
    "sft.batch_size": 8, "sft.learning_rate": 1e-2, "sft.epochs": 1.0, "sft.interval": 1, "sft.eval_every": 40,
    "sft.group_by_length": False, "generation.max_new_tokens": 24, "generation.batch_size": 64,
    "student.pretrain.steps": 0})
ST = "recall_analyze_summarize"


def _sft_trainer(params, paths, tmp_path):
    """The stage's SFT trainer on the causal family, as `stages.sft` builds it, with its sampler."""
    from tinythinker.io import read_jsonl
    from tinythinker.student.stages import stage_data
    from tinythinker.lm.training import sft_trainer, trainer_kwargs

    kind = family(params)
    args = kind.sft_arguments(params, output_dir=str(tmp_path / "ckpt"), per_device_train_batch_size=8,
                              learning_rate=1e-2, num_train_epochs=1.0, eval_strategy="steps", eval_steps=100,
                              save_strategy="no", remove_unused_columns=False, use_cpu=True, seed=params.seed,
                              **trainer_kwargs(params, paths, "sft", "sft"))
    model, tokenizer = load_student(params, paths)
    stages = stage_data(params, paths)
    rows, _ = kind.sft_data(params, stages, tokenizer)
    sampler = CurriculumBatchSampler({s: len(r) for s, r in stages.items()}, sft_intervals(ST, 1, 3), 8, params.seed)
    valid = read_jsonl(paths.sft_data / "valid.jsonl")
    trainer = sft_trainer(kind, params, model, tokenizer, rows, valid, args=args, batch_sampler=sampler,
                          chain_kwargs={"batch_size": 64})
    return trainer, sampler, tokenizer, stages


# --- tokenisation --------------------------------------------------------------------------------------------------
def test_embedded_causal_tokenizer_closes_completions_only(paths):
    tok = load_student(PARAMS, paths)[1]
    assert family(PARAMS) is causal and (tok.pad_token_id, tok.eos_token_id) == (0, 1)
    prompt = P.recall_prompt(questions(1)[0]["block"])
    ids = tok(prompt).input_ids
    assert tok.eos_token_id not in ids and tok.pad_token_id not in ids  # no </s> after a prompt (T5 appends one)
    full = tok(prompt + P.completion("A color is a kind of thing.") + tok.eos_token).input_ids
    assert full[:len(ids)] == ids and full[-1] == tok.eos_token_id  # the prompt's tokens are the sequence's head
    assert tok.decode(full[len(ids):], skip_special_tokens=True) == "A color is a kind of thing."


def test_sft_batch_masks_the_prompt_and_ends_with_eos(paths, tmp_path):
    trainer, sampler, tok, stages = _sft_trainer(PARAMS, paths, tmp_path)
    flat = [r for rows in stages.values() for r in rows]
    batch, idx = next(iter(trainer.get_train_dataloader())), next(iter(sampler))
    for row, ids, labels, mask in zip(idx, batch["input_ids"].tolist(), batch["labels"].tolist(),
                                      batch["attention_mask"].tolist()):
        n = sum(mask)
        prompt = tok(flat[row]["input"]).input_ids
        target = tok(P.completion(flat[row]["target"])).input_ids + [tok.eos_token_id]
        assert ids[:n] == prompt + target  # one sequence: prompt, completion, EOS (padding on the right)
        assert labels[:len(prompt)] == [-100] * len(prompt)  # no loss on the prompt
        assert labels[len(prompt):n] == target and labels[n:] == [-100] * (len(labels) - n)


def test_sft_batches_follow_the_curriculum(paths, tmp_path):
    """TRL's SFTTrainer draws the project's curriculum: blocks R(1) A(3) S(1), cycling, each batch of one stage."""
    trainer, sampler, tok, stages = _sft_trainer(PARAMS, paths, tmp_path)

    def stage_of(prompt: str) -> str:
        return {"Recall:": "recall", "Summarize:": "summarize"}.get(prompt.split()[-1], "analyze")

    seen = []
    for batch in trainer.get_train_dataloader():
        kinds = {stage_of(tok.decode([t for t, l, m in zip(ids, labels, mask) if l == -100 and m],
                                     skip_special_tokens=True))
                 for ids, labels, mask in zip(batch["input_ids"].tolist(), batch["labels"].tolist(),
                                              batch["attention_mask"].tolist())}
        assert len(kinds) == 1
        seen.append(kinds.pop())
    assert seen == [stage for stage, _ in sampler.batches()]
    # 12 recall, 36 analyze, 12 summarize rows in batches of 8: 2, 5, 2 batches
    assert seen == ["recall", "analyze", "analyze", "analyze", "summarize",
                    "recall", "analyze", "analyze", "summarize"]


# --- the chain ------------------------------------------------------------------------------------------------------
def test_chain_left_pads_strips_the_prompt_and_is_batch_invariant(paths):
    model, tok = load_student(PARAMS, paths)
    prompts = [P.recall_prompt(q["block"]) for q in questions(3)] + ["Which one", "a"]
    d = Decoding(max_new_tokens=8)
    masks = []
    real = model.generate
    model.generate = lambda **kw: masks.append(kw["attention_mask"]) or real(**kw)
    one = [generate(model, tok, [p], d, batch_size=1)[0] for p in prompts]
    batched = generate(model, tok, prompts, d, batch_size=5)
    assert batched == one  # greedy: the same outputs batched or one by one
    assert masks[-1][:, -1].all() and not masks[-1][:, 0].all()  # padding on the left, prompts end together
    for p, out in zip(prompts, one):  # only the new tokens come back
        enc = tok(p, return_tensors="pt")
        ids = real(**enc, max_new_tokens=8, do_sample=False)[0, enc["input_ids"].shape[1]:]
        assert out == tok.decode(ids, skip_special_tokens=True).strip()
    res = run_chain(model, tok, questions(2), recall=d, analyze=d, summarize=d, batch_size=4)
    assert [set(r["analyses"]) for r in res] == [{"A", "B", "C"}] * 2


# --- phase 1, the stage ------------------------------------------------------------------------------------------
def test_sft_stage_learns_and_saves_a_causal_checkpoint(paths):
    from transformers import LlamaForCausalLM

    from tinythinker.io import read_json
    from tinythinker.student.stages import sft

    params = PARAMS.replace(**{"sft.epochs": 30.0, "sft.eval_every": 90})
    d = Decoding(max_new_tokens=24)

    def chain_accuracy(model_dir=None):
        from tinythinker.lm.chain import accuracy
        model, tok = load_student(params, paths, model_dir)
        return accuracy(run_chain(model, tok, questions(12), recall=d, analyze=d, summarize=d))

    before = chain_accuracy()
    m = sft(params, paths)
    assert m["train_steps"] == 270 and read_json(paths.metric("sft"))["valid_accuracy"] == m["valid_accuracy"]
    model, tok = load_student(params, paths, paths.sft_model)
    assert isinstance(model, LlamaForCausalLM) and family(params, paths.sft_model) is causal
    after = chain_accuracy(paths.sft_model)
    assert before < 50 and after >= 50 and after == m["valid_accuracy"]
    live = paths.metrics / "sft_live" / "plots" / "metrics"
    assert (live / "train" / "loss.tsv").exists() and (live / "eval" / "accuracy.tsv").exists()


def test_sft_on_trl_scores_held_out_questions(paths):
    """TRL's SFTTrainer prepares the held-out teacher rows itself; every validation adds their loss per stage (falling
    as it learns) and each step alone on them."""
    from tinythinker.student.stages import sft

    params = PARAMS.replace(**{"sft.epochs": 10.0, "sft.eval_every": 20, "sft.eval_questions": 3})
    assert sft(params, paths)["eval_questions"] == 3
    curve = curves(paths.curves("sft"))
    evals = sorted(curve["eval/accuracy"])
    for name in ("loss", "recall_loss", "analyze_loss", "summarize_loss", "recall_f1", "analyze_f1",
                 "summarize_accuracy"):
        assert sorted(curve[f"eval/{name}"]) == evals[-len(curve[f"eval/{name}"]):] and len(curve[f"eval/{name}"]) >= 3
    losses = [curve["eval/loss"][s] for s in sorted(curve["eval/loss"])]
    assert losses[-1] < 0.75 * losses[0], losses  # 2.42 -> 1.31 here
    assert {f"train/{s}_loss" for s in ("recall", "analyze", "summarize")} <= set(curve)


# --- phase 2 -------------------------------------------------------------------------------------------------------
DPO = PARAMS.replace(**{"generation.max_new_tokens": 6, "generation.batch_size": 8, "dpo.batch_size": 2,
                        "dpo.passes": 4, "dpo.learning_rate": 3e-3, "dpo.warmup_ratio": 0.0,
                        "dpo.iterations": {"iter1": {"init": "models/sft"}}})


@pytest.fixture(scope="module")
def causal_sft(tmp_path_factory):
    """A tiny causal model and its tokenizer saved like models/sft."""
    from tinythinker.lm.model import build_initial, train_tokenizer

    root = tmp_path_factory.mktemp("causal")
    texts = [t for r in RECALL + ANALYZE for t in r.values()] + [P.summarize_target(x) for x in "AB"]
    train_tokenizer(iter(texts * 3), 90, causal).save_pretrained(Paths(root).tokenizer)
    model, tok = build_initial(DPO, Paths(root))
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root / "model"


def seq_logps(model, tok, rows):
    """Sum of the log-probs of each row's completion tokens (and EOS) after its prompt, one row at a time."""
    out = []
    with torch.no_grad():
        for prompt, response in rows:
            p = tok(prompt).input_ids
            ids = p + tok(P.completion(response)).input_ids + [tok.eos_token_id]
            logp = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
            out.append(logp[len(p) - 1:].gather(1, torch.tensor(ids[len(p):])[:, None]).sum().item())
    return out


def test_trl_dpo_step_raises_the_margin_over_a_precomputed_reference(causal_sft, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tinythinker.reflect import dpo_causal
    from tinythinker.protocol import REWARD_KEYS
    from tinythinker.reflect.schedule import schedule_intervals

    model, tok = AutoModelForCausalLM.from_pretrained(causal_sft), AutoTokenizer.from_pretrained(causal_sft)
    pairs = {"recall": RECALL, "analyze": ANALYZE}
    chosen = seq_logps(model.eval(), tok, [(r["prompt"], r["chosen"]) for r in RECALL + ANALYZE])
    rejected = seq_logps(model, tok, [(r["prompt"], r["rejected"]) for r in RECALL + ANALYZE])
    intervals = schedule_intervals(3, 2, 2)
    short = Decoding(max_new_tokens=6)
    trainer = dpo_trainer(dpo_causal, DPO, tmp_path, model, tok, dpo_causal.train_data(DPO, model, tok, pairs),
                          {"recall": 3, "analyze": 2}, intervals, VALID,
                          {"batch_size": 8, **dict.fromkeys(("recall", "analyze", "summarize"), short)})
    # the reference is the starting model, scored once, before any step, recall pairs then analyze pairs
    data = trainer.train_dataset
    assert data["ref_chosen_logps"] == pytest.approx(chosen, abs=1e-4)
    assert data["ref_rejected_logps"] == pytest.approx(rejected, abs=1e-4)
    assert data["prompt"] == [r["prompt"] for r in RECALL + ANALYZE]
    args = trainer.args
    assert (args.loss_type, args.loss_weights, args.beta) == (["sigmoid", "sft"], [1.0, 0.5], 0.5)
    trainer.train()
    assert trainer.state.global_step == 4 * sum(intervals.values())
    model = trainer.model.eval()
    margins = [(c - r) - (c0 - r0) for c, r, c0, r0 in zip(
        seq_logps(model, tok, [(r["prompt"], r["chosen"]) for r in RECALL + ANALYZE]),
        seq_logps(model, tok, [(r["prompt"], r["rejected"]) for r in RECALL + ANALYZE]), chosen, rejected)]
    assert sum(margins) / len(margins) > 1.0 and all(m > 0 for m in margins)
    logged = [e for e in trainer.state.log_history if "rewards/margins" in e]
    assert logged and set(REWARD_KEYS) <= set(logged[-1]) and logged[-1]["rewards/accuracies"] > 0.5


def test_dpo_train_stage_on_trl_reports_the_t5_metric_names(tmp_path, causal_sft, monkeypatch):
    import shutil

    import tinythinker.lm.distributed as distributed
    from tinythinker.io import read_json, write_jsonl
    from tinythinker.protocol import REWARD_KEYS
    from tinythinker.reflect.stages import dpo_train
    from tinythinker.reflect.schedule import schedule_intervals

    scores = iter([50.0, 60.0, 55.0, 58.0, 52.0])  # start, then one per cycle: the first cycle is best
    monkeypatch.setattr(distributed, "chain_accuracy", lambda *a, **k: next(scores))
    paths = Paths(tmp_path)
    shutil.copytree(causal_sft, paths.sft_model)
    write_jsonl(paths.sft_data / "valid.jsonl", VALID)
    write_jsonl(paths.dpo_data("iter1") / "recall_pairs.jsonl", RECALL)
    write_jsonl(paths.dpo_data("iter1") / "analyze_pairs.jsonl", ANALYZE)
    write_jsonl(paths.dpo_data("iter1") / "summarize_pairs.jsonl", SUMMARIZE)
    m = dpo_train(DPO, paths, "iter1")
    cycle = sum(schedule_intervals(3, 2, 2, 2).values())
    assert (m["steps"], m["best_step"], m["valid_accuracy"]) == (4 * cycle, cycle, 60.0)
    assert m["start_valid_accuracy"] == 50.0
    assert set(m) >= set(REWARD_KEYS) and read_json(paths.metric("dpo/iter1")) == m
    model, _ = load_student(DPO, paths, paths.dpo_model("iter1"))
    assert family(DPO, paths.dpo_model("iter1")) is causal
    live = paths.metrics / "dpo_live" / "iter1" / "plots" / "metrics"
    assert (live / "rewards" / "margins.tsv").exists() and (live / "eval" / "accuracy.tsv").exists()
    assert not (paths.checkpoints / "dpo" / "iter1").exists()
    assert_per_kind(curves(live), ("recall", "analyze", "summarize"), 4 * cycle)


# --- LoRA -----------------------------------------------------------------------------------------------------------
def test_lora_adapters_are_folded_into_a_plain_checkpoint(paths):
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    from tinythinker.student.stages import sft

    params = PARAMS.replace(**{"student.lora.rank": 4, "sft.eval_every": 9})
    start, _ = load_student(params, paths)
    sft(params, paths)
    saved = load_file(paths.sft_model / "model.safetensors")
    assert not any("lora" in k for k in saved)  # a plain model: the next stage needs no peft
    initial = start.state_dict()
    assert torch.equal(saved["model.embed_tokens.weight"], initial["model.embed_tokens.weight"])  # frozen base
    assert not torch.equal(saved["model.layers.0.self_attn.q_proj.weight"],
                           initial["model.layers.0.self_attn.q_proj.weight"])  # adapters folded in


def test_lora_on_a_t5_student_is_a_params_error():
    from tinythinker.params import ParamsError

    with pytest.raises(ParamsError, match=r"^student.lora.rank: LoRA is for decoder-only students"):
        family(BASE.replace(**{"student.lora.rank": 8}))


def test_a_local_decoder_only_checkpoint_as_the_student(paths, tmp_path):
    """student.model naming a directory of a decoder-only model: the family comes from its config, the tokenizer
    stage saves its tokenizer with a pad token (the EOS, for a tokenizer that has none) and training starts there."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    model, tok = load_student(PARAMS, paths)
    tok.pad_token = None  # as Llama 3's tokenizer ships
    (tmp_path / "llama").mkdir()
    model.save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    params = PARAMS.replace(**{"student.model": str(tmp_path / "llama")})
    assert family(params) is causal
    student_stages(params, paths)
    saved = AutoTokenizer.from_pretrained(paths.tokenizer)
    assert saved.pad_token == saved.eos_token == "</s>"
    loaded, _ = load_student(params, paths)
    assert isinstance(loaded, LlamaForCausalLM) and torch.equal(loaded.lm_head.weight, model.lm_head.weight)
