from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tinythinker.cli import app
from tinythinker.params import ParamsError, load
from tinythinker.presets import STUDENTS, TEACHER, preset, resolve
from tinythinker.tasks import get_task

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dataset", sorted(TEACHER))
@pytest.mark.parametrize("student", sorted(STUDENTS))
def test_every_preset_resolves_to_valid_paper_params(dataset, student):
    p = resolve(load(REPO / "params.yaml"), dataset, student)
    assert p.dataset.name == dataset and p.student.model == STUDENTS[student]
    assert p.teacher.backend == "openai" and p.teacher.samples == {"csqa": 8}.get(dataset, 4)
    assert (p.sft.batch_size, p.sft.learning_rate, p.sft.epochs, p.sft.interval) == (64, 5e-4, 10.0, 100)
    assert (p.dpo.beta, p.dpo.loss_weights, p.dpo.learning_rate, p.dpo.batch_size) == (0.5, (1.0, 0.5), 5e-6, 32)
    assert list(p.dpo.iterations) == [f"iter{k}" for k in range(1, 6)]
    assert p.dpo.iterations["iter3"].init == "models/dpo/iter2"
    get_task(p.dataset.name)  # the task file exists for it


def test_unknown_preset_names_the_choice():
    with pytest.raises(ParamsError, match="unknown student"):
        resolve(load(REPO / "params.yaml"), "csqa", "t5-huge")


def test_preset_write_keeps_params_valid(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    res = CliRunner().invoke(app, ["preset", "strategyqa", "t5-large", "--write", "--root", str(tmp_path)])
    assert res.exit_code == 0, res.output
    p = load(tmp_path / "params.yaml")
    assert p.student.model == "google-t5/t5-large" and p.teacher.rounds == 2
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["sft"]["max_source_length"] == 512


def test_preset_flags_applied_by_dvc_give_the_preset(tmp_path):
    """The printed flags, applied by DVC's own `-S` machinery to params.yaml, yield exactly the preset."""
    import shlex

    from dvc.utils.hydra import apply_overrides

    res = CliRunner().invoke(app, ["preset", "csqa", "t5-small"])
    assert res.exit_code == 0, res.output
    words = shlex.split(res.output)
    assert words[::2] == ["-S"] * (len(words) // 2)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    apply_overrides(str(tmp_path / "params.yaml"), words[1::2])
    assert load(tmp_path / "params.yaml") == resolve(load(REPO / "params.yaml"), "csqa", "t5-small")


def test_preset_write_keeps_comments_and_untouched_lines_and_replaces_the_file_whole(tmp_path):
    before = (REPO / "params.yaml").read_text()
    f = tmp_path / "params.yaml"
    f.write_text(before)
    inode = f.stat().st_ino
    res = CliRunner().invoke(app, ["preset", "obqa", "t5-base", "--write", "--root", str(tmp_path)])
    assert res.exit_code == 0, res.output
    after = f.read_text()
    comments = lambda text: [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]  # noqa: E731
    assert comments(after) == comments(before)
    changed = {k.split(".")[-1] for k in preset("obqa", "t5-base")}
    for line in before.splitlines():  # every line whose key the preset does not set is byte-identical
        key = line.split(":")[0].strip()
        if key and not key.startswith("#") and key not in changed and key not in ("iter1", "iter2", "init"):
            assert line in after.splitlines(), line
    assert "  name: obqa               # synthetic | csqa | obqa | strategyqa" in after
    assert "  base_url: null" in after and "  loss_type: [sigmoid, sft]" in after
    assert f.stat().st_ino != inode  # written beside and renamed into place, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no temporary left behind
    assert load(f) == resolve(load(REPO / "params.yaml"), "obqa", "t5-base")


def test_preset_write_on_bad_params_changes_nothing(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text((REPO / "params.yaml").read_text().replace("  batch_size: 64", "  batch_size: 0"))
    before = f.read_bytes()
    res = CliRunner().invoke(app, ["preset", "csqa", "t5-small", "--write", "--root", str(tmp_path)])
    assert res.exit_code == 2 and "sft.batch_size: must be >= 1, got 0" in res.output
    assert f.read_bytes() == before
