from pathlib import Path

import pytest

from tinythinker.params import Params, ParamsError, load, to_dict, from_dict

REPO = Path(__file__).resolve().parents[1]


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
    ("dpo.stage_type", "summarize", "dpo.stage_type: must be one of"),
    ("teacher.samples", 0, "teacher.samples: must be >= 1"),
    ("sft.batch_size", True, "sft.batch_size: expected an integer"),
    ("dpo.loss_weights", [1.0], "dpo.loss_weights: needs one weight"),
    ("dpo.iterations", {"iter1": {"start": "models/sft"}}, "dpo.iterations.iter1.start: unknown key"),
])
def test_bad_values_name_the_key(key, value, needle):
    with pytest.raises(ParamsError, match=needle.replace("(", r"\(")):
        Params().replace(**{key: value})


def test_load_errors_name_the_file(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("sft:\n  epochs: [1\n")
    with pytest.raises(ParamsError, match="params.yaml: not valid YAML"):
        load(f)
    f.write_text("sft:\n  epochz: 1\n")
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
        Params().replace(launcher="accelerate launch --num_processes 2")
    assert Params().replace(launcher="accelerate launch --cpu --num_processes 2 -m").launcher.endswith("-m")


@pytest.mark.parametrize("key,value,needle", [
    ("sft.eval_every", "weekly", "sft.eval_every: expected an integer or 'cycle', got 'weekly'"),
    ("sft.eval_every", 0, "sft.eval_every: must be >= 1 or cycle"),
    ("sft.eval_every", True, "sft.eval_every: expected an integer or 'cycle'"),
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
        Params().replace(**{key: value})


def test_scale_knobs_accept_their_values():
    p = Params().replace(**{"sft.eval_every": "cycle", "dataset.limit": 200, "dpo.precision": "fp16",
                            "report_to": ["wandb", "tensorboard"], "student.revision": "a" * 40,
                            "sft.gradient_accumulation_steps": 4, "dpo.gradient_checkpointing": True})
    assert (p.sft.eval_every, p.dataset.limit, p.report_to) == ("cycle", 200, ("wandb", "tensorboard"))
    assert Params().replace(**{"sft.eval_every": 700}).sft.eval_every == 700


def _dotted(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict) and k != "iterations":
            yield from _dotted(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_params_yaml_spells_every_key_of_the_schema():
    """Every knob is visible (and commented) in params.yaml, not only a dataclass default."""
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(_dotted(raw)) == set(_dotted(to_dict(Params())))


@pytest.mark.parametrize("stage,keys", [
    ("prepare", ["dataset.limit"]),
    ("tokenizer", ["student.revision"]),
    ("sft", ["sft", "student", "report_to"]),
    ("dpo_train", ["report_to", "dpo.precision", "dpo.tf32", "dpo.gradient_accumulation_steps",
                   "dpo.gradient_checkpointing"]),
])
def test_stages_track_the_knobs_they_read(stage, keys):
    import yaml

    st = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    assert set(keys) <= set(st.get("do", st)["params"])
