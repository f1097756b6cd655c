import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest

from tinythinker.params import Params, ParamsError, Range, from_dict, load, to_dict

REPO = Path(__file__).resolve().parents[1]
BASE = load(REPO / "params.yaml")  # params.yaml holds every value


def test_repo_params_load_and_round_trip():
    p = load(REPO / "params.yaml")
    assert p.dataset.name == "synthetic" and p.student.model == "embedded"
    assert from_dict(to_dict(p)) == p
    assert list(p.dpo.iterations) == sorted(p.dpo.iterations)


@pytest.mark.parametrize("key,value,needle", [
    ("sft.learning_rate", "fast", "sft.learning_rate: expected a number"),
    ("sft.lr", 1e-3, "sft.lr: unknown key"),
    ("dataset.name", "mnist", "dataset.name: must be one of"),
    ("sft.stage_type", "recall", "sft.stage_type: must be one of"),
    ("dpo.stage_type", "analyze_summarize", "dpo.stage_type: must be one of"),
    ("teacher.samples", 0, "teacher.samples: must be >= 1"),
    ("sft.batch_size", True, "sft.batch_size: expected an integer"),
    ("dpo.loss_weights", [1.0], "dpo.loss_weights: needs one weight"),
    ("dpo.iterations", {"iter1": {"start": "models/sft"}}, "dpo.iterations.iter1.start: unknown key"),
])
def test_bad_values_name_the_key(key, value, needle):
    with pytest.raises(ParamsError, match=needle.replace("(", r"\(")):
        BASE.replace(**{key: value})


