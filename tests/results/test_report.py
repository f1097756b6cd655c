"""Stage `report`: headline metrics, the per-model table, and report.md with pictures drawn offline."""
import json
from pathlib import Path

import yaml

from tinythinker.io import write_json, write_text
from tinythinker.params import load
from tinythinker.paths import Paths
from tinythinker.results.report import report

REPO = Path(__file__).resolve().parents[2]
PARAMS = load(REPO / "params.yaml").replace(**{"dpo.iterations": {"iter1": {"init": "models/sft"},
                                                                  "iter2": {"init": "models/dpo/iter1"}}})


def _tsv(path: Path, name: str, values: list[float]) -> None:
    write_text(path, "step\t" + name + "\n" + "".join(f"{i * 50}\t{v}\n" for i, v in enumerate(values)))


def run_metrics(paths: Paths) -> None:
    """What the stages before `report` write, for an SFT model and two DPO iterations (the second skipped)."""
    write_json(paths.metric("teacher_request"), {"questions": 10, "questions_covered": 10, "requests_sent": 12,
                                                 "requests_from_journal": 3, "requests_from_store": 1,
                                                 "usd": 0.5, "usd_this_run": 0.25})
    write_json(paths.metric("build"), {"accepted_chains": 31, "questions_with_chain": 10, "rejected_length": 4,
                                       "rejected_no_declared_answer": 0})
    write_json(paths.metric("pretrain"), {"steps": 300, "sentences": 90, "first_loss": 7.5, "last_loss": 0.25,
                                          "probe_accuracy_before": 0.0, "probe_held_out_accuracy_before": 0.0,
                                          "probe_accuracy": 80.0, "probe_held_out_accuracy": 75.0})
    _tsv(paths.metrics / "pretrain_live" / "plots" / "metrics" / "train" / "loss.tsv", "loss", [7.5, 1.0, 0.25])
    write_json(paths.metric("sft"), {"valid_accuracy": 61.25, "train_steps": 400})
    write_json(paths.metric("test/sft"), {"accuracy": 58.333333, "questions": 60})
    write_json(paths.metric("dpo/iter1"), {"valid_accuracy": 66.0, "steps": 30, "recall_pairs": 40, "analyze_pairs": 25,
                                           "summarize_pairs": 10})
    write_json(paths.metric("dpo/iter1_pairs"), {"questions": 10, "questions_with_pairs": 7, "sample_accuracy": 55.0,
                                                 "recall_pairs": 40, "analyze_pairs": 25, "summarize_pairs": 10})
    write_json(paths.metric("test/iter1"), {"accuracy": 63.0, "questions": 100})
    write_json(paths.metric("dpo/iter2"), {"valid_accuracy": 66.0, "steps": 0, "recall_pairs": 0, "analyze_pairs": 0,
                                           "skipped": 1})
    write_json(paths.metric("dpo/iter2_pairs"), {"questions": 10, "questions_with_pairs": 0, "sample_accuracy": 100.0,
                                                 "recall_pairs": 0, "analyze_pairs": 0})
    write_json(paths.metric("test/iter2"), {"accuracy": 63.0})
    write_json(paths.metric("control/iter1"), {"start": "sft", "start_test_accuracy": 58.333333, "dpo_steps": 30,
                                               "dpo_test_accuracy": 63.0, "control_steps": 30,
                                               "control_test_accuracy": 60.0, "over_control": 3.0})
    write_json(paths.metric("control/iter2"), {"skipped": 1})
    live = paths.metrics / "sft_live" / "plots" / "metrics"
    _tsv(live / "train" / "loss.tsv", "loss", [5.0, 2.0, 1.0, 0.5])
    _tsv(live / "eval" / "accuracy.tsv", "accuracy", [20.0, 61.25])
    for stage in ("recall", "analyze", "summarize"):
        _tsv(live / "train" / f"{stage}_loss.tsv", f"{stage}_loss", [4.0, 1.5, 0.5])
        _tsv(live / "eval" / f"{stage}_loss.tsv", f"{stage}_loss", [4.5, 2.0])
    _tsv(live / "eval" / "loss.tsv", "loss", [4.4, 1.9])
    _tsv(live / "eval" / "recall_f1.tsv", "recall_f1", [10.0, 80.0])
    _tsv(live / "eval" / "summarize_accuracy.tsv", "summarize_accuracy", [30.0, 90.0])
    dpo = paths.metrics / "dpo_live" / "iter1" / "plots" / "metrics"
    _tsv(dpo / "train" / "loss.tsv", "loss", [0.7, 0.6, 0.5])
    _tsv(dpo / "rewards" / "margins.tsv", "margins", [0.0, 0.4, 0.9])
    for kind in ("recall", "analyze"):
        _tsv(dpo / "rewards" / kind / "margins.tsv", "margins", [0.1, 0.5])
        _tsv(dpo / "rewards" / kind / "accuracies.tsv", "accuracies", [0.5, 1.0])
    _tsv(dpo / "eval" / "accuracy.tsv", "accuracy", [61.25, 66.0])


