"""Phase 2's preference pairs from the student's own chains on the training questions (spec 6.2); the stage is
`stages.dpo_sample`.

(a) Recall pairs: the chain runs `dpo.samples` times per question with a sampled recall and greedy
analyze/summarize; a recall is chosen when its chain ends at the gold option, rejected otherwise.
(b) Analyze pairs: for every chosen recall the chain runs again with that recall fixed and sampled
analyses; chosen/rejected are whole analysis sets, and each pair yields two records (the gold option and
the option the rejected chain wrongly picked).
(c) Summarize pairs (`dpo.stage_type` with "summarize"; not the paper's): every distinct summarize prompt of (a)'s
chains, the student's own recall and analyses, is summarized `dpo.samples` times more, sampled; summaries that
land on the gold option are chosen, the others rejected. Both sides are the student's own: a prompt none of whose
summaries is right gives no pair (a teacher summary of the student's analyses does not exist).
All run each question `dpo.samples` times in one batched chain; a repeated prompt is encoded once, its samples drawn
as `num_return_sequences` and its greedy steps decoded once (`chain.generate`).

Fixes over the original: teacher top-up matched by qid rather than a substring of the question (9.22);
validity of a predicted option checked per row (9.20); analyze chosen sets topped up, not replaced
(9.19); an empty result writes empty files rather than crashing (9.21).
"""
from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping, Sequence

from .. import protocol as P
from ..io import read_jsonl
from ..params import Params, ParamsError
from ..paths import Paths
from ..protocol import CHAIN_FIELDS
from ..lm import distributed
from ..lm.chain import is_correct


def _unique(items: Sequence, key) -> list:
    """First occurrence of each key, in order (so the result does not depend on set iteration)."""
    seen, out = set(), []
    for it in items:
        k = key(it)
        if k not in seen:
            seen.add(k)
            out.append(it)
    return out


def _draw(pool: Sequence, k: int, rng: random.Random) -> list:
    """k items of pool: without replacement while it lasts, with replacement only beyond its size."""
    if k <= len(pool):
        return rng.sample(list(pool), k)
    return list(pool) + rng.choices(list(pool), k=k - len(pool))


def _repeat(items: list, k: int, rng: random.Random) -> list:
    """`items` and, when shorter than k, k - len(items) more drawn from them with replacement."""
    return items + rng.choices(items, k=k - len(items)) if len(items) < k else items


def recall_pairs(chains_by_qid: Mapping[str, Sequence[Mapping]], teacher_by_qid: Mapping[str, Sequence[Mapping]],
                 rng: random.Random, blocks: Mapping[str, str]) -> list[dict]:
    """Recall pairs from sampled chains, per question in the order of `chains_by_qid`.

    Each pair is ``{qid, prompt, chosen, rejected}`` plus ``analyses`` (the chosen chain's analyses, the
    analyze step's fallback) and ``teacher`` (whether the chosen side is a teacher chain).
    """
    out = []
    for qid, rows in chains_by_qid.items():
        chosen = _unique([r for r in rows if is_correct(r)], key=lambda r: r["recall"])
        rejected = _unique([r for r in rows if not is_correct(r)], key=lambda r: r["recall"])
        both = {r["recall"] for r in chosen} & {r["recall"] for r in rejected}
        chosen = [r for r in chosen if r["recall"] not in both]
        rejected = [r for r in rejected if r["recall"] not in both]
        if not rejected:
            continue
        chosen = [{"recall": r["recall"], "analyses": r["analyses"], "teacher": False} for r in chosen]
        if len(chosen) < len(rejected):
            wrong = {r["recall"] for r in rejected}
            pool = [{"recall": t["recall"], "analyses": t["analyses"], "teacher": True}
                    for t in teacher_by_qid.get(qid, ()) if t["recall"] not in wrong]
            # Without a teacher chain, the question's own correct chains are the only chosen material.
            pool = pool or chosen
            if not pool:
                continue
            chosen += _draw(pool, len(rejected) - len(chosen), rng)
        else:  # every distinct wrong recall is used once before any repeats
            rejected = _repeat(rejected, len(chosen), rng)
        prompt = P.recall_prompt(blocks[qid])
        out += [{"qid": qid, "prompt": prompt, "chosen": c["recall"], "rejected": r["recall"],
                 "analyses": c["analyses"], "teacher": c["teacher"]} for c, r in zip(chosen, rejected)]
    return out


def _analysis_key(analyses: Mapping[str, str]) -> tuple:
    return tuple(sorted(analyses.items()))


