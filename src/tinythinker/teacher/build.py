"""Stage `build`: teacher completions -> the stage datasets of every SFT stage type (spec 3.2-3.6, 4).

Per question: parse every completion (spec 3.3), take the majority of the declared answers (spec 3.2
step 5; it replaces the dataset label when `teacher.override_label`, spec 9 item 4), keep the candidates
consistent with the label and complete (one verdict per option). Every consistent candidate is kept (the
original's Levenshtein selection never removed any, spec 3.4); exact duplicates are dropped per file (3.6).
Strings come only from `tinythinker.protocol`, and the question block only from structured choices.
"""
from __future__ import annotations

from collections import Counter

from .. import protocol as P
from ..data.prepare import read_split
from ..io import DataError, atomic_path, clear_leftovers, iter_jsonl, write_json, write_jsonl
from ..params import Params
from ..paths import Paths
from ..protocol import COMPLETION_FIELDS
from .parse import (INCOMPLETE, INCONSISTENT, LENGTH, MALFORMED, NO_ANSWER, NO_KEY_INFO, analyses, filter_answer,
                    is_complete, majority)

# Exact-duplicate keys per stage file (spec 3.6 and 4); None keeps every row (as the original did).
DEDUP = {
    ("recall_analyze_summarize", "recall"): ("input", "target"),
    ("recall_analyze_summarize", "analyze"): ("input", "target"),
    ("recall_analyze_summarize", "summarize"): ("input", "target"),
    ("recall_summarize", "recall"): ("input", "target"),
    ("recall_summarize", "summarize"): ("input",),
    ("analyze_summarize", "analyze"): ("input", "target"),
    ("analyze_summarize", "summarize"): None,
    ("summarize", "summarize"): ("input",),
}


def question_row(record: dict, gt: str | None = None) -> dict:
    return {"qid": record["id"], "block": P.question_block(record["question"], record["choices"]),
            "options": [c["label"] for c in record["choices"]], "gt": gt or record["answer"]}


def teacher_chains(completions: list[dict], train: dict[str, dict], override_label: bool,
                   stats: Counter) -> tuple[list[dict], dict[str, str]]:
    """Accepted chains ``{qid, block, gt, recall, analyses, order}`` and the label used per question."""
    chains, labels = [], {}
    for row in completions:
        record = train.get(row["id"])
        if record is None:
            raise DataError(f"data/teacher/completions.jsonl: question {row['id']} is not in data/prepared/train.jsonl; "
                            "rerun the prompt and request stages")
        options = [c["label"] for c in record["choices"]]
        reasons: Counter = Counter()
        _, _, cands = filter_answer(row["completions"], len(options), reasons)
        gt = record["answer"]
        vote = majority([c["answer"] for c in cands])
        if vote is not None and vote != gt:
            stats["label_disagreements"] += 1
            if override_label:
                stats["label_overrides"] += 1
                gt = vote
        labels[record["id"]] = gt
        consistent = [c for c in cands if c["answer"] == gt]
        reasons[INCONSISTENT] += len(cands) - len(consistent)
        accepted = [c for c in consistent if is_complete(c, options)]
        reasons[INCOMPLETE] += len(consistent) - len(accepted)
        stats.update({f"rejected_{k}": v for k, v in reasons.items()})
        block = P.question_block(record["question"], record["choices"])
        chains += [{"qid": record["id"], "block": block, "gt": gt, "recall": c["general_knowledge"],
                    "analyses": analyses(c), "order": [p[0] for p in c["prefixes"]]} for c in accepted]
    return chains, labels


