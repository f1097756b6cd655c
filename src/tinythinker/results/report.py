"""Stage `report`: what a person reads after a run, and the few numbers DVC compares.

- `metrics/summary.json`, the pipeline's only declared metrics: test and validation accuracy per model, DPO pairs
  and optimizer steps per stage, accepted teacher chains, teacher requests and spend. Nested keys, so the
  column names stay short (`test.iter2`, `pairs.iter1`) and `dvc exp show --drop 'valid|steps'` trims further.
  Every stage's own JSON (`metrics/build.json`, `metrics/dpo/iter1.json`, ...) is a git-tracked diagnostic.
- `metrics/iterations.json`: one row per model, plotted by `dvc plots show` (dvc.yaml `accuracy_by_iteration`).
- `metrics/report.md` with pictures in `metrics/report/`: the summary table, the teacher's yield, DPO pairs per
  iteration and the training curves, drawn as PNG from Vega-Lite specs by vl-convert (no browser, no network).
- `metrics/vega/vega.js`: the Vega/Vega-Lite/Vega-Embed bundle that `.dvc/plots.html` loads, so the page
  `dvc plots show` writes draws offline (DVC's own page loads these libraries from a CDN).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ..io import DataError, atomic_path, read_json, write_json, write_text
from ..params import Params
from ..paths import Paths
from ..protocol import EVAL_ACCURACY, PAIR_KINDS, TRAIN_LOSS

SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"


def stage_metrics(path: Path, stage: str, reader: str = "the report") -> dict:
    """A stage's JSON; a missing one is a DataError naming it, the `reader` that needs it and the stage that writes
    it (a report of nulls would pass for a result), as is a broken one."""
    if not path.exists():
        raise DataError(f"{path}: no such file; {reader} needs it: `dvc repro {stage}` writes it")
    return read_json(path)


def _round(x):
    return None if x is None else round(float(x), 2)


def interval(accuracy: float | None, n: int | None, z: float = 1.96) -> list[float] | None:
    """Wilson's 95 % interval (%) of an accuracy (%) over `n` questions: the sampling noise of one test set of this
    size (right at 0 and 100 %, where the normal approximation is not); None without both numbers."""
    if accuracy is None or not n:
        return None
    p = accuracy / 100.0
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [_round(100.0 * max(0.0, (centre - half) / (1 + z * z / n))),
            _round(100.0 * min(1.0, (centre + half) / (1 + z * z / n)))]


def _test(paths: Paths, model: str, stage: str) -> dict:
    m = stage_metrics(paths.metric(f"test/{model}"), stage)
    return {"test_accuracy": _round(m.get("accuracy")), "test_ci95": interval(m.get("accuracy"), m.get("questions"))}


def collect(params: Params, paths: Paths) -> list[dict]:
    """One row per model (SFT, then each DPO iteration): accuracies (test with its 95 % interval), pairs, steps."""
    sft = stage_metrics(paths.metric("sft"), "sft")
    rows = [{"model": "sft", "step": 0, "valid_accuracy": _round(sft.get("valid_accuracy")),
             **_test(paths, "sft", "test_sft"), **{f"{s}_pairs": None for s in PAIR_KINDS},
             "train_steps": sft.get("train_steps")}]
    for step, key in enumerate(params.dpo.iterations, 1):
        dpo = stage_metrics(paths.metric(f"dpo/{key}"), f"dpo_train@{key}")
        rows.append({"model": key, "step": step, "valid_accuracy": _round(dpo.get("valid_accuracy")),
                     **_test(paths, key, f"test@{key}"), **{f"{s}_pairs": dpo.get(f"{s}_pairs") for s in PAIR_KINDS},
                     "train_steps": dpo.get("steps"), **_control(paths, key)})
    return rows


def _control(paths: Paths, key: str) -> dict:
    """The iteration's control (results/control.py): its test accuracy and the iteration's over it; {} when it did not
    run (dpo.control: false, or a run from before the stage)."""
    path = paths.metric(f"control/{key}")
    m = read_json(path) if path.exists() else {}
    if "control_test_accuracy" not in m:
        return {}
    return {"control_test_accuracy": _round(m["control_test_accuracy"]), "over_control": _round(m.get("over_control"))}


def headline(rows: list[dict], teacher: dict, build: dict, pretrain: dict | None = None) -> dict:
    pairs = {r["model"]: sum(r[f"{s}_pairs"] or 0 for s in PAIR_KINDS) for r in rows[1:]}
    pretrain = pretrain or {}
    return {"test": {r["model"]: r["test_accuracy"] for r in rows},
            "valid": {r["model"]: r["valid_accuracy"] for r in rows},
            "pairs": pairs, "steps": {"pretrain": pretrain.get("steps"), **{r["model"]: r["train_steps"] for r in rows}},
            **({"over_control": {r["model"]: r["over_control"] for r in rows if "over_control" in r}}
               if any("over_control" in r for r in rows) else {}),
            # the share of the world's facts the pretrained student completes (held-out things: test answers)
            "probe": {"all": pretrain.get("probe_accuracy"), "held_out": pretrain.get("probe_held_out_accuracy")},
            "chains": build.get("accepted_chains"),
            # what the data cost, however many runs bought it: the distinct requests whose answers they use
            "teacher": {"requests": _answered(teacher), "usd": teacher.get("usd")}}


def _answered(teacher: dict) -> int | None:
    if "requests_answered" in teacher:
        return teacher["requests_answered"]
    # a metrics file of an older request stage: every lookup, a request asked twice in one run counted twice
    parts = [teacher.get(k) for k in ("requests_sent", "requests_from_journal", "requests_from_store")]
    return None if parts[0] is None else sum(n or 0 for n in parts)


# --- pictures ------------------------------------------------------------------------------------------------

def _tsv(path: Path) -> list[dict]:
    with path.open() as f:
        return [{"step": int(r["step"]), "value": float(r[path.stem])} for r in csv.DictReader(f, delimiter="\t")]


def _curves(live: Path) -> dict[str, list[dict]]:
    """dvclive's series under `live`/plots/metrics, by curve name (protocol.curve_name: eval/accuracy, ...)."""
    root = live / "plots" / "metrics"
    return {str(p.relative_to(root).with_suffix("")): _tsv(p) for p in sorted(root.rglob("*.tsv"))} if root.is_dir() else {}