def analyze_pairs(groups: Sequence[Mapping], rng: random.Random) -> list[dict]:
    """Analyze pair records from chains run with a fixed chosen recall.

    Each group is ``{qid, block, options, gt, recall, chains, backup}``: `chains` are the sampled chain
    results for that (question, recall) and `backup` the analyses of the chosen recall's own chain(s),
    used when no sampled chain is correct. Returns ``{qid, prompt, chosen, rejected}`` records.
    """
    out = []
    for g in groups:
        gt, valid_letters = g["gt"], set(g["options"])

        def usable(r):  # per row: a real option letter that this row (and the gold option) has an analysis of
            a = r["analyses"] or {}
            return r["prediction"] in valid_letters and r["prediction"] in a and gt in a

        rows = [r for r in g["chains"] if usable(r)]
        chosen = _unique([r["analyses"] for r in rows if r["prediction"] == gt], key=_analysis_key)
        rejected = _unique([r for r in rows if r["prediction"] != gt], key=lambda r: _analysis_key(r["analyses"]))
        both = {_analysis_key(a) for a in chosen} & {_analysis_key(r["analyses"]) for r in rejected}
        chosen = [a for a in chosen if _analysis_key(a) not in both]
        rejected = [r for r in rejected if _analysis_key(r["analyses"]) not in both]
        if not rejected:
            continue
        if len(chosen) < len(rejected):
            # Topped up, not replaced (spec 9.19): keep every sampled correct set, then repeat them, or
            # fall back to the chosen recall's own analyses when no sampled chain was correct.
            pool = chosen or [a for a in g["backup"] if a and gt in a]
            if not pool:
                continue
            chosen = chosen + rng.choices(pool, k=len(rejected) - len(chosen))
        else:
            rejected = _repeat(rejected, len(chosen), rng)
        for c, r in zip(chosen, rejected):
            for letter in dict.fromkeys((gt, r["prediction"])):  # gt first; the wrong pick unless it is gt
                if letter not in c:  # a backup chain without this option: no record rather than a crash
                    continue
                if c[letter] == r["analyses"][letter]:  # identical texts teach nothing
                    continue
                out.append({"qid": g["qid"], "prompt": P.analyze_prompt(g["block"], letter, g["recall"]),
                            "chosen": c[letter], "rejected": r["analyses"][letter]})
    return out


def summarize_pairs(groups: Sequence[Mapping], rng: random.Random) -> list[dict]:
    """Summarize pair records from groups ``{qid, gt, prompt, summaries}`` (one summarize prompt each): chosen are
    the distinct summaries whose answer is the gold option, rejected the distinct others (no answer counts wrong);
    the shorter side is resampled to the longer, as for analyze pairs. Returns ``{qid, prompt, chosen, rejected}``."""
    out = []
    for g in groups:
        chosen = _unique([t for t in g["summaries"] if P.extract_answer(t) == g["gt"]], key=lambda t: t)
        rejected = _unique([t for t in g["summaries"] if P.extract_answer(t) != g["gt"]], key=lambda t: t)
        if not chosen or not rejected:
            continue
        chosen, rejected = _repeat(chosen, len(rejected), rng), _repeat(rejected, len(chosen), rng)
        out += [{"qid": g["qid"], "prompt": g["prompt"], "chosen": c, "rejected": r} for c, r in zip(chosen, rejected)]
    return out


def pair_kinds(stage_type: str) -> set[str]:
    """The pair kinds a `dpo.stage_type` trains: "recall_analyze" -> {"recall", "analyze"}."""
    return set(stage_type.split("_"))


def _decodings(params: Params):
    from ..lm.chain import Decoding

    d, n = params.dpo, params.generation.max_new_tokens
    sampled = Decoding(do_sample=True, temperature=d.temperature, top_k=d.top_k, top_p=d.top_p, max_new_tokens=n)
    return sampled, Decoding(max_new_tokens=n)


