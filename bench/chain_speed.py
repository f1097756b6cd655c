"""Generation: the project's batched chain against the original's way and a per-question loop, and sampling that
encodes each repeated prompt once against generating every copy; same model, same questions, one run.

- The original's way (spec 5.5, 7): per step, `Seq2SeqTrainer.predict(predict_with_generate=True)` over all of the
  step's prompts in file order, batch 256, `DataCollatorForSeq2Seq` padding to the longest prompt of a batch, greedy
  up to `max_length` decoder tokens (the original's 200, and the project's token budget for a like-for-like row),
  the predictions padded to that length and decoded at the end of the step.
- The per-question loop: one `generate` call per sequence (recall, each option, summary).
- Ours: `tinythinker.lm.chain.run_chain`, each step one batched pass, prompts longest first, `max_new_tokens`.
- Sampling: DPO's chains (`pairs.sample_pairs`: `dpo.samples` recalls per question, then sampled analyses per
  chosen recall) and a sampled test run x4, each with every repeated prompt generated on its own (today's way
  before this change) and with each distinct prompt encoded once (`num_return_sequences`, greedy steps decoded once).
"""
from __future__ import annotations

import copy
import random
import statistics
import tempfile
import time


def per_question_loop(model, tokenizer, questions, max_new_tokens: int) -> int:
    """Greedy chain, one sequence per `generate` call; returns the number of sequences generated."""
    import torch

    from tinythinker import protocol as P

    def one(prompt: str) -> str:
        enc = tokenizer([prompt], return_tensors="pt").to(model.device)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        return tokenizer.decode(ids[0], skip_special_tokens=True).strip()

    n = 0
    with torch.inference_mode():
        for q in questions:
            recall = P.close_sentence(one(P.recall_prompt(q["block"])))
            analyses = {x: P.close_sentence(one(P.analyze_prompt(q["block"], x, recall))) for x in sorted(q["options"])}
            one(P.summarize_prompt(q["block"], recall, analyses))
            n += 2 + len(analyses)
    return n


def original_chain(model, tokenizer, questions, max_length: int, batch_size: int = 256) -> int:
    """The chain as the original generates it: one `Seq2SeqTrainer.predict` per step; returns the sequences made."""
    import numpy as np
    import torch
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    from tinythinker import protocol as P

    config = copy.deepcopy(model.generation_config)  # predict fills in defaults (max_length 20): put it back after
    model.generation_config.max_new_tokens = None  # a saved student's config may carry one; it would beat max_length
    with tempfile.TemporaryDirectory() as out:
        args = Seq2SeqTrainingArguments(
            output_dir=out, per_device_eval_batch_size=batch_size, predict_with_generate=True,
            generation_max_length=max_length, generation_num_beams=1, report_to="none", disable_tqdm=True,
            use_cpu=model.device.type == "cpu", dataloader_pin_memory=False)
        pad = DataCollatorForSeq2Seq(tokenizer, model=model)
        # transformers 5's collator returns labels=None for rows without labels, which makes predict run a loss
        # pass it cannot run; the original's release (4.37) left the key out
        trainer = Seq2SeqTrainer(model=model, args=args, processing_class=tokenizer,
                                 data_collator=lambda rows: {k: v for k, v in pad(rows).items() if v is not None})

        def predict(prompts: list[str]) -> list[str]:
            rows = [{"input_ids": ids} for ids in tokenizer(prompts)["input_ids"]]
            preds = trainer.predict(rows).predictions
            preds = np.where(preds != -100, preds, tokenizer.pad_token_id)
            return [P.close_sentence(t.strip()) for t in tokenizer.batch_decode(preds, skip_special_tokens=True)]

        with torch.inference_mode():
            recalls = predict([P.recall_prompt(q["block"]) for q in questions])
            pairs = [(i, x) for i, q in enumerate(questions) for x in sorted(q["options"])]
            texts = predict([P.analyze_prompt(questions[i]["block"], x, recalls[i]) for i, x in pairs])
            analyses = [{} for _ in questions]
            for (i, x), t in zip(pairs, texts):
                analyses[i][x] = t
            predict([P.summarize_prompt(q["block"], r, a) for q, r, a in zip(questions, recalls, analyses)])
    model.generation_config = config
    return len(recalls) + len(pairs) + len(questions)


def _sequences(results: list[dict]) -> int:
    """Sequences a chain generated: recall, one per option, summary (per question)."""
    return sum(2 + len(r["analyses"]) for r in results)


def _timer(model, default_repeats: int):
    import torch

    def timed(name: str, fn, repeats: int | None = None, **extra) -> dict:
        """Median of `repeats` runs (a batched run takes about a second, so one run is noisy)."""
        repeats = repeats or default_repeats
        times = []
        for _ in range(repeats):
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            n = fn()
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        dt = statistics.median(times)
        return {"variant": name, "sequences": n, "seconds": round(dt, 3), "seq_per_s": round(n / dt, 2), **extra}
    return timed


