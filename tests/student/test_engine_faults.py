"""The engine when the world fails it: a checkpoint the disk cannot take, a resumed run's loss."""
import errno

import pytest

from tests.helpers import SFT_PARAMS
from tinythinker.lm.engine import _writing_failed, whole_run_loss
from tinythinker.student.stages import sft

PARAMS = SFT_PARAMS
pytestmark = pytest.mark.usefixtures("one_thread")


def test_whole_run_loss_counts_the_steps_before_the_resume():
    # logged means over steps 1, 2-5, 6-10; resumed at 10; the Trainer's 4.0 covers steps 11-20 only
    history = [{"loss": 8.0, "step": 1}, {"loss": 6.0, "step": 5}, {"loss": 5.0, "step": 10},
               {"eval_accuracy": 3.0, "step": 10}, {"loss": 4.5, "step": 15}]
    assert whole_run_loss(history, 4.0, 10, 20) == round((8 + 6 * 4 + 5 * 5 + 4.0 * 10) / 20, 6)
    assert whole_run_loss(history, 4.0, 0, 20) == 4.0  # not resumed: the Trainer's own


def test_what_counts_as_a_failed_write():
    class SafetensorError(Exception):
        pass

    assert _writing_failed(OSError(errno.ENOSPC, "No space left on device"))
    assert _writing_failed(SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"))
    assert _writing_failed(RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed "
                                        "writing file data/0: file write failed"))
    assert not _writing_failed(FileNotFoundError(2, "No such file or directory", "data/sft/valid.jsonl"))
    assert not _writing_failed(ValueError("a bug"))


def test_a_checkpoint_the_disk_cannot_take_is_one_line_naming_its_directory(paths, monkeypatch):
    """safetensors reports a full disk as its own error, mid-training: the stage ends with an OSError naming
    models/checkpoints/sft (cli prints it as one line, exit 2), not a SafetensorError traceback."""
    import transformers.modeling_utils
    from safetensors import SafetensorError

    def full(*a, **kw):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              '"No space left on device" })')

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)  # what save_pretrained calls
    with pytest.raises(OSError) as e:
        sft(PARAMS.replace(**{"sft.eval_every": 5}), paths, max_steps=6)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(paths.checkpoints / "sft")
    assert not paths.sft_model.exists()


def test_inputs_cut_by_the_length_limits_are_counted_said_or_refused(paths, capsys):
    """A few over-long rows are cut with a warning and counted in metrics/sft.json; limits that cut most rows
    (`sft.max_source_length: 4`) are refused before training, naming the param and the file."""
    from tinythinker.io import DataError, read_jsonl, write_jsonl
    from tinythinker.lm.model import load_student
    from tinythinker.student.stages import over_limits, stage_data

    with pytest.raises(DataError, match=r"recall.jsonl: sft.max_source_length=4 cuts 12 of 12 inputs \(the longest "
                                        r"is \d+ tokens\): raise sft.max_source_length"):
        sft(PARAMS.replace(**{"sft.max_source_length": 4}), paths, max_steps=1)
    assert not (paths.checkpoints / "sft").exists() or not list((paths.checkpoints / "sft").glob("checkpoint-*"))
    recall = paths.stage_file(PARAMS.sft.stage_type, "recall")
    rows = read_jsonl(recall)
    rows[0]["input"] += " word" * 5_000  # one 25 KB question among 12
    write_jsonl(recall, rows)
    _, tokenizer = load_student(PARAMS, paths)
    cut = over_limits(PARAMS, paths, stage_data(PARAMS, paths), tokenizer)
    assert cut == {"inputs_over_max_source_length": 1, "targets_over_max_target_length": 0}
    err = capsys.readouterr().err
    assert f"warning: sft.max_source_length={PARAMS.sft.max_source_length} cuts 1 of 12 inputs of {recall}" in err
