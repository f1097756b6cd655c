"""Stage `download`: the official splits of `dataset.name`, as normalised question records in data/raw/.

    {"id": str, "question": str, "choices": [{"label": "A", "text": str}, ...], "answer": "A"}

(+ "meta" for the synthetic task). Sources, chosen by `dataset.source`: null = the Hugging Face Hub (the
task file's hub id), a path = a local copy of the official release (a directory holding the task's
official files, or the file itself for a single-file task), and the generator for the synthetic task.
Texts are kept exactly as the source has them. Every record is checked; a bad one raises DataError
naming the file and line (or Hub split and row).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from ..io import DataError, atomic_path, iter_jsonl, read_text, write_jsonl
from ..params import Params, ParamsError
from ..paths import Paths
from .tasks import Fields, TaskSpec, get_task

RECORD = Fields(id="id", question="question", answer="answer", choices="choices")  # the normalised layout
Located = Iterable[tuple[str, Any]]  # (where, source row); `where` is what an error message names


def _get(row: Any, dotted: str, where: str) -> Any:
    node = row
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise DataError(f"{where}: missing field {dotted!r}")
        node = node[part]
    return node


def _choices(raw: Any, where: str) -> list[dict]:
    # The Hub stores a list of {label, text} structs column-wise: {"label": [...], "text": [...]}.
    if isinstance(raw, dict) and isinstance(raw.get("label"), list) and isinstance(raw.get("text"), list):
        if len(raw["label"]) != len(raw["text"]):
            raise DataError(f"{where}: choices have {len(raw['label'])} labels but {len(raw['text'])} texts")
        raw = [{"label": lab, "text": txt} for lab, txt in zip(raw["label"], raw["text"])]
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{where}: choices must be a non-empty list")
    out = []
    for i, c in enumerate(raw):
        label, text = _get(c, "label", f"{where}: choice {i + 1}"), _get(c, "text", f"{where}: choice {i + 1}")
        if not (isinstance(label, str) and re.fullmatch(r"[A-Z]", label)):
            raise DataError(f"{where}: choice label {label!r} is not a capital letter A-Z")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: choice {label} text must be a non-empty string, got {text!r}")
        out.append({"label": label, "text": text})
    labels = [c["label"] for c in out]
    if len(set(labels)) != len(labels):
        raise DataError(f"{where}: repeated choice labels {labels}")
    return out


def normalise(row: Any, fields: Fields, where: str, num_options: Optional[int],
              boolean_options: Optional[tuple[str, ...]] = None) -> dict:
    """One checked question record from a source row (texts untouched); `num_options` None: any number."""
    qid = _get(row, fields.id, where)
    if isinstance(qid, bool) or not isinstance(qid, (str, int)) or str(qid) == "":
        raise DataError(f"{where}: id must be a non-empty string, got {qid!r}")
    question = _get(row, fields.question, where)
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: question must be a non-empty string, got {question!r}")
    answer = _get(row, fields.answer, where)
    if boolean_options is not None:
        if not isinstance(answer, bool):
            raise DataError(f"{where}: answer must be true or false, got {answer!r}")
        choices = [{"label": "A", "text": boolean_options[0]}, {"label": "B", "text": boolean_options[1]}]
        answer = "A" if answer else "B"
    else:
        choices = _choices(_get(row, fields.choices, where), where)
    labels = [c["label"] for c in choices]
    if answer not in labels:
        raise DataError(f"{where}: answer {answer!r} is not among the choice labels {labels}")
    if num_options is not None and len(choices) != num_options:
        raise DataError(f"{where}: expected {num_options} choices, got {len(choices)}")
    rec = {"id": str(qid), "question": question, "choices": choices, "answer": answer}
    if isinstance(row, dict) and "meta" in row:
        rec["meta"] = row["meta"]
    return rec


def collect(located: dict[str, Located], fields: Fields, num_options: Optional[int],
            boolean_options: Optional[tuple[str, ...]] = None) -> dict[str, list[dict]]:
    """Normalise every row of every split; ids must be unique across all splits."""
    seen: dict[str, str] = {}
    out = {}
    for split, rows in located.items():
        out[split] = []
        for where, row in rows:
            rec = normalise(row, fields, where, num_options, boolean_options)
            if rec["id"] in seen:
                raise DataError(f"{where}: duplicate id {rec['id']!r} (first at {seen[rec['id']]})")
            seen[rec["id"]] = where
            out[split].append(rec)
    return out


# --- sources --------------------------------------------------------------------------------------------
def jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    for lineno, obj in iter_jsonl(path):
        yield f"{path}:{lineno}", obj


def _json_array_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Elements of a JSON array file, each with the line it starts on (StrategyQA's official format)."""
    text = read_text(path)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not isinstance(items, list):
        raise DataError(f"{path}:1: expected a JSON array of questions")
    # The text is valid JSON, so walking it element by element only serves to find each start line.
    decoder, gap = json.JSONDecoder(), re.compile(r"[\s,]*")
    pos, line = gap.match(text, text.index("[") + 1).end(), 1
    line += text.count("\n", 0, pos)
    for _ in items:
        obj, end = decoder.raw_decode(text, pos)
        yield f"{path}:{line}", obj
        nxt = gap.match(text, end).end()
        line += text.count("\n", pos, nxt)
        pos = nxt


