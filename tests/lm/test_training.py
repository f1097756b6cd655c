"""The TrainingArguments knobs shared by sft and dpo_train: precision, TF32, accumulation, checkpointing, trackers."""
from pathlib import Path

import pytest
import torch

from tests.helpers import BASE
from tinythinker.params import ParamsError, load
from tinythinker.paths import Paths
from tinythinker.lm.training import autocast, resolve_precision, set_tf32, trainer_kwargs



@pytest.fixture
def tf32_restored():
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.fp32_precision, cudnn.fp32_precision
    yield
    matmul.fp32_precision, cudnn.fp32_precision = before


def test_set_tf32_switches_cuda_matmul_and_cudnn(tf32_restored):
    set_tf32(True)
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.fp32_precision) == ("tf32", "tf32")
    set_tf32(False)  # and back: no per-process caching of the switch
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.fp32_precision) == ("ieee", "ieee")


def test_precision_resolves_per_device():
    assert resolve_precision("fp32", "sft.precision") == "fp32"
    assert resolve_precision("bf16", "sft.precision") == "bf16"
    assert resolve_precision("auto", "dpo.precision") == ("bf16" if torch.cuda.is_available() else "fp32")
    if not torch.cuda.is_available():
        with pytest.raises(ParamsError, match="dpo.precision: fp16 needs a CUDA GPU"):
            resolve_precision("fp16", "dpo.precision")


def test_autocast_follows_precision():
    x = torch.ones(2, 2)
    with autocast("fp32", "cpu"):
        assert (x @ x).dtype == torch.float32
    with autocast("bf16", "cpu"):
        assert (x @ x).dtype == torch.bfloat16


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_knobs_become_training_arguments(tmp_path, tf32_restored, stage):
    from transformers import TrainingArguments

    p = BASE.replace(**{f"{stage}.precision": "bf16", f"{stage}.tf32": False,
                            f"{stage}.gradient_accumulation_steps": 4, f"{stage}.gradient_checkpointing": True})
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    kw = trainer_kwargs(p, Paths(tmp_path), stage, f"{stage}-run")
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"  # set by the call, before any training
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, **kw)
    assert (args.bf16, args.fp16, args.gradient_accumulation_steps) == (True, False, 4)
    assert args.gradient_checkpointing
    assert args.activation_checkpointing
    assert args.report_to == [] and args.run_name == f"synthetic/{stage}-run"
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"  # TrainingArguments left TF32 alone (tf32=None)


def test_trackers_are_opt_in_and_must_be_installed(tmp_path, monkeypatch):
    import transformers.integrations as integrations

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    monkeypatch.setattr(integrations, "is_tensorboard_available", lambda: True)
    monkeypatch.setattr(integrations, "is_wandb_available", lambda: False)
    kw = trainer_kwargs(BASE.replace(report_to=["tensorboard"]), Paths(tmp_path), "sft", "sft")
    assert kw["report_to"] == ["tensorboard"]
    import os
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "runs" / "sft")  # not the deleted checkpoints
    with pytest.raises(ParamsError, match=r"report_to: wandb is not installed \(pip install wandb\)"):
        trainer_kwargs(BASE.replace(report_to=["tensorboard", "wandb"]), Paths(tmp_path), "sft", "sft")


@pytest.mark.parametrize("precision,expected", [("fp32", "no"), ("bf16", "bf16")])
def test_precision_param_beats_the_launcher_config(tmp_path, monkeypatch, tf32_restored, precision, expected):
    """The shipped accelerate configs export ACCELERATE_MIXED_PRECISION=bf16; sft.precision still decides."""
    from transformers import TrainingArguments

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16" if precision == "fp32" else "no")
    kw = trainer_kwargs(BASE.replace(**{"sft.precision": precision}), Paths(tmp_path), "sft", "sft")
    assert TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **kw).mixed_precision == expected