def _line(title: str, values: list[dict], x: str, y: str, color: str | None = None, x_type="quantitative",
          percent: bool = False, y_title: str | None = None) -> dict:
    """A line chart with both axes titled (`y_title`, else the percent sign or the curve's name) and, with `color`,
    one colour per series."""
    scale = {"domain": [0, 100]} if percent else {"zero": False}
    if y_title == "loss" and values and all(v[y] > 0 for v in values):
        scale = {"type": "log"}  # a loss falls by orders of magnitude: on a linear axis the first steps hide the rest
    enc = {"x": {"field": x, "type": x_type, "axis": {"labelAngle": 0},
                 "title": "optimizer step" if x == "step" else x},
           "y": {"field": y, "type": "quantitative", "scale": scale,
                 "title": y_title or ("accuracy (%)" if percent else y)}}
    if color:
        enc["color"] = {"field": color, "type": "nominal", "title": None}
    return {"$schema": SCHEMA, "title": title, "width": 360, "height": 200, "data": {"values": values},
            "mark": {"type": "line", "point": len(values) <= 40}, "encoding": enc}


def _accuracy(rows: list[dict]) -> dict:
    """Valid and test accuracy by model, one colour each, the test's 95 % interval as a bar around its point."""
    acc = [{"model": r["model"], "split": split, "accuracy": r[f"{split}_accuracy"],
            **({"low": r["test_ci95"][0], "high": r["test_ci95"][1]} if split == "test" and r.get("test_ci95") else {})}
           for r in rows for split in ("valid", "test") if r[f"{split}_accuracy"] is not None]
    line = _line("Chain accuracy by model (test: 95 % interval)", acc, "model", "accuracy", "split", "ordinal",
                 percent=True)
    line["encoding"]["x"]["sort"] = [r["model"] for r in rows]
    layers = [{"mark": line["mark"], "encoding": line["encoding"]}]
    if any("low" in v for v in acc):
        layers.append({"mark": {"type": "rule"}, "transform": [{"filter": "isValid(datum.low)"}],
                       "encoding": {"x": line["encoding"]["x"], "y": {"field": "low", "type": "quantitative"},
                                    "y2": {"field": "high"}, "color": line["encoding"]["color"]}})
    return {k: v for k, v in line.items() if k not in ("mark", "encoding")} | {"layer": layers}


Y_TITLES = {TRAIN_LOSS: "loss", "rewards/margins": "reward margin (chosen - rejected)"}
STEPS = ("recall", "analyze", "summarize")  # the chain's steps, as the curves name them (train/recall_loss, ...)


def _together(curves: dict[str, list[dict]], names: dict[str, str]) -> list[dict]:
    """The curves `names` (curve -> series label) as one table with a `series` column, the missing ones left out."""
    return [{**v, "series": label} for name, label in names.items() for v in curves.get(name, [])]