def _local(task: TaskSpec, source: Path) -> dict[str, Located]:
    files = task.local.files
    if source.is_dir():
        paths = {split: source / name for split, name in files.items()}
        for split, path in paths.items():
            if not path.is_file():
                raise DataError(f"{path}: no such file (the official {task.name} {split} file; "
                                f"dataset.source should hold {', '.join(files.values())})")
    elif source.is_file():
        if len(files) != 1:
            raise DataError(f"{source}: {task.name} has several official files ({', '.join(files.values())}); "
                            "dataset.source must be the directory that holds them")
        paths = {next(iter(files)): source}
    else:
        raise DataError(f"{source}: dataset.source: no such file or directory")
    read = jsonl_rows if task.local.format == "jsonl" else _json_array_rows
    return {split: read(path) for split, path in paths.items()}


def _hub(task: TaskSpec) -> dict[str, Located]:
    from datasets import load_dataset  # heavy, and only this source needs it

    hub = task.hub
    ds = load_dataset(hub.path, hub.config, revision=hub.revision)
    missing = [s for splits in hub.splits.values() for s in splits if s not in ds]
    if missing:
        raise DataError(f"{hub.path}: no split(s) {', '.join(missing)} on the Hub (has {', '.join(ds)})")
    return {split: [(f"{hub.path}[{s}] row {i + 1}", row) for s in hub_splits for i, row in enumerate(ds[s])]
            for split, hub_splits in hub.splits.items()}


def load_official(params: Params, paths: Paths) -> dict[str, list[dict]]:
    """Official split name -> checked question records, from the generator, a local copy or the Hub."""
    task = get_task(params.dataset.name)
    n_opts, source = task.num_options_for(params), params.dataset.source
    if task.generated:
        if source is not None:
            raise ParamsError(f"dataset.source: must be null for the generated task {task.name!r}")
        from .synthetic import generate

        splits = generate(params.dataset.synthetic, seed=params.dataset.seed)
        located = {s: [(f"{task.name}[{s}] #{i + 1}", r) for i, r in enumerate(splits[s])]
                   for s in task.official_splits}
        return collect(located, RECORD, n_opts)
    if source is None:
        if task.hub is None:
            raise ParamsError(f"dataset.source: {task.name} has no Hub source; point it at the official files")
        return collect(_hub(task), task.hub.fields, n_opts, task.boolean_options)
    if task.local is None:
        raise ParamsError(f"dataset.source: {task.name} has no local file layout; set it to null (Hub)")
    path = Path(source).expanduser()
    path = path if path.is_absolute() else paths.root / path
    return collect(_local(task, path), task.local.fields, n_opts, task.boolean_options)


def download(params: Params, paths: Paths) -> None:
    splits = load_official(params, paths)
    # The whole directory is replaced at once, so no split of a previously downloaded dataset lingers.
    with atomic_path(paths.raw) as tmp:
        tmp.mkdir()
        for split, rows in splits.items():
            write_jsonl(tmp / f"{split}.jsonl", rows)
    counts = ", ".join(f"{s} {len(r)}" for s, r in splits.items())
    print(f"{params.dataset.name}: {counts} -> {paths.raw}", file=sys.stderr)
