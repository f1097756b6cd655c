"""The recall -> analyze -> summarize chain (spec 5.5, 6.2, 7), batched: validation, DPO sampling and test.

Each step is one batched pass over all questions (analyze: over all (question, option) pairs), so a
question's step k+1 prompt is built from its own step-k output. Prompts come only from `protocol`.
Option letters come from each question's own `options` (fixes spec 9.12). One implementation for both student
families: the family (`family.family_of`) says how a batch of prompts is padded (left for a decoder-only model, so
every prompt ends where generation starts) and which output tokens are new (a decoder-only model returns the prompt
too).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

from .. import protocol as P


@dataclass(frozen=True)
class Decoding:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k filter (the original's sampling setting)
    top_p: float = 1.0
    max_new_tokens: int = 200
    # None: the dynamic KV cache. "static": a preallocated one, and on a GPU transformers compiles the decode step
    # (bench/gpu_check.py measures both; opt-in, off on a CPU where it cannot be compiled)
    cache_implementation: Optional[str] = None


GREEDY = Decoding()


def validation_chain(params) -> dict:
    """`run_chain` kwargs of validation (sft, dpo-train): the student's own chain, greedy, as the test runs it."""
    greedy = Decoding(max_new_tokens=params.generation.max_new_tokens)
    return {"stage_type": params.sft.stage_type, "batch_size": params.generation.batch_size,
            "recall": greedy, "analyze": greedy, "summarize": greedy}


def _generation_kwargs(d: Decoding) -> dict:
    kw = {"max_new_tokens": d.max_new_tokens, "num_beams": 1, "do_sample": d.do_sample}
    if d.cache_implementation:
        kw["cache_implementation"] = d.cache_implementation
    if d.do_sample:  # only sampling reads these; passing them with greedy only triggers warnings
        kw |= {"temperature": d.temperature, "top_k": d.top_k, "top_p": d.top_p}
    return kw


