"""The paper's configurations (spec 2, 5, 6, 10), one per dataset x student, as params.yaml overrides."""
from __future__ import annotations

from pathlib import Path

import yaml

from .io import read_yaml
from .params import ParamsError, Params, from_dict, load, to_dict

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
    """Write the preset into params.yaml (validated first), keeping every key the preset does not set."""
    resolved = resolve(load(params_file), dataset, student)
    raw = read_yaml(params_file, ParamsError, "params file")
    merged = to_dict(resolved)
    raw.update({k: merged[k] for k in merged})
    from_dict(raw)
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    return resolved