def _sft(curves: dict[str, list[dict]]) -> dict[str, dict]:
    """SFT's curves: the loss per curriculum stage beside the whole, the held-out questions' loss per stage, and the
    validation accuracy beside each step run alone on held-out teacher inputs (where the chain fails)."""
    specs = {}
    train = _together(curves, {TRAIN_LOSS: "all", **{f"train/{s}_loss": s for s in STEPS}})
    if train:
        specs["sft_train_loss"] = _line("SFT training loss by curriculum stage", train, "step", "value", "series",
                                        y_title="loss")
    held = _together(curves, {"eval/loss": "all", **{f"eval/{s}_loss": s for s in STEPS}})
    if held:
        specs["sft_eval_loss"] = _line("SFT loss on held-out training questions, by stage", held, "step", "value",
                                       "series", y_title="loss")
    accuracy = _together(curves, {EVAL_ACCURACY: "validation chain accuracy", "eval/recall_f1": "recall alone (F1)",
                                  "eval/analyze_f1": "analyze alone (F1)",
                                  "eval/summarize_accuracy": "summarize alone (answer)"})
    if accuracy:
        specs["sft_eval_accuracy"] = _line("SFT validation: the chain, and each step alone on held-out questions",
                                           accuracy, "step", "value", "series", percent=True, y_title="score (%)")
    return specs


def _dpo(rows: list[dict], paths: Paths) -> dict[str, dict]:
    """DPO's curves by iteration (iterations that trained): loss, margins, validation accuracy, and the rewards'
    margins and accuracies per pair kind."""
    specs, dpo = {}, {}
    for key in [r["model"] for r in rows[1:]]:
        for name, series in _curves(paths.curves(f"dpo/{key}")).items():
            kind = next((k for k in STEPS if name.startswith(f"rewards/{k}/")), None)
            name = name.replace(f"rewards/{kind}/", "rewards/by_kind/") if kind else name
            dpo.setdefault(name, []).extend({**v, "iteration": key if kind is None else f"{key} {kind}"}
                                            for v in series)
    for name in (TRAIN_LOSS, "rewards/margins", EVAL_ACCURACY, "rewards/by_kind/margins",
                 "rewards/by_kind/accuracies"):  # per logging step
        series = dpo.get(name, [])
        if len(series) > len({v["iteration"] for v in series}):  # more than a start point each
            title = name.replace("/by_kind/", " ").replace("/", " ")
            by_kind = "by_kind" in name
            specs[f"dpo_{name.replace('/', '_')}"] = _line(
                f"DPO {title} by iteration" + (" and pair kind" if by_kind else ""), series, "step", "value",
                "iteration", percent="accuracy" in name and not by_kind,
                y_title=("reward accuracy (chosen > rejected)" if name.endswith("accuracies")
                         else Y_TITLES.get(name.replace("by_kind/", ""))))
    return specs


def charts(rows: list[dict], paths: Paths) -> dict[str, dict]:
    """Vega-Lite specs by file stem: accuracy by model, pretraining loss, SFT curves, DPO curves."""
    specs = {"accuracy": _accuracy(rows)}
    pretrain = _curves(paths.curves("pretrain")).get(TRAIN_LOSS)
    if pretrain:
        specs["pretrain_train_loss"] = _line("Student pretraining loss", pretrain, "step", "value", y_title="loss")
    return specs | _sft(_curves(paths.curves("sft"))) | _dpo(rows, paths)


def _png(spec: dict) -> bytes:
    import vl_convert

    return vl_convert.vegalite_to_png(spec, scale=1.5)


# --- the page -----------------------------------------------------------------------------------------------

def _cell(x) -> str:
    return "–" if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def _row(cells) -> str:
    """A markdown table row; strings as they are, numbers and None through `_cell`."""
    return "| " + " | ".join(c if isinstance(c, str) else _cell(c) for c in cells) + " |"


def _spend(teacher: dict) -> str:
    """The teacher's spend, and with a spend cap (teacher.max_usd) what this request set has cost against it."""
    text = f"spend ${teacher.get('usd', 0):.2f} (${teacher.get('usd_this_run', 0):.2f} this run)"
    if teacher.get("max_usd") is not None:
        text += (f"; ${teacher.get('usd_paid_for_request_set', 0):.2f} of the ${teacher['max_usd']:.2f} cap "
                 "(teacher.max_usd) paid for this request set")
    return text


def _pretraining(p: dict) -> str:
    """One line on where the student started: pretrained here (loss and probe), from scratch, or a Hub/local model."""
    if p.get("pretrained"):
        return f"- `{p['pretrained']}`: pretrained already, no pretraining stage."
    if not p.get("steps"):
        return "- From scratch (`student.pretrain.steps: 0`): sft starts from the initialised weights."
    held = p.get("probe_held_out_accuracy")
    probe = "" if p.get("probe_accuracy") is None else (
        f"; facts it completes: {_cell(p.get('probe_accuracy_before'))} -> {_cell(p['probe_accuracy'])} %"
        + ("" if held is None else f" (things held out of training answers: "
                                   f"{_cell(p.get('probe_held_out_accuracy_before'))} -> {_cell(held)} %)"))
    return (f"- {p['steps']} steps on {_cell(p.get('sentences'))} corpus sentences, loss "
            f"{p['first_loss']:.3g} -> {p['last_loss']:.3g}{probe}.")


