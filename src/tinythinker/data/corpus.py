"""Stage `corpus`: the embedded student's pretraining text (data/corpus/text.jsonl) and the probe that measures what
it learned from it (data/corpus/probe.jsonl).

The paper's student is a T5 pretrained on C4: it already holds the world knowledge the recall and analyze steps
bring out. For the synthetic task the corpus is that world: every fact of it in plain sentences (`synthetic.corpus`),
the held-out things included, and the probe asks each fact back. For a real dataset it is the training questions and
their options, without answers (in-domain text, no labels), and there is no probe.
"""
from __future__ import annotations

from ..io import DataError, atomic_path, read_jsonl, write_jsonl
from ..params import Params
from ..paths import Paths
from ..protocol import question_block


def texts(params: Params, paths: Paths) -> tuple[list[str], list[dict]]:
    """(sentences, probe rows) of `dataset.name`."""
    if params.dataset.name == "synthetic":
        from .synthetic import corpus
        return corpus(params.dataset.synthetic, params.dataset.seed)
    rows = read_jsonl(paths.split("train"), {"question": str, "choices": list})
    return [question_block(r["question"], r["choices"]) for r in rows], []


def corpus(params: Params, paths: Paths) -> dict:
    text, probe = texts(params, paths)
    if not text:
        raise DataError(f"{paths.split('train')}: no training questions to make a pretraining corpus of")
    with atomic_path(paths.corpus) as tmp:
        tmp.mkdir()
        write_jsonl(tmp / "text.jsonl", ({"text": t} for t in text))
        write_jsonl(tmp / "probe.jsonl", probe)
    return {"sentences": len(text), "probes": len(probe)}