def iteration_seed(seed: int, iteration: str) -> int:
    """The sampling seed of one iteration, from (seed, iteration): each iteration draws new chains, even one
    whose predecessor kept its starting model, and rerunning an iteration draws the same ones."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{iteration}".encode()).digest()[:4], "big")


def iteration_init(params: Params, iteration: str) -> str:
    if iteration not in params.dpo.iterations:
        known = ", ".join(sorted(params.dpo.iterations)) or "none"
        raise ParamsError(f"dpo.iterations.{iteration}: no such iteration (known: {known})")
    return params.dpo.iterations[iteration].init


def teacher_chains(paths: Paths) -> dict[str, list[dict]]:
    """The accepted teacher chains by question (the chosen side's top-up)."""
    teacher: dict[str, list] = defaultdict(list)
    for row in read_jsonl(paths.sft_data / "chains.jsonl", CHAIN_FIELDS):
        teacher[row["qid"]].append(row)
    return teacher


@dataclass
class SampledPairs:
    """What one round of sampling gives: the pairs of each kind, the recall-sampling chains (their accuracy is the
    student's) and how many distinct chosen recalls were analysed. Recall pairs carry ``analyses`` and ``teacher``
    beyond the pair fields (recall_pairs)."""

    recall: list[dict]
    analyze: list[dict]
    summarize: list[dict]
    chains: list[dict]
    analyzed: int

    def of(self, kind: str) -> list[dict]:
        return getattr(self, kind)


def sample_pairs(params: Params, model, tokenizer, questions: list[dict], teacher: Mapping[str, Sequence[Mapping]],
                 rng: random.Random, desc: str = "dpo", share_prompts: bool = True) -> SampledPairs:
    """The student's chains on `questions` -> its pairs. Each process samples its share (`distributed.map_sharded`);
    `share_prompts=False` generates every repeated prompt on its own (bench/ measures against it)."""
    from ..lm.chain import run_chain

    sampled, greedy = _decodings(params)
    n, bs = params.dpo.samples, params.generation.batch_size
    # (a) one batched chain over all questions x samples; results come back in input order
    recall_runs = distributed.map_sharded(
        lambda share: run_chain(model, tokenizer, share, recall=sampled, analyze=greedy, summarize=greedy,
                                batch_size=bs, desc=f"{desc} recall samples", share_prompts=share_prompts),
        questions * n)
    by_qid: dict[str, list] = {q["qid"]: [] for q in questions}
    for r in recall_runs:
        by_qid[r["qid"]].append(r)
    rpairs = recall_pairs(by_qid, teacher, rng, {q["qid"]: q["block"] for q in questions})
    kinds = pair_kinds(params.dpo.stage_type)
    draw = {"model": model, "tokenizer": tokenizer, "n": n, "batch_size": bs, "sampled": sampled, "greedy": greedy,
            "desc": desc, "share_prompts": share_prompts}
    apairs, analyzed = _analyze_step(rpairs, questions, rng, **draw) if "analyze" in kinds else ([], 0)
    spairs = _summarize_step(recall_runs, rng, **draw) if "summarize" in kinds else []
    return SampledPairs(rpairs, apairs, spairs, recall_runs, analyzed)


def _analyze_step(rpairs: list[dict], questions: list[dict], rng: random.Random, *, model, tokenizer, n: int,
                  batch_size: int, sampled, greedy, desc: str, share_prompts: bool) -> tuple[list[dict], int]:
    """(b) every distinct chosen recall once (a resampled duplicate adds no new context), analyses sampled:
    (analyze pairs, the number of recalls analysed)."""
    from ..lm.chain import run_chain

    keys: dict[tuple, list] = {}
    for p in rpairs:
        keys.setdefault((p["qid"], p["chosen"]), []).append(p["analyses"])
    if not keys:
        return [], 0
    qmap = {q["qid"]: q for q in questions}
    key_list = list(keys)
    key_questions = [qmap[qid] for qid, _ in key_list]
    runs = distributed.map_sharded(
        lambda share: run_chain(model, tokenizer, [q for q, _ in share], recalls=[rc for _, rc in share],
                                recall=greedy, analyze=sampled, summarize=greedy, batch_size=batch_size,
                                desc=f"{desc} analyze samples", share_prompts=share_prompts),
        list(zip(key_questions * n, [rc for _, rc in key_list] * n)))
    groups = [{**qmap[qid], "recall": P.close_sentence(rc), "chains": runs[k::len(key_list)],
               "backup": keys[(qid, rc)]} for k, (qid, rc) in enumerate(key_list)]
    return analyze_pairs(groups, rng), len(keys)


def _summarize_step(recall_runs: list[dict], rng: random.Random, *, model, tokenizer, n: int, batch_size: int,
                    sampled, greedy, desc: str, share_prompts: bool) -> list[dict]:
    """(c) every distinct summarize prompt of (a) summarized n more times, sampled; its greedy summary counts too."""
    from ..lm.chain import generate

    first: dict = {}
    for r in recall_runs:
        first.setdefault(r["prompt"], r)
    prompts = list(first)
    texts = distributed.map_sharded(
        lambda share: generate(model, tokenizer, share, sampled, batch_size, f"{desc} summarize samples",
                               share_prompts=share_prompts), prompts * n)
    groups = [{"qid": first[p]["qid"], "gt": first[p]["gt"], "prompt": p,
               "summaries": [first[p]["summary"]] + texts[k::len(prompts)]} for k, p in enumerate(prompts)]
    return summarize_pairs(groups, rng)
