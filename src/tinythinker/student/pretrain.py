"""Pretraining: the embedded student learns its world before it learns the task (docs/embedded-task.md); the
stage is `stages.pretrain`.

The paper distils into a pretrained T5, which holds the facts the recall and analyze steps bring out; an embedded
student built from random weights holds none. So it is first trained on data/corpus with its family's pretraining
objective (seq2seq: T5 span corruption; causal: next-token prediction) on the stock `Trainer`, for
`student.pretrain.steps`, and `sft` starts from models/pretrained. `steps: 0` saves the freshly initialised
student (from scratch). A Hub or local student is pretrained already: the stage records which one and `sft` loads
it as before. The probe (data/corpus/probe.jsonl: each fact's wording cut before its category) measures, before
and after, the share of facts the student completes right, the held-out things' apart.
"""
from __future__ import annotations

from ..lm.chain import Decoding, generate

SOURCE = "pretrained.json"  # what models/pretrained holds for a Hub or local student: which model sft loads


def _first_word(text: str) -> str:
    """The completion's first word, past an article (a masked span may take the "a" before the category with it)."""
    words = [w.strip(".,:;") for w in text.split()]
    while words and words[0] in ("a", "an", "the"):
        words.pop(0)
    return words[0] if words else ""


def probe(model, tokenizer, rows: list[dict], kind, batch_size: int) -> dict:
    """Share (%) of probe rows whose greedy completion starts with the answer: all, and the held-out things'."""
    if not rows:
        return {}
    outs = generate(model, tokenizer, [kind.probe_prompt(r["prompt"]) for r in rows],
                    Decoding(max_new_tokens=24), batch_size)  # room to restate the sentence
    # a denoising target restates the sentence (sentence_targets): past the probe's own words comes its completion
    right = [_first_word(o.removeprefix(r["prompt"])) == r["answer"] for o, r in zip(outs, rows)]
    held = [ok for ok, r in zip(right, rows) if r["held_out"]]
    score = lambda xs: round(100.0 * sum(xs) / len(xs), 2) if xs else None  # noqa: E731
    return {"probe_accuracy": score(right), "probe_held_out_accuracy": score(held)}
