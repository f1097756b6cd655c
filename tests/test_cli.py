import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinythinker.cli import app

REPO = Path(__file__).resolve().parents[1]
PARAMS_TEXT = (REPO / "params.yaml").read_text()
COMMANDS = ["download", "prepare", "prompt", "request", "build", "tokenizer", "sft", "dpo-sample", "dpo-train",
            "test", "report", "preset"]


def test_cli_start_up_imports_no_heavy_library():
    code = "import sys, tinythinker.cli; print(sorted(m for m in ('torch', 'transformers', 'datasets', 'openai') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_subcommand_explains_itself(cmd):
    res = CliRunner().invoke(app, [cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "--root" in res.output


def test_bad_params_exit_2_naming_the_key(tmp_path):
    (tmp_path / "params.yaml").write_text(PARAMS_TEXT.replace("learning_rate: 0.002", "learning_rate: fast"))
    res = CliRunner().invoke(app, ["report", "--root", str(tmp_path)])
    assert res.exit_code == 2
    assert "sft.learning_rate" in res.output