def stage_rows(chains: list[dict], summarize_order: str = "alphabetical") -> dict[str, dict[str, list[dict]]]:
    """Rows of every stage file of every stage type, before deduplication (spec 3.6; ablations spec 4)."""
    out = {st: {s: [] for s in stages} for st, stages in P.STAGES.items()}
    for c in chains:
        q, b, gk, an = c["qid"], c["block"], c["recall"], c["analyses"]
        order = c["order"] if summarize_order == "teacher" else None
        target = P.summarize_target(c["gt"])
        recall = {"qid": q, "input": P.recall_prompt(b), "target": gk}
        full = out["recall_analyze_summarize"]
        full["recall"].append(recall)
        full["analyze"] += [{"qid": q, "input": P.analyze_prompt(b, x, gk), "target": an[x], "option": x} for x in an]
        full["summarize"].append({"qid": q, "input": P.summarize_prompt(b, gk, an, order), "target": target})
        out["recall_summarize"]["recall"].append(dict(recall))
        out["recall_summarize"]["summarize"].append({"qid": q, "input": P.summarize_prompt(b, gk), "target": target})
        out["analyze_summarize"]["analyze"] += [
            {"qid": q, "input": P.analyze_prompt(b, x), "target": an[x], "option": x} for x in an]
        out["analyze_summarize"]["summarize"].append(
            {"qid": q, "input": P.summarize_prompt(b, analyses=an, order=order), "target": target})
        out["summarize"]["summarize"].append({"qid": q, "input": P.summarize_prompt(b), "target": target})
    return out


def dedup(rows: list[dict], key: tuple[str, ...] | None) -> list[dict]:
    """Keep the first row of each key."""
    if key is None:
        return rows
    seen, out = set(), []
    for r in rows:
        k = tuple(r[f] for f in key)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def read_completions(path) -> list[dict]:
    """completions.jsonl, each question once, each completion an object with its text (errors name the line)."""
    rows, seen = [], {}
    for lineno, row in iter_jsonl(path, COMPLETION_FIELDS):
        if row["id"] in seen:
            raise DataError(f"{path}:{lineno}: duplicate id {row['id']!r} (first at line {seen[row['id']]})")
        if not all(isinstance(c, dict) and isinstance(c.get("content"), str) for c in row["completions"]):
            raise DataError(f"{path}:{lineno}: every completion must be an object with a string 'content'")
        seen[row["id"]] = lineno
        rows.append(row)
    return rows


def build(params: Params, paths: Paths) -> dict:
    clear_leftovers(paths.sft_data)  # a killed or failed earlier build's temporaries go, whatever this one does
    stats: Counter = Counter()
    train = {r["id"]: r for r in read_split(paths, "train")}
    held_out = {split: read_split(paths, split) for split in ("valid", "test")}
    completions = read_completions(paths.completions)
    chains, labels = teacher_chains(completions, train, params.teacher.override_label, stats)
    metrics = {"questions": len(completions), "accepted_chains": len(chains)}
    first: dict[str, dict] = {}
    for c in chains:
        first.setdefault(c["qid"], c)
    # data/sft is built in a temporary directory and renamed into place whole: a killed build leaves the
    # previous data/sft (or none), never a mix of old and new files.
    with atomic_path(paths.sft_data) as tmp:
        def write(path, rows) -> int:
            return write_jsonl(tmp / path.relative_to(paths.sft_data), rows)

        tmp.mkdir()
        for stage_type, files in stage_rows(chains, params.teacher.summarize_order).items():
            for stage, rows in files.items():
                kept = dedup(rows, DEDUP[stage_type, stage])
                name = f"{stage_type}/{stage}"
                metrics[f"duplicates_removed/{name}"] = len(rows) - len(kept)
                metrics[f"rows/{name}"] = write(paths.stage_file(stage_type, stage), kept)
        metrics["rows/recall_single"] = write(
            paths.sft_data / "recall_single.jsonl",
            ({"qid": q, "input": P.recall_prompt(c["block"]), "target": c["recall"]} for q, c in first.items()))
        metrics["rows/chains"] = write(paths.sft_data / "chains.jsonl",
                                       ({k: v for k, v in c.items() if k != "order"} for c in chains))
        metrics["rows/train_questions"] = write(paths.sft_data / "train_questions.jsonl",
                                                (question_row(train[q], labels[q]) for q in first))
        for split, records in held_out.items():  # dataset labels, never overridden
            metrics[f"rows/{split}"] = write(paths.sft_data / f"{split}.jsonl", (question_row(r) for r in records))
    metrics["questions_with_chain"] = len(first)
    metrics["questions_without_chain"] = len(completions) - len(first)
    metrics.update(sorted(stats.items()))
    for k in ("label_disagreements", "label_overrides",
              *(f"rejected_{r}" for r in (LENGTH, NO_KEY_INFO, MALFORMED, NO_ANSWER, INCONSISTENT, INCOMPLETE))):
        metrics.setdefault(k, 0)
    write_json(paths.metric("build"), metrics)
    return metrics