def test_load_errors_name_the_file(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("sft:\n  epochs: [1\n")
    with pytest.raises(ParamsError, match=r"params.yaml:3: not valid YAML"):
        load(f)
    f.write_text(re.sub(r"(?m)^  epochs:", "  epochz:", (REPO / "params.yaml").read_text(), count=1))
    with pytest.raises(ParamsError, match=r"params.yaml: sft.epochz: unknown key"):
        load(f)


def test_dvc_set_floats_load_as_numbers(tmp_path):
    """`dvc exp run -S dpo.learning_rate=5e-6` writes `5e-06`, a string to YAML 1.1 readers; we read 1.2."""
    from dvc.utils.hydra import apply_overrides

    f = tmp_path / "params.yaml"
    f.write_text((REPO / "params.yaml").read_text())
    apply_overrides(str(f), ["dpo.learning_rate=5e-6", "sft.learning_rate=1E-3"])
    p = load(f)
    assert p.dpo.learning_rate == 5e-6 and p.sft.learning_rate == 1e-3


def test_launcher_must_run_a_module():
    with pytest.raises(ParamsError, match="launcher: must end with -m"):
        BASE.replace(launcher="accelerate launch --num_processes 2")
    assert BASE.replace(launcher="accelerate launch --cpu --num_processes 2 -m").launcher.endswith("-m")


# --- one meaning: params.yaml is read as DVC reads it, and it is the only source of values -------------------
def edited(tmp_path, old: str, new: str) -> Path:
    """A copy of the repository's params.yaml with one line edited."""
    text = (REPO / "params.yaml").read_text()
    assert text.count(old) == 1, old
    f = tmp_path / "params.yaml"
    f.write_text(text.replace(old, new))
    return f


def test_leading_zero_seed_is_ten_to_us_and_to_dvc(tmp_path):
    """PyYAML (YAML 1.1) reads `010` as octal 8 while DVC records 10; both must see 10."""
    from dvc.utils.serialize import load_yaml

    f = edited(tmp_path, "\nseed: 42\n", "\nseed: 010\n")
    assert load(f).seed == 10 == load_yaml(str(f))["seed"]


def test_yes_is_a_string_to_dvc_and_so_a_type_error(tmp_path):
    from dvc.utils.serialize import load_yaml

    f = edited(tmp_path, "  repeat_n: false", "  repeat_n: yes")
    assert load_yaml(str(f))["teacher"]["repeat_n"] == "yes"
    with pytest.raises(ParamsError, match=r"params.yaml: teacher.repeat_n: expected true/false, got 'yes'"):
        load(f)


def test_repeated_key_is_an_error_naming_its_line(tmp_path):
    f = edited(tmp_path, "seed: 42\n", "seed: 42\nseed: 7\n")
    with pytest.raises(ParamsError, match=r"params.yaml:\d+: not valid YAML: found duplicate key \"seed\""):
        load(f)


def test_empty_params_file_names_the_first_missing_key(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("")
    with pytest.raises(ParamsError, match=r"params.yaml: seed: missing key$"):
        load(f)


@pytest.mark.parametrize("start,key", [
    ("  eval_every:", "sft.eval_every"),
    ("    dropout_rate:", "student.embedded.dropout_rate"),
    ("  max_concurrency:", "teacher.max_concurrency"),
    ("launcher:", "launcher"),
])
def test_a_deleted_key_is_an_error_naming_it(tmp_path, start, key):
    line = next(x for x in (REPO / "params.yaml").read_text().splitlines(keepends=True) if x.startswith(start))
    f = edited(tmp_path, line, "")
    with pytest.raises(ParamsError, match=rf"params.yaml: {re.escape(key)}: missing key$"):
        load(f)


def _schema(cls, prefix=""):
    """(dotted key, dataclass field, type with Annotated extras) for every leaf of the schema."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        optional = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (
            typing.Union, types.UnionType) else []
        if len(optional) == 1 and dataclasses.is_dataclass(optional[0]):  # an optional mapping: teacher.price
            yield key, f, tp
            yield from _schema(optional[0], key + ".")
        elif dataclasses.is_dataclass(tp):
            yield key, f, tp
            yield from _schema(tp, key + ".")
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            yield key, f, tp
            yield from _schema(typing.get_args(tp)[1], key + ".<key>.")
        else:
            yield key, f, tp


def test_no_code_defaults_so_nothing_can_drift_from_params_yaml():
    with_default = [k for k, f, _ in _schema(Params)
                    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    # The one exception: the optional keys of `teacher.price`, a mapping params.yaml holds as null (its comment
    # spells them); the defaults are what the price table means by no cached-input price and the batch discount.
    assert with_default == ["teacher.price.cached_input", "teacher.price.batch_discount"]
    with pytest.raises(TypeError):
        Params()  # noqa: the only way to a Params is params.yaml (or a Params built from it)


def test_every_numeric_knob_has_a_range():
    def numeric_without_range(tp):
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:
            return not any(isinstance(m, Range) for m in tp.__metadata__)
        if origin in (typing.Union, types.UnionType, tuple):
            return any(numeric_without_range(a) for a in args if a is not type(None) and a is not Ellipsis)
        return tp in (int, float)

    unchecked = [k for k, _, tp in _schema(Params) if numeric_without_range(tp)]
    assert unchecked == []
    assert sum(1 for *_, tp in _schema(Params) if "Range" in repr(tp)) >= 50


def test_every_integer_knob_that_sizes_memory_has_a_bound_naming_its_cost():
    """An unbounded count is only one whose size holds nothing in memory (a rate, a cap, a count of failures);
    every other names what a value over its bound would cost (`dataset.synthetic.num_train: 10**20` once grew
    past 18 GB before anything said so)."""
    def unbounded_int(tp):
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:
            return args[0] is int and any(isinstance(m, Range) and m.hi == float("inf") for m in tp.__metadata__)
        if origin in (typing.Union, types.UnionType):
            return any(unbounded_int(a) for a in args)
        return False

    unbounded = sorted(k for k, _, tp in _schema(Params) if unbounded_int(tp))
    assert unbounded == sorted([
        "dataset.limit", "dpo.max_questions",  # caps: larger means all, nothing more
        "teacher.requests_per_minute", "teacher.tokens_per_minute",  # rates of a server, paced, nothing held
        "teacher.max_failures_in_a_row", "teacher.max_retries",  # counts of failures before stopping
        "teacher.num_shots",  # at most the exemplars of the file
        "sft.eval_questions",  # fewer than the training questions (sft refuses more, naming it)
        "dataset.synthetic.clues_per_category",  # bounded in __post_init__ by MAX_CLUES
        "sft.gradient_accumulation_steps", "dpo.gradient_accumulation_steps",  # time, not memory
        "sft.eval_every", "generation.top_k", "dpo.top_k",  # a cadence, a cut
        "dataset.synthetic.num_categories", "dataset.synthetic.entities_per_category",  # MAX_* in __post_init__
    ])
    for key, value, needle in [
        ("dataset.synthetic.num_train", 10**20, "at most 1,000,000, got 100,000,000,000,000,000,000: every question "
                                                "is generated and held in memory"),
        ("generation.times", 10**9, "each run is a pass over the test set"),
        ("student.embedded.d_model", 10**6, "a layer's weights grow with its width"),
        ("student.embedded", {**to_dict(BASE.student.embedded), "d_model": 20_000, "d_ff": 20_000},
         "weights, more than 1e+09"),
        ("sft.batch_size", 50_000, "tokens in one micro-batch"),
        ("generation.batch_size", 60_000, "generation.batch_size: 60,000 sequences of up to"),
        ("teacher.samples", 1000, "the OpenAI API allows at most 128"),
    ]:
        with pytest.raises(ParamsError, match=re.escape(needle)):
            BASE.replace(**{key: value})


@pytest.mark.parametrize("key,value,needle", [
    ("seed", -1, "must be in [0, 4294967295]"),
    ("seed", 2**32, "must be in [0, 4294967295]"),
    ("dataset.seed", -5, "must be in [0, 4294967295]"),
    ("dataset.synthetic.num_train", 0, "must be >= 1"),
    ("dataset.synthetic.num_options", 6, "must be in [2, 5]"),
    ("dataset.synthetic.test_holdout", 1.0, "must be in [0, 1)"),
    ("teacher.max_concurrency", 0, "must be >= 1, got 0"),
    ("teacher.temperature", -0.1, "must be >= 0"),
    ("teacher.timeout", 0, "must be > 0"),
    ("teacher.max_retries", -1, "must be >= 0"),
    ("teacher.num_shots", -1, "must be >= 0"),
    ("teacher.requests_per_minute", 0, "must be >= 1"),
    ("student.embedded.vocab_size", 0, "must be >= 1"),
    ("student.embedded.d_model", -3, "must be >= 1"),
    ("student.embedded.num_heads", 0, "must be >= 1"),
    ("student.embedded.dropout_rate", 1.0, "must be in [0, 1)"),
    ("sft.batch_size", 0, "must be >= 1"),
    ("sft.learning_rate", 0.0, "must be > 0"),
    ("sft.epochs", -1.0, "must be > 0"),
    ("sft.weight_decay", -0.01, "must be >= 0"),
    ("sft.max_grad_norm", -1.0, "must be >= 0"),
    ("sft.max_source_length", 0, "must be >= 1"),
    ("sft.max_target_length", -200, "must be >= 1"),
    ("sft.eval_every", 0, "expected an integer >= 1 or 'cycle', got 0"),
    ("sft.gradient_accumulation_steps", 0, "must be >= 1"),
    ("dpo.gradient_accumulation_steps", -1, "must be >= 1"),
    ("dataset.limit", 0, "must be >= 1"),
    ("dataset.synthetic.zipf", 4.5, "must be in [0, 4]"),
    ("dataset.synthetic.clues_per_category", -1, "must be >= 0"),
    ("dataset.synthetic.clues_per_category", 41, "at most 40"),  # the world's limits, at load, not mid-stage
    ("dataset.synthetic.entities_per_category", 121, "at most 120"),
    ("dataset.synthetic.num_categories", 9, "at most 8"),
    ("teacher.min_coverage", 1.1, "must be in [0, 1]"),
    ("teacher.max_retry_seconds", 0.0, "must be > 0"),
    ("teacher.max_failures_in_a_row", 0, "must be >= 1"),
    ("teacher.offline_wrong_fact_rate", -0.1, "must be in [0, 1]"),
    ("teacher.max_usd", 0, "must be > 0, got 0.0"),
    ("teacher.max_usd", -1, "must be > 0, got -1.0"),
    ("generation.temperature", 0.0, "must be > 0"),
    ("generation.top_k", -1, "must be >= 0"),
    ("generation.top_p", 0.0, "must be in (0, 1]"),
    ("generation.top_p", 1.5, "must be in (0, 1]"),
    ("generation.max_new_tokens", 0, "must be >= 1"),
    ("generation.batch_size", -1, "must be >= 1"),
    ("dpo.samples", 1, "must be >= 2"),
    ("dpo.max_questions", 0, "must be >= 1"),
    ("dpo.temperature", -0.7, "must be > 0"),
    ("dpo.top_k", -2, "must be >= 0"),
    ("dpo.top_p", 0.0, "must be in (0, 1]"),
    ("dpo.beta", 0.0, "must be > 0"),
    ("dpo.learning_rate", -5e-6, "must be > 0"),
    ("dpo.batch_size", 0, "must be >= 1"),
    ("dpo.passes", 0, "must be >= 1"),
    ("dpo.warmup_ratio", 1.5, "must be in [0, 1)"),
    ("dpo.max_grad_norm", -1.0, "must be >= 0"),
    ("dpo.loss_weights", [1.0, -0.5], "must be >= 0"),
    ("dpo.loss_weights", [0.0, 0.0], "needs a weight > 0"),
    ("dpo.loss_type", [], "needs at least one loss"),
])
def test_out_of_range_values_name_the_key(key, value, needle):
    with pytest.raises(ParamsError, match=re.escape(key) + r"(\[\d\])?: " + re.escape(needle)):
        BASE.replace(**{key: value})


@pytest.mark.parametrize("key,value", [("generation.top_p", 1.0), ("generation.top_k", 0), ("sft.warmup_ratio", 0.0),
                                       ("seed", 0), ("teacher.temperature", 0.0), ("teacher.num_shots", 0),
                                       ("sft.max_grad_norm", 0.0), ("teacher.max_retries", 0)])
def test_boundary_values_inside_the_range_load(key, value):
    node = BASE.replace(**{key: value})
    for part in key.split("."):
        node = getattr(node, part)
    assert node == value


@pytest.mark.parametrize("old,new,needle", [
    ("  beta: 0.5", "  beta: .inf", "dpo.beta: must be a finite number, got inf"),
    ("  learning_rate: 0.002\n  epochs", "  learning_rate: .nan\n  epochs", "sft.learning_rate: must be a finite number, got nan"),
    ("  timeout: 120.0", "  timeout: -.inf", "teacher.timeout: must be a finite number, got -inf"),
])
def test_infinite_and_nan_floats_are_refused(tmp_path, old, new, needle):
    with pytest.raises(ParamsError, match=re.escape(needle)):
        load(edited(tmp_path, old, new))


@pytest.mark.parametrize("name", ["../../../escaped", "/tmp/escaped", "..", "a/b", ".hidden", ""])
def test_iteration_keys_that_would_leave_the_repository_are_refused(name):
    with pytest.raises(ParamsError, match=re.escape(f"dpo.iterations.{name}: {name!r} is not a plain name")):
        BASE.replace(**{"dpo.iterations": {name: {"init": "models/sft"}}})


@pytest.mark.parametrize("key,value,needle", [
    ("sft.eval_every", "weekly", "sft.eval_every: expected an integer >= 1 or 'cycle', got 'weekly'"),
    ("sft.eval_every", 0, "sft.eval_every: expected an integer >= 1 or 'cycle', got 0"),
    ("sft.eval_every", True, "sft.eval_every: expected an integer >= 1 or 'cycle'"),
    ("dataset.limit", 0, "dataset.limit: must be >= 1"),
    ("sft.gradient_accumulation_steps", 0, "sft.gradient_accumulation_steps: must be >= 1"),
    ("dpo.gradient_accumulation_steps", 0, "dpo.gradient_accumulation_steps: must be >= 1"),
    ("dpo.precision", "fp8", "dpo.precision: must be one of 'auto', 'fp32', 'bf16', 'fp16'"),
    ("sft.tf32", "no", "sft.tf32: expected true/false"),
    ("report_to", ["neptune"], "report_to[0]: must be one of 'wandb', 'mlflow', 'tensorboard'"),
    ("student.revision", 3, "student.revision: expected a string"),
])
def test_scale_knobs_are_validated(key, value, needle):
    with pytest.raises(ParamsError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        BASE.replace(**{key: value})


def test_scale_knobs_accept_their_values():
    p = BASE.replace(**{"sft.eval_every": "cycle", "dataset.limit": 200, "dpo.precision": "fp16",
                            "report_to": ["wandb", "tensorboard"], "student.revision": "a" * 40,
                            "sft.gradient_accumulation_steps": 4, "dpo.gradient_checkpointing": True})
    assert (p.sft.eval_every, p.dataset.limit, p.report_to) == ("cycle", 200, ("wandb", "tensorboard"))
    assert BASE.replace(**{"sft.eval_every": 700}).sft.eval_every == 700


def _dotted(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict) and k != "iterations":
            yield from _dotted(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_params_yaml_spells_every_key_of_the_schema():
    """Every knob is visible (and commented) in params.yaml; the loader also refuses a missing or unknown key."""
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(_dotted(raw)) == set(_dotted(to_dict(BASE)))


@pytest.mark.parametrize("stage,keys", [
    ("prepare", ["dataset.limit"]),
    ("request", ["teacher.mode", "teacher.batch_fallback", "teacher.max_usd", "teacher.price"]),
    ("tokenizer", ["student.revision"]),
    ("sft", ["sft", "student", "report_to"]),
    ("dpo_train", ["report_to", "dpo.precision", "dpo.tf32", "dpo.gradient_accumulation_steps",
                   "dpo.gradient_checkpointing", "student.lora"]),
])
def test_stages_track_the_knobs_they_read(stage, keys):
    import yaml

    st = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    assert set(keys) <= set(st.get("do", st)["params"])


def test_default_runs_three_chained_dpo_iterations():
    its = load(REPO / "params.yaml").dpo.iterations
    assert {k: v.init for k, v in its.items()} == {
        "iter1": "models/sft", "iter2": "models/dpo/iter1", "iter3": "models/dpo/iter2"}
