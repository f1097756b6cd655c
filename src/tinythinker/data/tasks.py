"""Declarative dataset descriptions, one `tasks/<name>.yaml` per dataset (in the spirit of lm-eval-harness).

A task file says where the dataset comes from (a Hugging Face Hub id, the file names of the official
release, or the embedded generator), where each field of a question record sits in a source row, how
train/valid/test are cut from the official splits, and the task's defaults for the teacher stage.
Loading validates every key; an error names the file and the key (``csqa.yaml: split.method: ...``).
Adding a dataset means adding a YAML file (and its name to `params.DATASETS`), not code.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal, Optional

from ..io import read_yaml
from ..params import Params, ParamsError, _build, _check

TASK_DIR = Path(__file__).with_name("tasks")
GENERATED_SPLITS = ("train", "valid", "test")


class TaskError(ParamsError):
    """A task file that cannot be used, or an unknown task name; the message names the file and key."""


@dataclass(frozen=True)
class Fields:
    """Where each question-record field sits in a source row; a dotted path walks nested objects."""
    id: str
    question: str
    answer: str
    # A list of {label, text} objects or a {label: [..], text: [..]} mapping (the Hub's columnar form);
    # None for boolean tasks, whose options are the task's `boolean_options`.
    choices: Optional[str] = None


@dataclass(frozen=True)
class HubSource:
    path: str
    config: Optional[str]
    splits: dict[str, tuple[str, ...]]  # official split -> Hub splits, concatenated in this order
    fields: Fields
    # Commit hash (or tag/branch) of the Hub dataset repository, passed to load_dataset; None = the latest
    # revision, so a rerun may read changed data: pin a hash for an exact reproduction.
    revision: Optional[str] = None


@dataclass(frozen=True)
class LocalSource:
    format: Literal["jsonl", "json_array"]
    files: dict[str, str]  # official split -> file name in the official release
    fields: Fields


@dataclass(frozen=True)
class SplitRecipe:
    """How train/valid/test come from the official splits (spec 1.3).

    official:     each of train/valid/test names an official split.
    sample_valid: valid = a seeded uniform sample of `train`, as many questions as `test`; train = the rest.
    shuffle:      seeded shuffle of `source`, cut by `ratio` with integer arithmetic (n*8//10, n*1//10, rest).
    """
    method: Literal["official", "sample_valid", "shuffle"]
    train: Optional[str] = None
    valid: Optional[str] = None
    test: Optional[str] = None
    source: Optional[str] = None
    ratio: tuple[int, ...] = (8, 1, 1)

    def __post_init__(self):
        needs = {"official": ("train", "valid", "test"), "sample_valid": ("train", "test"),
                 "shuffle": ("source",)}[self.method]
        for key in ("train", "valid", "test", "source"):
            given = getattr(self, key) is not None
            _check(given == (key in needs), f"split.{key}",
                   f"{'required' if key in needs else 'not used'} with method {self.method}")
        _check(len(self.ratio) == 3 and all(r >= 0 for r in self.ratio) and self.ratio[0] > 0, "split.ratio",
               "needs three non-negative integers (train, valid, test), train > 0")

    @property
    def used(self) -> tuple[str, ...]:
        """The official splits this recipe reads."""
        return tuple(s for s in (self.train, self.valid, self.test, self.source) if s is not None)


@dataclass(frozen=True)
class TeacherDefaults:
    samples: int  # completions per question when teacher.samples is null
    rounds: int  # re-ask rounds (spec 3.1) when teacher.rounds is null

    def __post_init__(self):
        _check(self.samples >= 1, "teacher.samples", "must be >= 1")
        _check(self.rounds >= 1, "teacher.rounds", "must be >= 1")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    num_options: Optional[int]  # None only for the generated task: dataset.synthetic.num_options
    split: SplitRecipe
    teacher: TeacherDefaults
    exemplars: str  # few-shot file shipped under tinythinker/exemplars/
    hub: Optional[HubSource] = None
    local: Optional[LocalSource] = None
    generated: bool = False  # rows come from tinythinker.synthetic.generate
    boolean_options: Optional[tuple[str, ...]] = None  # yes/no tasks: option texts for answer true, false

    def __post_init__(self):
        _check(self.name.isidentifier(), "name", f"must be a plain identifier, got {self.name!r}")
        if self.generated:
            _check(self.hub is None and self.local is None, "generated",
                   "a generated task has no hub or local source")
        else:
            _check(self.hub is not None or self.local is not None, "hub", "a task needs a hub or local source")
            _check(self.num_options is not None, "num_options", "required unless the task is generated")
        if self.num_options is not None:
            _check(2 <= self.num_options <= 26, "num_options", "must be within 2..26 (option letters A..Z)")
        if self.boolean_options is not None:
            _check(len(self.boolean_options) == 2 and self.num_options == 2, "boolean_options",
                   "needs exactly two texts (for true, false) and num_options: 2")
        for key, src in (("hub", self.hub), ("local", self.local)):
            if src is None:
                continue
            _check((src.fields.choices is None) == (self.boolean_options is not None), f"{key}.fields.choices",
                   "required for multiple-choice tasks, not used with boolean_options")
            official = src.splits if key == "hub" else src.files
            _check(bool(official), f"{key}.{'splits' if key == 'hub' else 'files'}", "must not be empty")
        if self.hub is not None and self.local is not None:
            _check(set(self.hub.splits) == set(self.local.files), "hub.splits",
                   f"must name the same official splits as local.files ({', '.join(self.local.files)})")
        for s in self.split.used:
            _check(s in self.official_splits, "split", f"unknown official split {s!r} "
                   f"(known: {', '.join(self.official_splits)})")

    @property
    def official_splits(self) -> tuple[str, ...]:
        """Names of the splits the download stage writes to data/raw/<split>.jsonl."""
        if self.generated:
            return GENERATED_SPLITS
        return tuple(self.local.files if self.local is not None else self.hub.splits)

    def num_options_for(self, params: Params) -> int:
        return self.num_options if self.num_options is not None else params.dataset.synthetic.num_options


def available() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in TASK_DIR.glob("*.yaml")))


def load_task(path: str | Path) -> TaskSpec:
    """Parse and validate one task file."""
    path = Path(path)
    raw = read_yaml(path, TaskError, "task file")
    if not isinstance(raw, dict):
        raise TaskError(f"{path}: top level must be a mapping")
    for f in dataclasses.fields(TaskSpec):
        if f.default is dataclasses.MISSING and f.name not in raw:
            raise TaskError(f"{path.name}: {f.name}: required")
    try:
        task = _build(TaskSpec, raw)
    except ParamsError as e:
        raise TaskError(f"{path.name}: {e}") from None
    if task.name != path.stem:
        raise TaskError(f"{path.name}: name: must match the file name ({path.stem!r}), got {task.name!r}")
    return task


@cache
def get_task(name: str) -> TaskSpec:
    if name not in available():
        raise TaskError(f"dataset.name: unknown task {name!r} (known: {', '.join(available())})")
    return load_task(TASK_DIR / f"{name}.yaml")