def _batches(prompts: list[str], decoding: Decoding, batch_size: int, sort_by_length: bool,
             share: bool) -> list[tuple[list[list[int]], int]]:
    """The `generate` calls: per call, the rows (each row: the indices of `prompts` it answers) and the sequences
    drawn per row.

    With `share`, greedy decoding generates each distinct prompt once and copies the text (the copies would be
    identical). Sampling draws the k copies of a prompt as `num_return_sequences=k`, k independent samples of the
    same distribution, when every distinct prompt has the same k (DPO's steps: each question or each
    (question, recall) `dpo.samples` times; a sampled test's recall step); otherwise every copy is its own row, since
    splitting the calls by k would make more, smaller batches, which costs more than it saves on a GPU. Longest first.
    """
    where: dict = {}
    for i, p in enumerate(prompts):
        where.setdefault(p if share else i, []).append(i)
    rows = list(where.values())
    k = len(rows[0]) if decoding.do_sample else 1
    if decoding.do_sample and any(len(r) != k for r in rows):
        rows, k = [[i] for i in range(len(prompts))], 1
    if sort_by_length:
        rows.sort(key=lambda r: -len(prompts[r[0]]))
    per = max(1, batch_size // k)  # about batch_size sequences per call whatever k is
    return [(rows[s:s + per], k) for s in range(0, len(rows), per)]


def generate(model, tokenizer, prompts: list[str], decoding: Decoding, batch_size: int,
             desc: Optional[str] = None, sort_by_length: bool = True, share_prompts: bool = True) -> list[str]:
    """Decoded, stripped outputs in the order of `prompts`.

    Prompts are batched longest first so each batch pads to similar lengths (and an out-of-memory shows up
    in the first batch, not the last); `sort_by_length=False` keeps the given order. Repeated prompts (DPO
    sampling runs each question `dpo.samples` times) are encoded once where that pays (see `_batches`);
    `share_prompts=False` generates every copy on its own, the way bench/ measures against.
    """
    import torch
    from tqdm.auto import tqdm

    from .family import family_of

    if not prompts:
        return []
    out: list[str] = [""] * len(prompts)
    kind = family_of(model.config)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for rows, k in tqdm(_batches(prompts, decoding, batch_size, sort_by_length, share_prompts), desc=desc,
                                disable=desc is None, leave=False):
                enc = tokenizer([prompts[idx[0]] for idx in rows], return_tensors="pt", padding=True, **kind.ENCODE)
                enc = enc.to(model.device)
                ids = model.generate(**enc, **_generation_kwargs(decoding), num_return_sequences=k)
                texts = tokenizer.batch_decode(kind.new_tokens(ids, enc), skip_special_tokens=True)
                for r, idx in enumerate(rows):  # the k samples of row r are texts[r*k : (r+1)*k]
                    for j, i in enumerate(idx):
                        out[i] = texts[r * k + j % k].strip()  # greedy (k = 1): the one text to every copy
    finally:
        model.train(was_training)
    return out


def run_chain(model, tokenizer, questions: list[dict], *, stage_type: str = "recall_analyze_summarize",
              recall: Decoding = GREEDY, analyze: Decoding = GREEDY, summarize: Decoding = GREEDY,
              batch_size: int = 256, recalls: Optional[list[str]] = None, desc: Optional[str] = None,
              sort_by_length: bool = True, share_prompts: bool = True) -> list[dict]:
    """Run the steps of `protocol.STAGES[stage_type]` on questions ``{qid, block, options, gt}``.

    `recalls` replaces the recall step with given texts (DPO analyze-pair sampling). A question may occur several
    times (DPO sampling): its repeated prompts are encoded once (`generate`). Returns per question
    ``{qid, gt, recall, analyses, summary, prediction, prompt}``; recall/analyses are None where the stage
    type skips them, prompt is the summarize input.
    """
    steps = P.STAGES[stage_type]
    label = (lambda step: f"{desc} {step}") if desc else (lambda step: None)
    blocks = [q["block"] for q in questions]

    recall_texts: list[Optional[str]] = [None] * len(questions)
    if "recall" in steps:
        if recalls is None:
            recalls = generate(model, tokenizer, [P.recall_prompt(b) for b in blocks], recall, batch_size,
                               label("recall"), sort_by_length, share_prompts)
        assert len(recalls) == len(questions), "one recall per question"
        recall_texts = [P.close_sentence(r) for r in recalls]

    analyses: list[Optional[dict[str, str]]] = [None] * len(questions)
    if "analyze" in steps:
        pairs = [(i, x) for i, q in enumerate(questions) for x in sorted(q["options"])]
        texts = generate(model, tokenizer, [P.analyze_prompt(blocks[i], x, recall_texts[i]) for i, x in pairs],
                         analyze, batch_size, label("analyze"), sort_by_length, share_prompts)
        analyses = [{} for _ in questions]
        for (i, x), text in zip(pairs, texts):
            analyses[i][x] = P.close_sentence(text)

    prompts = [P.summarize_prompt(b, r, a) for b, r, a in zip(blocks, recall_texts, analyses)]
    summaries = generate(model, tokenizer, prompts, summarize, batch_size, label("summarize"), sort_by_length,
                         share_prompts)
    return [{"qid": q["qid"], "gt": q["gt"], "recall": r, "analyses": a, "summary": s,
             "prediction": P.extract_answer(s), "prompt": p}
            for q, r, a, s, p in zip(questions, recall_texts, analyses, summaries, prompts)]


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 of two texts (lower-cased words, punctuation dropped): 1 for the same words in any order."""
    import re

    def words(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())

    p, r = words(prediction), words(reference)
    common = sum((Counter(p) & Counter(r)).values())
    if not p or not r:
        return float(p == r)
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def step_scores(model, tokenizer, rows: dict[str, list[dict]], mapper=None, *, batch_size: int,
                decoding: Decoding = GREEDY) -> dict[str, float]:
    """Each step of the chain alone on the teacher's input (stage rows `{input, target}` by stage): where the chain
    fails when the steps before it are right. recall and analyze: token F1 (%) of the output against the teacher's;
    summarize: the share (%) whose answer is the teacher's. `mapper(fn, items)` spreads the generation over
    processes (distributed.map_sharded); by default one process generates all."""
    mapper = mapper or (lambda fn, items: fn(items))
    out = {}
    for stage, data in rows.items():
        texts = mapper(lambda part: generate(model, tokenizer, [r["input"] for r in part], decoding, batch_size),
                       data)
        if stage == "summarize":
            hits = [is_correct({"prediction": P.extract_answer(t), "gt": P.extract_answer(r["target"])})
                    for t, r in zip(texts, data)]
            out["summarize_accuracy"] = 100.0 * sum(hits) / max(1, len(hits))
        else:
            f1 = [token_f1(t, r["target"]) for t, r in zip(texts, data)]
            out[f"{stage}_f1"] = 100.0 * sum(f1) / max(1, len(f1))
    return out


def is_correct(result: dict) -> bool:
    """The chain reached the gold option (no answer found is wrong)."""
    return result["prediction"] is not None and result["prediction"] == result["gt"]


def accuracy(results: list[dict]) -> float:
    """Percent of results that are correct."""
    if not results:
        return 0.0
    return 100.0 * sum(map(is_correct, results)) / len(results)


def majority_vote(runs: list[list[dict]]) -> list[Optional[str]]:
    """Per question (runs share question order): the most common prediction; ties go to the first seen.

    None (no answer found) is not a vote unless every run has None (fixes spec 9.24).
    """
    votes = []
    for preds in zip(*([r["prediction"] for r in run] for run in runs)):
        counts = Counter(p for p in preds if p is not None)  # Counter keeps first-seen order among ties
        votes.append(counts.most_common(1)[0][0] if counts else None)
    return votes
