"""docs/scale-out.md's table of training knobs (params key -> TrainingArguments field) against the arguments the
code builds (issue 33 item 5: the page said the knobs were "named as TrainingArguments names them", which
`batch_size`, `epochs`, `passes`, `eval_every` and `precision` are not).

The arguments are caught where they are made, whatever module makes them: the transformers argument classes are
replaced by a recorder that stops the stage, and the stage functions and helpers are found by name anywhere in
the package (`sft`, `training_args`), so moving a function between modules does not break this test; renaming
it names what to update."""
import dataclasses
import functools
import importlib
import json
import pkgutil
import re
from pathlib import Path

import pytest

import tinythinker
from tinythinker.params import load
from tinythinker.paths import Paths

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "scale-out.md"
BASE = load(REPO / "params.yaml")


def table() -> list[tuple[str, str]]:
    """(params key, TrainingArguments field or '-') rows of the page's knob table."""
    text = PAGE.read_text(encoding="utf-8")
    section = text.split("## GPU knobs", 1)[1]
    rows = re.findall(r"^\| `([\w.]+)` \| (`[\w=\"]+`(?:, `[\w=\"]+`)*|–) \|", section, flags=re.M)
    return [(key, field) for key, field in rows]


def fields_of(cell: str) -> list[str]:
    return [] if cell == "–" else [f.split("=")[0] for f in re.findall(r"`([^`]+)`", cell)]


@functools.cache
def find(name: str, module_suffix: str = ""):
    """The package's function `name` (in a module whose name ends with `module_suffix`), wherever it lives."""
    hits = []
    for info in pkgutil.walk_packages(tinythinker.__path__, "tinythinker."):
        if not info.name.endswith(module_suffix) or info.name.endswith("__main__"):  # __main__ runs the CLI
            continue
        try:
            mod = importlib.import_module(info.name)
        except Exception:  # an optional dependency; not where the function lives
            continue
        fn = getattr(mod, name, None)
        if callable(fn) and getattr(fn, "__module__", None) == mod.__name__:
            hits.append(fn)
    assert hits, f"no function {name!r} in the tinythinker package: update tests/test_docs_knobs.py"
    return hits[0]


class Built(Exception):
    """Raised by the recorder once the arguments are made: nothing trains."""


@pytest.fixture
def recorder(monkeypatch):
    import sys

    # Import every module of the package first, then patch the module `from transformers import` reads now: the
    # first `from transformers import TrainerCallback` (engine.py) puts a new module object in sys.modules, so a
    # patch of the one imported before is not seen (the test failed when run alone).
    find("training_args"), find("sft", ".stages")
    transformers = sys.modules["transformers"]
    seen: dict = {}

    def record(*args, **kwargs):
        seen.clear()
        seen.update(kwargs)
        raise Built

    for cls in ("TrainingArguments", "Seq2SeqTrainingArguments"):
        monkeypatch.setattr(transformers, cls, record)
    return seen


def sft_arguments(tmp_path, recorder, params) -> dict:
    """The TrainingArguments fields the sft stage builds from `params`, on a one-question data/sft."""
    paths = Paths(tmp_path)
    paths.sft_data.mkdir(parents=True)
    (paths.sft_data / "valid.jsonl").write_text(json.dumps(
        {"qid": "q1", "block": "Which one?\n(A) x (B) y (C) z (D) w", "options": ["A", "B", "C", "D"], "gt": "A"}) + "\n")
    with pytest.raises(Built):
        find("sft", ".stages")(params, paths)
    return dict(recorder)


def dpo_arguments(tmp_path, recorder, params) -> dict:
    run = find("Run", ".engine")(params, Paths(tmp_path), "dpo/iter1", "dpo")  # the engine's run of an iteration
    with pytest.raises(Built):
        find("training_args")(run, params, {"recall": 3, "analyze": 9})
    return dict(recorder)


def test_the_page_has_the_table_and_no_naming_claim():
    rows = table()
    assert len(rows) >= 10, rows
    text = PAGE.read_text(encoding="utf-8")
    assert "named as `TrainingArguments` names them" not in text.replace("\n", " ")


def test_every_field_in_the_table_is_a_trainingarguments_field():
    import transformers

    known = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    bad = [f for _, cell in table() for f in fields_of(cell) if f not in known]
    assert not bad, f"not TrainingArguments fields: {bad}"


def test_every_key_in_the_table_is_a_knob_of_sft_and_or_dpo():
    for key, _ in table():
        stage, _, knob = key.partition(".")
        assert stage in ("sft", "dpo") and hasattr(getattr(BASE, stage), knob), key


# Two values per knob: the field they reach must differ between them (and equal the second where it is the value).
VALUES = {"batch_size": (8, 16), "learning_rate": (1e-4, 3e-4), "epochs": (1.0, 2.0), "passes": (2, 4),
          "eval_every": (7, 11), "warmup_ratio": (0.05, 0.2), "weight_decay": (0.0, 0.1),
          "max_grad_norm": (1.0, 0.5), "gradient_accumulation_steps": (1, 2),
          "gradient_checkpointing": (False, True), "precision": ("fp32", "bf16"), "tf32": (False, True),
          "group_by_length": (False, True)}


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_each_row_is_the_field_the_code_sets(tmp_path, recorder, stage, monkeypatch):
    rows = [(key, cell) for key, cell in table() if key.startswith(stage + ".")]
    assert rows
    build = sft_arguments if stage == "sft" else dpo_arguments
    base = BASE.replace(**{f"{stage}.precision": "fp32"}) if stage == "sft" else BASE
    for key, cell in rows:
        knob = key.split(".", 1)[1]
        a, b = VALUES[knob]
        first = build(tmp_path / f"{knob}-a", recorder, base.replace(**{key: a}))
        second = build(tmp_path / f"{knob}-b", recorder, base.replace(**{key: b}))
        changed = {f for f in set(first) | set(second) if first.get(f) != second.get(f)} - {"output_dir"}
        if cell == "–":
            assert not changed, f"{key} is listed without a TrainingArguments field, but it sets {changed}"
            continue
        fields = fields_of(cell)
        # the key reaches the fields the table names and no other (precision reaches one of bf16 / fp16 per value)
        assert changed and changed <= set(fields), f"{key}: the table says {fields}; the code changes {sorted(changed)}"
