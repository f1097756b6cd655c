"""Generation chain: the project's batched chain vs a per-question loop, same model, same questions.

The loop is what a straightforward implementation does: for each question one `generate` call for the
recall, one per option, one for the summary. The batched chain runs each step over all questions at once
(`tinythinker.chain.run_chain`); variants show the effect of batch size and of length sorting.
"""
from __future__ import annotations

import statistics
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


def run(params, paths, model, tokenizer, num_questions: int, batch_sizes=(16, 64, 256)) -> list[dict]:
    import torch
    from tinythinker.chain import Decoding, run_chain
    from tinythinker.io import read_jsonl

    questions = read_jsonl(paths.sft_data / "test.jsonl")[:num_questions]
    max_new = params.generation.max_new_tokens
    greedy = Decoding(max_new_tokens=max_new)
    model.eval()

    def timed(name: str, fn, repeats: int = 3, **extra) -> dict:
        """Median of `repeats` runs (the batched ones take about a second, so one run is noisy)."""
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

    def chain(batch_size: int, sort: bool):
        def fn():
            out = run_chain(model, tokenizer, questions, recall=greedy, analyze=greedy, summarize=greedy,
                            batch_size=batch_size, sort_by_length=sort)
            return sum(2 + len(r["analyses"]) for r in out)
        return fn

    run_chain(model, tokenizer, questions[:4], batch_size=4, recall=greedy, analyze=greedy, summarize=greedy)  # warm-up
    rows = [timed("per-question loop", lambda: per_question_loop(model, tokenizer, questions, max_new), repeats=1,
                  batch_size=1)]
    for b in batch_sizes:
        rows.append(timed(f"batched chain, batch {b}", chain(b, True), batch_size=b, sorted=True))
    for b in batch_sizes[:2]:
        rows.append(timed(f"batched chain, batch {b}, unsorted", chain(b, False), batch_size=b, sorted=False))
    base = rows[0]["seq_per_s"]
    for r in rows:
        r["vs_loop"] = round(r["seq_per_s"] / base, 2)
    return rows
