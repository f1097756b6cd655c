"""Results over seeds: queueing one experiment per seed, and the aggregate of what they reached."""
import json
import math
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from tinythinker.cli import app
from tinythinker.io import DataError
from tinythinker.results.seeds import aggregate, interval, queue, report, runs


def row(name, seed, sft, last, state="Success"):
    return {"Experiment": name, "State": state, "seed": float(seed), "dataset.seed": float(seed),
            "test.sft": sft, "test.iter1": (sft + last) / 2, "test.iter2": last,
            "valid.sft": sft - 1, "valid.iter1": sft, "valid.iter2": last - 1,
            "over_control.iter1": (last - sft) / 2, "over_control.iter2": float("nan")}  # iter2's control: none


ROWS = [{"Experiment": None, "rev": "workspace", "seed": 42.0, "test.sft": 77.67},  # the workspace: not a run
        row("seeds-44", 44, 80.0, 86.0), row("seeds-43", 43, 70.0, 71.0), row("seeds-42", 42, 75.0, 80.0),
        row("seeds-42", 42, 10.0, 10.0),  # an older run of the same seed: the newest (listed first) counts
        row("seeds-45", 45, 1.0, 1.0, state="Failed"), row("other-46", 46, 1.0, 1.0)]


def test_interval_is_the_t_interval_of_the_mean():
    d = interval([75.0, 70.0, 80.0])
    assert d["n"] == 3 and d["mean"] == 75.0 and d["sd"] == 5.0 and (d["min"], d["max"]) == (70.0, 80.0)
    half = 4.303 * 5.0 / math.sqrt(3)
    assert d["ci95"] == [round(75 - half, 2), round(75 + half, 2)]
    assert math.isnan(interval([5.0])["ci95"][0])  # one seed: no interval
    # an accuracy's interval stays within 0-100 (the default's seeds: 47.67, 100, 96.33 gave 8.76-153.90)
    assert interval([47.67, 100.0, 96.33], (0.0, 100.0))["ci95"] == [8.76, 100.0]
    assert interval([47.67, 100.0, 96.33])["ci95"][1] > 150  # a difference has no such bound


def test_runs_keep_the_named_finished_experiments_one_per_seed():
    found = runs(ROWS, "seeds")
    assert [int(r["seed"]) for r in found] == [42, 43, 44] and found[0]["test.sft"] == 75.0


def test_aggregate_and_report_over_three_seeds(tmp_path):
    summary = report(tmp_path, "seeds", rows=ROWS)
    assert summary["seeds"] == [42, 43, 44] and summary["models"] == ["sft", "iter1", "iter2"]
    assert summary["test"]["sft"]["mean"] == 75.0 and summary["test"]["iter2"]["mean"] == 79.0
    assert summary["gain"]["per_seed"] == [5.0, 1.0, 6.0] and summary["gain"]["mean"] == 4.0
    md = (tmp_path / "metrics" / "seeds.md").read_text()
    assert "| sft | 75.00 ± 5.00 | [62.58, 87.42] | 70-80 |" in md
    assert "Phase 2's gain (iter2 - sft (test)): +4.00" in md
    assert summary["over_control"]["iter1"]["per_seed"] == [2.5, 0.5, 3.0] and "iter2" not in summary["over_control"]
    assert "| iter1 | +2.00 ± 1.32 | [-1.29, 5.29] | +2.5, +0.5, +3 |" in md
    assert json.loads((tmp_path / "metrics" / "seeds.json").read_text())["name"] == "seeds"
    assert (tmp_path / "metrics" / "seeds.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(DataError, match="no finished experiment"):
        aggregate(runs(ROWS, "nothing"))


def test_queue_sets_both_seeds_and_the_overrides(tmp_path):
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    assert queue(tmp_path, [1, 2], ["sft.epochs=2"], "abl", run=run) == ["abl-1", "abl-2"]
    assert calls[0] == ["dvc", "exp", "run", "--queue", "-n", "abl-1", "-S", "sft.epochs=2", "-S", "seed=1",
                        "-S", "dataset.seed=1"]
    with pytest.raises(DataError, match="--set seed=3: the seeds command sets seed and dataset.seed itself"):
        queue(tmp_path, [1], ["seed=3"], "abl", run=run)
    res = CliRunner().invoke(app, ["seeds", "queue", "--seeds", "4x,5", "--root", str(tmp_path)])
    assert res.exit_code == 2 and "--seeds: '4x,5' is not a comma-separated list of integers" in res.output


@pytest.mark.slow
def test_three_seeds_of_a_shrunken_default_queued_run_and_reported(tmp_path):
    """The whole path a researcher takes: queue three seeds, run the queue, aggregate (DVC's own experiments)."""
    from tests.helpers import copy_repo, sh

    repo = copy_repo(tmp_path / "repo", {"dpo.iterations": {"iter1": {"init": "models/sft"}}})
    assert "queued tiny-1, tiny-2, tiny-3" in sh("tinythinker seeds queue --seeds 1,2,3 --name tiny", repo)
    sh("dvc exp run --run-all -j 1", repo)
    sh("git commit -q --allow-empty -m 'a commit after queueing'", repo)  # their baseline is no longer HEAD
    out = sh("tinythinker seeds report --name tiny", repo)
    summary = json.loads((repo / "metrics" / "seeds.json").read_text())
    assert summary["seeds"] == [1, 2, 3] and summary["models"] == ["sft", "iter1"]
    assert summary["test"]["sft"]["n"] == 3 and len(summary["gain"]["per_seed"]) == 3
    assert "# `tiny` over seeds 1, 2, 3" in out and (repo / "metrics" / "seeds.png").exists()
    # the controls ran (the command sets dpo.control=true): phase 2 over as many more SFT steps, per seed
    assert len(summary["over_control"]["iter1"]["per_seed"]) == 3 and "Each iteration over its control" in out
    sh("dvc exp apply tiny-2", repo)
    ctl = json.loads((repo / "metrics" / "control" / "iter1.json").read_text())
    assert ctl["control_steps"] == ctl["dpo_steps"] > 0  # as many optimizer steps as the iteration trained
    assert ctl["over_control"] == round(ctl["dpo_test_accuracy"] - ctl["control_test_accuracy"], 2)
    assert ctl["control_kept_start"] == 1 or ctl["control_valid_accuracy"] > ctl.get("start_valid_accuracy", -1)
