"""Stage `download`: the official splits of `dataset.name`, normalised to question records in data/raw/.

Record: {"id", "question", "choices": [{"label", "text"}], "answer"} (+ "meta" for the synthetic task).
Sources: the Hugging Face Hub (dataset.source = null), a local copy of the official files, or the generator.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from .io import DataError, iter_jsonl, read_json, write_jsonl
from .params import Params
from .paths import Paths
from .tasks import TaskSpec, get_task

YES_NO = [{"label": "A", "text": "yes"}, {"label": "B", "text": "no"}]


def _field(obj: dict, key: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{where}: missing field {key!r}")
    return obj[key]


def _record(qid, question, choices, answer, where: str) -> dict:
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: empty question")
    if not choices:
        raise DataError(f"{where}: no choices")
    labels = [c["label"] for c in choices]
    if len(set(labels)) != len(labels):
        raise DataError(f"{where}: repeated choice labels {labels}")
    if answer not in labels:
        raise DataError(f"{where}: answer {answer!r} is not among the choice labels {labels}")
    return {"id": str(qid), "question": question, "choices": choices, "answer": answer}


def _official(task: TaskSpec, split: str, path: Path) -> Iterator[dict]:
    if task.format == "jsonl_nested":
        for lineno, obj in iter_jsonl(path):
            where = f"{path}:{lineno}"
            q = _field(obj, "question", where)
            choices = [{"label": _field(c, "label", where), "text": _field(c, "text", where)}
                       for c in _field(q, "choices", where)]
            yield _record(_field(obj, "id", where), _field(q, "stem", where), choices,
                          _field(obj, "answerKey", where), where)
    elif task.format == "json_boolean":
        items = read_json(path)
        if not isinstance(items, list):
            raise DataError(f"{path}: expected a JSON array of questions")
        for i, obj in enumerate(items):
            where = f"{path}: item {i}"
            answer = _field(obj, "answer", where)
            if not isinstance(answer, bool):
                raise DataError(f"{where}: answer must be true/false, got {answer!r}")
            yield _record(_field(obj, "qid", where), _field(obj, "question", where), YES_NO,
                          "A" if answer else "B", where)


def _hub(task: TaskSpec, split: str) -> Iterator[dict]:
    from datasets import load_dataset  # heavy; only for the Hub path

    hub, f = task.hub, task.hub["fields"]
    rows = load_dataset(hub["id"], hub.get("config"), split=hub["splits"][split])
    for i, row in enumerate(rows):
        where = f"{hub['id']}[{hub['splits'][split]}] row {i}"
        if task.format == "json_boolean":
            yield _record(row[f["id"]], row[f["question"]], YES_NO, "A" if row[f["answer"]] else "B", where)
        else:
            ch = row[f["choices"]]
            choices = [{"label": l, "text": t} for l, t in zip(ch["label"], ch["text"])]
            yield _record(row[f["id"]], row[f["question"]], choices, row[f["answer"]], where)


def _unique(rows: Iterable[dict], where: str) -> list[dict]:
    seen, out = set(), []
    for i, r in enumerate(rows):
        if r["id"] in seen:
            raise DataError(f"{where}: duplicate id {r['id']!r} (record {i + 1})")
        seen.add(r["id"])
        out.append(r)
    return out


def load_official(params: Params) -> dict[str, list[dict]]:
    """Official split name -> normalised records, from the generator, a local copy or the Hub."""
    task = get_task(params.dataset.name)
    if task.format == "generated":
        from .synthetic import generate
        return generate(params.dataset.synthetic, seed=params.dataset.seed)
    src = params.dataset.source
    if src is None:
        return {s: _unique(_hub(task, s), f"{task.hub['id']}[{s}]") for s in task.hub["splits"]}
    src = Path(src)
    out = {}
    for split, name in task.files.items():
        path = src / name if src.is_dir() else src
        if not path.exists():
            raise DataError(f"dataset.source: {path} not found (expected the official {name})")
        out[split] = _unique(_official(task, split, path), str(path))
    return out


def download(params: Params, paths: Paths) -> None:
    splits = load_official(params)
    for split, rows in splits.items():
        write_jsonl(paths.raw / f"{split}.jsonl", rows)
    print(json.dumps({s: len(r) for s, r in splits.items()}))