def _ci(bounds) -> str:
    return "–" if not bounds else f"{_cell(bounds[0])}-{_cell(bounds[1])}"


def markdown(rows: list[dict], teacher: dict, build: dict, pretrain: dict, pairs: dict, pictures: list[str]) -> str:
    out = ["# Run report", "",
           "Accuracy (%) of the full generation chain, test with Wilson's 95 % interval over the test questions (the "
           "noise of one test set of this size, not of the seed); pairs and steps are those the model was trained on.",
           "", _row(["model", "valid", "test", "test 95 % interval", *(f"{k} pairs" for k in PAIR_KINDS), "steps"]),
           "|" + "---|" * (5 + len(PAIR_KINDS))]
    out += [_row([r["model"], r["valid_accuracy"], r["test_accuracy"], _ci(r.get("test_ci95")),
                  *(r[f"{k}_pairs"] for k in PAIR_KINDS), r["train_steps"]]) for r in rows]
    controls = [r for r in rows if "control_test_accuracy" in r]
    if controls:
        out += ["", "Each iteration beside its control: the same start trained as many steps on the SFT data alone "
                "(`dpo.control`), test accuracy:", "", _row(["iteration", "test", "control test", "over control"]),
                "|---|---|---|---|"]
        out += [_row([r["model"], r["test_accuracy"], r["control_test_accuracy"], r["over_control"]])
                for r in controls]
    rejected = {k.removeprefix("rejected_"): v for k, v in build.items() if k.startswith("rejected_") and v}
    if pretrain:
        out += ["", "## Student pretraining", "", _pretraining(pretrain)]
    out += ["", "## Teacher", "",
            f"- {_cell(teacher.get('questions_covered'))} of {_cell(teacher.get('questions'))} training questions "
            f"answered; {_cell(teacher.get('requests_sent'))} requests sent, "
            f"{_cell(teacher.get('requests_from_journal', 0) + teacher.get('requests_from_store', 0))} "
            f"served from the journal or store; {_spend(teacher)}.",
            f"- {_cell(build.get('accepted_chains'))} chains accepted for {_cell(build.get('questions_with_chain'))} "
            "questions; rejected: " + (", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(rejected.items()))
                                       or "none") + "."]
    if pairs:
        out += ["", "## Self-reflection (DPO)", "",
                _row(["iteration", "questions sampled", "with pairs", "sample accuracy",
                      *(f"{k} pairs" for k in PAIR_KINDS)]), "|" + "---|" * (4 + len(PAIR_KINDS))]
        out += [_row([k, *(p.get(f) for f in ("questions", "questions_with_pairs", "sample_accuracy")),
                      *(p.get(f"{kind}_pairs") for kind in PAIR_KINDS)]) for k, p in pairs.items()]
    if pictures:
        out += ["", "## Curves", ""] + [f"![{stem}](report/{stem}.png)" for stem in pictures]
    return "\n".join(out) + "\n"


def report(params: Params, paths: Paths) -> list[dict]:
    rows = collect(params, paths)
    teacher, build, pretrain = (stage_metrics(paths.metric(m), stage) for m, stage in
                                (("teacher_request", "request"), ("build", "build"), ("pretrain", "pretrain")))
    pairs = {r["model"]: stage_metrics(paths.metric(f"dpo/{r['model']}_pairs"), f"dpo_sample@{r['model']}")
             for r in rows[1:]}
    write_json(paths.metric("iterations"), rows)
    write_json(paths.metric("summary"), headline(rows, teacher, build, pretrain))
    specs = charts(rows, paths)
    with atomic_path(paths.metrics / "report") as tmp:
        tmp.mkdir()
        for stem, spec in specs.items():
            (tmp / f"{stem}.png").write_bytes(_png(spec))
            (tmp / f"{stem}.vl.json").write_text(json.dumps(spec, indent=1) + "\n")
    write_text(paths.metrics / "report.md", markdown(rows, teacher, build, pretrain, pairs, list(specs)))
    import vl_convert

    with atomic_path(paths.metrics / "vega" / "vega.js") as tmp:
        tmp.write_text(vl_convert.javascript_bundle())
    best = max(rows, key=lambda r: r["test_accuracy"] if r["test_accuracy"] is not None else -1)
    print("  ".join(f"{r['model']} {_cell(r['test_accuracy'])}" for r in rows)
          + f"  (test %; best {best['model']}) -> metrics/report.md")
    return rows
