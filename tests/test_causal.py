"""Decoder-only students: tokenisation (prompt masked, EOS closes the completion), the chain with left padding,
phase 1 on TRL's SFTTrainer with the curriculum sampler, phase 2 on TRL's DPOTrainer, LoRA."""
from pathlib import Path

import pytest
import torch

from tinythinker import causal, protocol as P
from tinythinker.chain import Decoding, generate, run_chain
from tinythinker.curriculum import CurriculumBatchSampler, sft_intervals
from tinythinker.params import load
from tinythinker.paths import Paths
from tinythinker.student import family, load_student, tokenizer_stage

from test_sft import questions, write_task

BASE = load(Path(__file__).resolve().parents[1] / "params.yaml")  # params.yaml holds every value
PARAMS = BASE.replace(**{
    "student.model": "embedded-causal",
    "student.embedded.vocab_size": 200, "student.embedded.d_model": 32, "student.embedded.d_ff": 64,
    "student.embedded.d_kv": 8, "student.embedded.num_heads": 4, "student.embedded.num_layers": 1,
    "student.embedded.num_decoder_layers": 1,
    "sft.batch_size": 8, "sft.learning_rate": 1e-2, "sft.epochs": 1.0, "sft.interval": 1, "sft.eval_every": 40,
    "sft.group_by_length": False, "generation.max_new_tokens": 24, "generation.batch_size": 64})
ST = "recall_analyze_summarize"


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def paths(tmp_path):
    p = Paths(tmp_path)
    write_task(p, questions(12))
    tokenizer_stage(PARAMS, p)
    return p


def _sft_trainer(params, paths, tmp_path):
    """The stage's SFT trainer on the causal family, as `sft.sft` builds it, with its sampler."""
    from tinythinker.io import read_jsonl
    from tinythinker.sft import _stage_data
    from tinythinker.training import trainer_kwargs

    kind = family(params)
    args = kind.sft_arguments(params, output_dir=str(tmp_path / "ckpt"), per_device_train_batch_size=8,
                              learning_rate=1e-2, num_train_epochs=1.0, eval_strategy="steps", eval_steps=100,
                              save_strategy="no", remove_unused_columns=False, use_cpu=True, seed=params.seed,
                              **trainer_kwargs(params, paths, "sft", "sft"))
    model, tokenizer = load_student(params, paths)
    stages = _stage_data(params, paths)
    rows, _ = kind.sft_data(params, stages, tokenizer)
    sampler = CurriculumBatchSampler({s: len(r) for s, r in stages.items()}, sft_intervals(ST, 1, 3), 8, params.seed)
    valid = read_jsonl(paths.sft_data / "valid.jsonl")
    trainer = kind.sft_trainer(params, model, tokenizer, rows, valid, args=args, batch_sampler=sampler,
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
