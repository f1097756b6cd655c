"""Scale-out pieces that run without several GPUs: the shipped accelerate configs and the one-process path."""
import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name,kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed", "DEEPSPEED")])
def test_accelerate_configs_parse(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
    assert cfg.distributed_type.name == kind and cfg.mixed_precision == "bf16"


def test_fsdp_wraps_a_real_t5_layer_class():
    import transformers.models.t5.modeling_t5 as t5

    cfg = yaml.safe_load((REPO / "configs" / "accelerate" / "fsdp.yaml").read_text())["fsdp_config"]
    assert hasattr(t5, cfg["fsdp_transformer_layer_cls_to_wrap"])


def test_launcher_reaches_every_model_stage():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages["sft"]["cmd"].startswith("${launcher} tinythinker sft")
    assert stages["dpo_train"]["do"]["cmd"].startswith("${launcher} tinythinker dpo-train")
    assert stages["dpo_sample"]["do"]["cmd"].startswith("${launcher} tinythinker dpo-sample")
    assert stages["test_sft"]["cmd"].startswith("${launcher} tinythinker test")
    assert stages["test"]["do"]["cmd"].startswith("${launcher} tinythinker test")
    for stage in (stages["sft"], stages["test_sft"], *(stages[s]["do"] for s in ("dpo_sample", "dpo_train", "test"))):
        assert "src/tinythinker/lm" in stage["deps"]  # distributed.py with the rest of the library


def test_single_process_map_sharded_is_the_plain_call():
    import tinythinker.lm.distributed as D

    calls = []
    assert D.map_sharded(lambda xs: calls.append(list(xs)) or [x * 2 for x in xs], range(5)) == [0, 2, 4, 6, 8]
    assert calls == [[0, 1, 2, 3, 4]]
    assert D.from_main({"a": 1}) == {"a": 1} and D.rank_seed(42) == 42


def test_replicas_masks_fsdp_efficient_loading_only_while_loading(monkeypatch):
    import tinythinker.lm.distributed as D

    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    with D.replicas():
        assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"
    assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"


def test_single_process_chain_accuracy_matches_plain_accuracy(monkeypatch):
    """One process: chain_accuracy is the chain's accuracy over all questions."""
    from accelerate import Accelerator

    import tinythinker.lm.distributed as D
    from tinythinker.lm import chain

    calls = []

    def fake_chain(model, tokenizer, questions, **kw):
        calls.append(len(questions))
        return [{"prediction": "A" if i % 3 else "B", "gt": "A"} for i, _ in enumerate(questions)]

    monkeypatch.setattr(chain, "run_chain", fake_chain)
    acc = D.chain_accuracy(Accelerator(cpu=True), None, None, [{}] * 9)
    assert calls == [9] and acc == pytest.approx(100 * 6 / 9)


@pytest.mark.parametrize("raised,message", [
    # what safetensors raises on a full disk: its own error class, the OS error inside its text
    ("safetensors", "No space left on device"),
    (OSError(28, "No space left on device"), "No space left on device"),
    (RuntimeError("weights on a meta device"), "cannot save the model: RuntimeError: weights on a meta device"),
])
def test_a_model_that_cannot_be_saved_is_an_oserror_naming_the_output(tmp_path, raised, message):
    from safetensors import SafetensorError

    import tinythinker.lm.distributed as D

    if raised == "safetensors":
        raised = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                 'message: "No space left on device" })')

    class Accelerator:
        is_main_process = True

        def wait_for_everyone(self):
            pass

    class Trainer:
        accelerator = Accelerator()

        def save_model(self, where):
            Path(where).mkdir()
            (Path(where) / "model.safetensors").write_bytes(b"half")
            raise raised

    out = tmp_path / "models" / "sft"
    out.parent.mkdir()
    with pytest.raises(OSError) as e:
        D.save_model(Trainer(), out)
    assert e.value.filename == str(out) and message in str(e.value)
    assert not out.exists() and list(out.parent.iterdir()) == []  # no half-written model, no .sft.saving