def test_report_headline_table_and_pictures(tmp_path):
    paths = Paths(tmp_path)
    run_metrics(paths)
    rows = report(PARAMS, paths)
    assert [r["model"] for r in rows] == ["sft", "iter1", "iter2"]
    assert json.loads(paths.metric("summary").read_text()) == {
        "test": {"sft": 58.33, "iter1": 63.0, "iter2": 63.0}, "valid": {"sft": 61.25, "iter1": 66.0, "iter2": 66.0},
        "pairs": {"iter1": 75, "iter2": 0}, "steps": {"pretrain": 300, "sft": 400, "iter1": 30, "iter2": 0},
        "over_control": {"iter1": 3.0},  # iter2's control was skipped
        "probe": {"all": 80.0, "held_out": 75.0}, "chains": 31,
        "teacher": {"requests": 16, "usd": 0.5}}  # every answer the data used: sent, journal, store
    assert json.loads(paths.metric("iterations").read_text())[1] == {
        "model": "iter1", "step": 1, "valid_accuracy": 66.0, "test_accuracy": 63.0, "test_ci95": [53.22, 71.82],
        "recall_pairs": 40, "analyze_pairs": 25, "summarize_pairs": 10, "train_steps": 30,
        "control_test_accuracy": 60.0, "over_control": 3.0}
    md = (paths.metrics / "report.md").read_text()
    # Wilson's interval: 63 of 100 -> 53.22-71.82, 35 of 60 -> 45.73-69.94
    assert "| sft | 61.25 | 58.33 | 45.73-69.94 | – | – | – | 400 |" in md
    assert "| iter1 | 66 | 63 | 53.22-71.82 | 40 | 25 | 10 | 30 |" in md
    assert "| iter2 | 66 | 63 | – | 0 | 0 | – | 0 |" in md  # a test metric without its question count: no interval
    assert "| iter1 | 63 | 60 | 3 |" in md and "| iter2 | 63 |" not in md.split("beside its control")[1]
    assert "12 requests sent, 4 served from the journal or store; spend $0.50" in md
    assert "31 chains accepted for 10 questions; rejected: length 4." in md
    assert "| iter1 | 10 | 7 | 55 | 40 | 25 | 10 |" in md
    assert ("300 steps on 90 corpus sentences, loss 7.5 -> 0.25; facts it completes: 0 -> 80 % (things held out of "
            "training answers: 0 -> 75 %)") in md
    pictures = sorted(p.name for p in (paths.metrics / "report").glob("*.png"))
    # the DPO accuracy curve of a skipped iteration is one start point: only iter1 draws it
    assert pictures == ["accuracy.png", "dpo_eval_accuracy.png", "dpo_rewards_by_kind_accuracies.png",
                        "dpo_rewards_by_kind_margins.png", "dpo_rewards_margins.png", "dpo_train_loss.png",
                        "pretrain_train_loss.png", "sft_eval_accuracy.png", "sft_eval_loss.png", "sft_train_loss.png"]
    def series(stem, field="series"):
        chart = json.loads((paths.metrics / "report" / f"{stem}.vl.json").read_text())
        assert chart["encoding"]["color"]["field"] == field  # one colour per series
        return {v[field] for v in chart["data"]["values"]}
    assert series("sft_train_loss") == {"all", "recall", "analyze", "summarize"}
    for stem in ("sft_train_loss", "sft_eval_loss", "pretrain_train_loss", "dpo_train_loss"):  # losses: log axis
        assert json.loads((paths.metrics / "report" / f"{stem}.vl.json").read_text())["encoding"]["y"]["scale"] == {
            "type": "log"}, stem
    assert series("sft_eval_loss") == {"all", "recall", "analyze", "summarize"}
    assert series("sft_eval_accuracy") == {"validation chain accuracy", "recall alone (F1)", "summarize alone (answer)"}
    assert series("dpo_rewards_by_kind_margins", "iteration") == {"iter1 recall", "iter1 analyze"}
    for name in pictures:
        png = (paths.metrics / "report" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000, name  # drawn, not an empty canvas
        assert f"![{name[:-4]}](report/{name})" in md
    spec = json.loads((paths.metrics / "report" / "accuracy.vl.json").read_text())
    assert {v["model"] for v in spec["data"]["values"]} == {"sft", "iter1", "iter2"}
    # the test's 95 % interval drawn as a bar around each test point that has one
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["line", "rule"]
    assert {v["model"]: [v["low"], v["high"]] for v in spec["data"]["values"] if "low" in v} == {
        "sft": [45.73, 69.94], "iter1": [53.22, 71.82]}
    for path in (paths.metrics / "report").glob("*.vl.json"):  # every chart's axes say what they show
        chart = json.loads(path.read_text())
        encoding = chart["layer"][0]["encoding"] if "layer" in chart else chart["encoding"]
        assert encoding["x"]["title"] and encoding["y"]["title"] not in (None, "value"), path.name
    assert "vegaEmbed" in (paths.metrics / "vega" / "vega.js").read_text()  # what .dvc/plots.html loads


def test_the_interval_is_wilsons_and_stays_inside_0_and_100():
    from tinythinker.results.report import interval

    assert interval(50.0, 100) == [40.38, 59.62]  # the textbook case
    assert interval(100.0, 300) == [98.74, 100.0] and interval(0.0, 300) == [0.0, 1.26]  # never 100 +- 0
    lo, hi = interval(96.333333, 300)
    assert lo < 96.33 < hi and hi - lo > interval(96.333333, 3000)[1] - interval(96.333333, 3000)[0]
    assert interval(None, 300) is None and interval(58.3, None) is None


def test_the_teacher_line_shows_spend_against_the_cap(tmp_path):
    from tinythinker.results.report import markdown

    row = {"model": "sft", "valid_accuracy": 61.0, "test_accuracy": 58.0, "recall_pairs": None,
           "analyze_pairs": None, "summarize_pairs": None, "train_steps": 400}
    teacher = {"questions": 10, "questions_covered": 10, "requests_sent": 2, "usd": 0.5, "usd_this_run": 0.25,
               "max_usd": 25.0, "usd_paid_for_request_set": 0.6}
    md = markdown([row], teacher, {}, {}, {}, [])
    assert ("spend $0.50 ($0.25 this run); $0.60 of the $25.00 cap (teacher.max_usd) paid for this request set."
            in md)
    md = markdown([row], {**teacher, "max_usd": None}, {}, {}, {}, [])
    assert "spend $0.50 ($0.25 this run)." in md and "cap" not in md


def test_report_before_dpo_has_sft_only(tmp_path):
    paths = Paths(tmp_path)
    run_metrics(paths)
    rows = report(PARAMS.replace(**{"dpo.iterations": {}}), paths)
    assert [r["model"] for r in rows] == ["sft"]
    assert json.loads(paths.metric("summary").read_text())["pairs"] == {}


def test_a_broken_stage_file_is_named(tmp_path):
    import pytest

    from tinythinker.io import DataError

    paths = Paths(tmp_path)
    run_metrics(paths)
    write_text(paths.metric("dpo/iter1"), '{"valid_accuracy": 66.0,\n')
    with pytest.raises(DataError, match=r"metrics/dpo/iter1.json:2: not valid JSON"):
        report(PARAMS, paths)


def test_only_the_headline_is_a_declared_metric():
    """`dvc metrics show` / `dvc exp show` carry the headline; every stage's own JSON is a git-tracked output."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared = [m for s in stages.values() for m in s.get("do", s).get("metrics", [])]
    assert declared == [{"metrics/summary.json": {"cache": False}}]
    outs = {next(iter(o)) if isinstance(o, dict) else o: o for s in stages.values() for o in s.get("do", s)["outs"]}
    for diag in ("metrics/prepare.json", "metrics/teacher_request.json", "metrics/build.json", "metrics/sft.json",
                 "metrics/dpo/${key}.json", "metrics/dpo/${key}_pairs.json", "metrics/test/${key}.json"):
        assert outs[diag] == {diag: {"cache": False}}, diag  # in git, diffable, not a metric
    config = (REPO / ".dvc" / "config").read_text()
    assert "html_template = plots.html" in config
    template = (REPO / ".dvc" / "plots.html").read_text()
    assert "{plot_divs}" in template and '<script src="../metrics/vega/vega.js">' in template


def test_the_teacher_headline_is_what_the_data_cost_not_what_this_run_sent():
    """A killed and resumed request stage sends fewer requests than an uninterrupted one for the same data: the
    headline counts every answer the data used, so `dvc metrics diff` shows no difference that is not one."""
    from tinythinker.results.report import headline

    # one request asked for two questions with the same text: answered once, found in the journal the second time
    straight = {"requests_answered": 140, "requests_sent": 140, "requests_from_journal": 1, "requests_from_store": 0,
                "usd": 1.25}
    resumed = {"requests_answered": 140, "requests_sent": 99, "requests_from_journal": 42, "requests_from_store": 0,
               "usd": 1.25}
    other_machine = {"requests_answered": 140, "requests_sent": 0, "requests_from_journal": 0,
                     "requests_from_store": 141, "usd": 1.25}
    older = {"requests_sent": 99, "requests_from_journal": 41, "usd": 1.25}  # a file without requests_answered
    heads = [headline([], t, {})["teacher"] for t in (straight, resumed, other_machine, older)]
    assert heads == [{"requests": 140, "usd": 1.25}] * 4


def test_the_report_counts_every_pair_kind_dpo_trains():
    """The pair kinds are spelt once (protocol.PAIR_KINDS), read by the sampler, the trainers and the report."""
    from tinythinker import protocol as P
    from tinythinker.results import report

    assert report.PAIR_KINDS is P.PAIR_KINDS


def test_a_missing_metrics_file_is_an_error_naming_it_and_its_stage(tmp_path):
    """A report of nulls would pass for a result: each file the report reads must be there."""
    import pytest
    from typer.testing import CliRunner

    from tinythinker.cli import app

    for name, stage in [("sft", "sft"), ("test/iter1", "test@iter1"), ("dpo/iter2_pairs", "dpo_sample@iter2"),
                        ("build", "build")]:
        paths = Paths(tmp_path / name.replace("/", "-"))
        run_metrics(paths)
        paths.metric(name).unlink()
        with pytest.raises(Exception, match=rf"{name}.json: no such file; the report needs it: `dvc repro {stage}`"):
            report(PARAMS, paths)
        assert not paths.metric("summary").exists()
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "params.yaml").write_text(yaml.safe_dump(yaml.safe_load((REPO / "params.yaml").read_text())))
    res = CliRunner().invoke(app, ["report", "--root", str(tmp_path / "cli")])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "metrics/sft.json: no such file" in res.output
