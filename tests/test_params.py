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
