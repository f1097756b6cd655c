"""One declarative description per dataset (tasks/<name>.yaml), in the spirit of lm-evaluation-harness."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Optional

import yaml

from .params import DATASETS, ParamsError

TASK_DIR = Path(__file__).with_name("tasks")
FORMATS = ("jsonl_nested", "json_boolean", "generated")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    hub: Optional[dict[str, Any]]  # {id, config, splits: {ours: hub split}, fields: {ours: hub field}}
    files: dict[str, str]  # official split name -> file name of the official release
    format: str
    num_options: Optional[int]
    split: dict[str, Any]  # how train/valid/test come from the official splits
    teacher: dict[str, int]  # task defaults: samples per question, re-ask rounds
    exemplars: str  # shipped few-shot file under tinythinker/exemplars/

    def __post_init__(self):
        where = TASK_DIR / f"{self.name}.yaml"
        if self.format not in FORMATS:
            raise ParamsError(f"{where}: format: must be one of {FORMATS}, got {self.format!r}")
        if self.hub is not None and not {"id", "splits", "fields"} <= set(self.hub):
            raise ParamsError(f"{where}: hub: needs id, splits and fields")


@cache
def get_task(name: str) -> TaskSpec:
    if name not in DATASETS:
        raise ParamsError(f"dataset.name: unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    path = TASK_DIR / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    try:
        return TaskSpec(**raw)
    except TypeError as e:
        raise ParamsError(f"{path}: {e}") from None
