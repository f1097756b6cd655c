"""The paper's configurations (spec 2, 5, 6, 10), one per dataset x student, as params.yaml overrides."""
from __future__ import annotations

import io
from pathlib import Path

from .io import read_text, write_text
from .params import ParamsError, Params, from_dict, load

STUDENTS = {"t5-small": "google-t5/t5-small", "t5-base": "google-t5/t5-base", "t5-large": "google-t5/t5-large"}
# Teacher samples per question and re-ask rounds (spec 2.5, 3.1).
TEACHER = {"csqa": (8, 3), "obqa": (4, 3), "strategyqa": (4, 2)}


def preset(dataset: str, student: str) -> dict:
    """Dotted-key overrides that turn the embedded default into the paper's setting."""
    if dataset not in TEACHER:
        raise ParamsError(f"preset: unknown dataset {dataset!r} (known: {', '.join(TEACHER)})")
    if student not in STUDENTS:
        raise ParamsError(f"preset: unknown student {student!r} (known: {', '.join(STUDENTS)})")
    samples, rounds = TEACHER[dataset]
    return {
        "dataset.name": dataset, "dataset.source": None,
        "teacher.backend": "openai", "teacher.model": "gpt-4o-2024-05-13", "teacher.samples": samples,
        "teacher.rounds": rounds, "teacher.temperature": 0.8, "teacher.max_tokens": 256,
        "student.model": STUDENTS[student],
        "sft.stage_type": "recall_analyze_summarize", "sft.batch_size": 64, "sft.learning_rate": 5e-4,
        "sft.epochs": 10.0, "sft.interval": 100, "sft.warmup_ratio": 0.1, "sft.weight_decay": 0.0,
        "generation.strategy": "greedy", "generation.times": 1, "generation.max_new_tokens": 200,
        "generation.batch_size": 256,
        "dpo.stage_type": "recall_analyze", "dpo.samples": 10, "dpo.temperature": 0.7, "dpo.top_k": 0,
        "dpo.beta": 0.5, "dpo.loss_type": ["sigmoid", "sft"], "dpo.loss_weights": [1.0, 0.5],
        "dpo.learning_rate": 5e-6, "dpo.batch_size": 32, "dpo.passes": 10,
        "dpo.iterations": {f"iter{k}": {"init": "models/sft" if k == 1 else f"models/dpo/iter{k - 1}"}
                           for k in range(1, 6)},
    }


def resolve(base: Params, dataset: str, student: str) -> Params:
    return base.replace(**preset(dataset, student))


def apply(params_file: Path, dataset: str, student: str) -> Params:
    """Write the preset into params.yaml, keeping every other key, its comments and layout (ruamel.yaml's
    round trip, as `dvc exp run -S` edits it); the new text is validated before it atomically replaces the file."""
    from ruamel.yaml import YAML

    resolved = resolve(load(params_file), dataset, student)
    yaml = YAML()
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = yaml.load(read_text(params_file, ParamsError, "params file"))
    for dotted, value in preset(dataset, student).items():
        *parents, leaf = dotted.split(".")
        node = doc
        for part in parents:
            node = node[part]
        if node[leaf] == value:
            continue  # untouched lines keep their exact spelling
        if isinstance(node[leaf], list) and isinstance(value, list):
            node[leaf][:] = value  # in place: a flow-style list stays one
        else:
            node[leaf] = value
    out = io.StringIO()
    yaml.dump(doc, out)
    if from_dict(YAML(typ="safe").load(out.getvalue())) != resolved:
        raise ParamsError(f"{params_file}: the preset did not round-trip; file left unchanged")  # a bug here
    write_text(params_file, out.getvalue())
    return resolved