def csqa_questions(params, paths, source, n: int) -> list[dict]:
    """The first `n` official CSQA dev questions as chain inputs: prompts of the paper's lengths (74-209 tokens of
    the embedded vocabulary, against the synthetic task's nearly equal ones), for the rows where padding matters."""
    from pathlib import Path

    from tinythinker.data.download import load_official
    from tinythinker.teacher.build import question_row

    csqa = params.replace(**{"dataset.name": "csqa", "dataset.source": str(Path(source).resolve())})
    return [question_row(r) for r in load_official(csqa, paths)["dev"][:n]]


def run(params, paths, model, tokenizer, num_questions: int, batch_sizes=(16, 64, 256), repeats: int = 3,
        csqa: list[dict] | None = None, original_max_length: int = 200) -> list[dict]:
    from tinythinker.io import read_jsonl
    from tinythinker.lm.chain import Decoding, run_chain

    questions = read_jsonl(paths.sft_data / "test.jsonl")[:num_questions]
    max_new = params.generation.max_new_tokens
    greedy = Decoding(max_new_tokens=max_new)
    timed = _timer(model, repeats)

    def chain(batch_size: int, sort: bool, qs: list[dict] = questions):
        return lambda: _sequences(run_chain(model, tokenizer, qs, recall=greedy, analyze=greedy, summarize=greedy,
                                            batch_size=batch_size, sort_by_length=sort))

    run_chain(model, tokenizer, questions[:4], batch_size=4, recall=greedy, analyze=greedy, summarize=greedy)  # warm-up
    rows = [timed(f"original: Trainer.predict per step, max_length {original_max_length}", lambda: original_chain(
                model, tokenizer, questions, original_max_length), batch_size=256, baseline="original"),
            timed(f"original: Trainer.predict per step, max_length {max_new + 1} (our budget)", lambda: original_chain(
                model, tokenizer, questions, max_new + 1), batch_size=256),
            timed("per-question loop", lambda: per_question_loop(model, tokenizer, questions, max_new), repeats=1,
                  batch_size=1)]
    for b in batch_sizes:
        rows.append(timed(f"batched chain, batch {b}", chain(b, True), batch_size=b, sorted=True))
    for b in batch_sizes[:2]:
        rows.append(timed(f"batched chain, batch {b}, unsorted", chain(b, False), batch_size=b, sorted=False))
    same_budget, loop = rows[1]["seq_per_s"], rows[2]["seq_per_s"]
    for r in rows:
        r["vs_original"] = round(r["seq_per_s"] / same_budget, 2)
        r["vs_loop"] = round(r["seq_per_s"] / loop, 2)
    if csqa:
        pair = [timed(f"CSQA dev prompts x{len(csqa)}: original, max_length {max_new + 1}",
                      lambda: original_chain(model, tokenizer, csqa, max_new + 1), repeats=1, batch_size=256),
                timed(f"CSQA dev prompts x{len(csqa)}: batched chain, batch 256", chain(256, True, csqa), repeats=1,
                      batch_size=256, sorted=True)]
        for r in pair:
            r["vs_original"] = round(r["seq_per_s"] / pair[0]["seq_per_s"], 2)
        rows += pair
    return rows


def sampling(params, paths, model, tokenizer, num_questions: int, test_runs: int = 4, repeats: int = 3) -> list[dict]:
    """DPO sampling (both parts, `dpo.samples` per question) and a sampled test run x `test_runs`, each repeated
    prompt generated on its own vs encoded once."""
    import torch

    from tinythinker.io import read_jsonl
    from tinythinker.reflect.pairs import sample_pairs, teacher_chains
    from tinythinker.lm.chain import run_chain
    from tinythinker.student.stages import decodings

    train = read_jsonl(paths.sft_data / "train_questions.jsonl")[:num_questions]
    test = read_jsonl(paths.sft_data / "test.jsonl")[:num_questions]
    teacher = teacher_chains(paths)
    sampled, greedy = decodings(params.replace(**{"generation.strategy": "sample"}).generation)
    timed = _timer(model, repeats)
    stats: dict = {}

    def dpo(share: bool):
        def fn():
            torch.manual_seed(0)
            got = sample_pairs(params, model, tokenizer, train, teacher, random.Random(0), share_prompts=share)
            stats[share] = {"recall_pairs": len(got.recall), "analyze_pairs": len(got.analyze)}
            k = len(train[0]["options"])
            return len(got.chains) * (2 + k) + got.analyzed * params.dpo.samples * (1 + k)
        return fn

    def test_sample(share: bool):
        def fn():
            torch.manual_seed(0)
            return _sequences(run_chain(model, tokenizer, test * test_runs, recall=sampled, analyze=sampled,
                                        summarize=greedy, batch_size=params.generation.batch_size,
                                        share_prompts=share))
        return fn

    rows = []
    for name, make, extra in ((f"DPO sampling, {params.dpo.samples} per question", dpo, True),
                              (f"sampled test x{test_runs}", test_sample, False)):
        pair = [timed(f"{name}, every copy generated", make(False), job=name),
                timed(f"{name}, each prompt encoded once", make(True), job=name)]
        if extra:
            for r, share in zip(pair, (False, True)):
                r |= stats[share]
        pair[1]["vs_every_copy"] = round(pair[1]["seq_per_s"] / pair[0]["seq_per_s"], 2)
        rows += pair
    return rows
