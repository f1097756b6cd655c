import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinythinker.cli import app

REPO = Path(__file__).resolve().parents[1]
PARAMS_TEXT = (REPO / "params.yaml").read_text()
COMMANDS = ["download", "prepare", "prompt", "request", "build", "tokenizer", "sft", "dpo-sample", "dpo-train",
            "test", "report", "preset", "forget-answers"]


def test_cli_start_up_imports_no_heavy_library():
    code = "import sys, tinythinker.cli; print(sorted(m for m in ('torch', 'transformers', 'datasets', 'openai') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_subcommand_explains_itself(cmd):
    res = CliRunner().invoke(app, [cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "--root" in res.output


def test_version_prints_the_package_version():
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    out = subprocess.run(["tinythinker", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"tinythinker {version}"


def test_help_lists_the_stages_in_pipeline_order():
    """`tinythinker --help` lists the commands in the order dvc.yaml runs their stages, then the helpers."""
    import re

    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    in_dvc = []
    for stage in stages.values():
        cmd = (stage.get("do") or stage)["cmd"].split("tinythinker ", 1)[1].split()[0]
        if cmd not in in_dvc:
            in_dvc.append(cmd)
    res = CliRunner().invoke(app, ["--help"], terminal_width=200)
    listed = re.findall(r"^[│|] ([a-z][a-z-]*) ", res.output, flags=re.M)
    assert listed[: len(in_dvc)] == in_dvc and listed[len(in_dvc):] == ["preset", "forget-answers", "seeds"], listed


def test_bad_params_exit_2_naming_the_key(tmp_path):
    (tmp_path / "params.yaml").write_text(PARAMS_TEXT.replace("learning_rate: 0.002\n  epochs", "learning_rate: fast\n  epochs"))
    res = CliRunner().invoke(app, ["report", "--root", str(tmp_path)])
    assert res.exit_code == 2
    assert "sft.learning_rate" in res.output


def test_control_says_when_it_is_off_and_names_what_it_misses(tmp_path):
    """`tinythinker control`: with dpo.control false it writes only that it was skipped; on, a missing input is one
    line naming the file and the stage that writes it; an iteration params.yaml lacks is named too (exit 2)."""
    import json

    (tmp_path / "params.yaml").write_text(PARAMS_TEXT)
    res = CliRunner().invoke(app, ["control", "iter1", "--root", str(tmp_path)])
    assert res.exit_code == 0 and "iter1: no control (dpo.control: false)" in res.output
    assert json.loads((tmp_path / "metrics" / "control" / "iter1.json").read_text()) == {"skipped": 1}
    (tmp_path / "params.yaml").write_text(PARAMS_TEXT.replace("control: false", "control: true"))
    res = CliRunner().invoke(app, ["control", "iter1", "--root", str(tmp_path)])
    assert res.exit_code == 2 and "metrics/dpo/iter1.json: no such file" in res.output
    assert "`dvc repro dpo_train@iter1` writes it" in res.output
    res = CliRunner().invoke(app, ["control", "iter9", "--root", str(tmp_path)])
    assert res.exit_code == 2 and "iter9: no such key in dpo.iterations" in res.output
