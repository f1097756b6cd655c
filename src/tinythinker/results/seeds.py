"""Results over seeds: the run (the default, or any params) queued once per seed as DVC experiments, then what they
reached, aggregated: per model the mean, spread and 95 % interval of the test and validation accuracy, and phase 2's
gain (the last DPO iteration over SFT, per seed) and, where the controls ran (`dpo.control`), each iteration over
its control, as `metrics/seeds.json`, `metrics/seeds.md` and a picture.

A seed sets both `seed` (training) and `dataset.seed` (the synthetic world and the splits), so each run is an
independent draw of the whole pipeline. The experiments are DVC's own (`dvc exp show` lists them, `dvc exp apply`
restores one); this module only names them `<name>-<seed>` and reads them back through `dvc.api.exp_show`.
"""
from __future__ import annotations

import math
import subprocess
from pathlib import Path
from statistics import mean, stdev
from typing import Callable, Optional

from ..io import DataError, atomic_path, write_json, write_text

SEED_KEYS = ("seed", "dataset.seed")
BASELINES = 20  # commits back from HEAD whose experiments `report` reads
# Two-sided 95 % quantiles of Student's t by degrees of freedom (n - 1); beyond the table, the normal's.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def queue(root: Path, seeds: list[int], sets: list[str], name: str,
          run: Callable = subprocess.run) -> list[str]:
    """Queue one experiment per seed (`dvc exp run --queue`), each with `sets` (`key=value`, as `-S` takes them);
    returns their names. `dvc queue start -j 1` runs them one at a time (training runs compete for the cores)."""
    if not seeds:
        raise DataError("--seeds: no seed given (e.g. --seeds 42,43,44)")
    clash = [s for s in sets if s.split("=", 1)[0].lstrip("+") in SEED_KEYS]
    if clash:
        raise DataError(f"--set {clash[0]}: the seeds command sets {' and '.join(SEED_KEYS)} itself")
    names = []
    for seed in seeds:
        exp = f"{name}-{seed}"
        flags = [a for s in [*sets, *(f"{k}={seed}" for k in SEED_KEYS)] for a in ("-S", s)]
        done = run(["dvc", "exp", "run", "--queue", "-n", exp, *flags], cwd=root, capture_output=True, text=True)
        if done.returncode != 0:
            raise DataError(f"dvc exp run --queue -n {exp}: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        names.append(exp)
    return names


def runs(rows: list[dict], name: str) -> list[dict]:
    """The finished experiments named `<name>-<seed>` among `dvc.api.exp_show` rows, one per seed (the newest)."""
    found: dict[int, dict] = {}
    for row in rows:
        exp = row.get("Experiment") or ""
        if not exp.startswith(f"{name}-") or row.get("State") not in (None, "Success"):
            continue
        seed = row.get("seed")
        if isinstance(seed, (int, float)) and not math.isnan(seed):
            found.setdefault(int(seed), row)  # exp_show lists the newest first
    return [found[s] for s in sorted(found)]


def interval(values: list[float], bounds: tuple[float, float] = (-math.inf, math.inf)) -> dict:
    """n, mean, standard deviation, the 95 % t interval of the mean (kept within `bounds`: an accuracy's 0-100,
    which a wide interval over few seeds would pass), min and max."""
    n = len(values)
    sd = stdev(values) if n > 1 else 0.0
    t = _T95[max(k for k in _T95 if k <= n - 1)] if 1 < n <= 31 else 1.96
    half = t * sd / math.sqrt(n) if n > 1 else math.nan
    m = mean(values)
    lo, hi = (max(bounds[0], m - half), min(bounds[1], m + half)) if n > 1 else (math.nan, math.nan)
    return {"n": n, "mean": round(m, 2), "sd": round(sd, 2), "ci95": [round(lo, 2), round(hi, 2)],
            "min": min(values), "max": max(values)}


PERCENT = (0.0, 100.0)


def _models(row: dict, what: str) -> list[str]:
    return [k.split(".", 1)[1] for k in row if k.startswith(f"{what}.") and isinstance(row[k], (int, float))]


def aggregate(found: list[dict]) -> dict:
    """Per model and metric (`test`, `valid`): the interval over seeds; `gain`: last iteration - sft, per seed."""
    if not found:
        raise DataError(f"no finished experiment of this name on the last {BASELINES} commits: `dvc queue status` "
                        "shows where they are")
    models = _models(found[0], "test")
    out = {"seeds": [int(r["seed"]) for r in found], "models": models}
    for what in ("test", "valid"):
        out[what] = {m: interval([r[f"{what}.{m}"] for r in found if _number(r.get(f"{what}.{m}"))], PERCENT)
                     for m in models
                     if any(_number(r.get(f"{what}.{m}")) for r in found)}
    if len(models) > 1:
        gains = [r[f"test.{models[-1]}"] - r["test.sft"] for r in found
                 if _number(r.get(f"test.{models[-1]}")) and _number(r.get("test.sft"))]
        out["gain"] = {"of": f"{models[-1]} - sft (test)", **interval(gains), "per_seed": [round(g, 2) for g in gains]}
    over = {}  # per iteration whose control ran: its test accuracy - its control's (report.headline over_control)
    for m in _models(found[0], "over_control"):
        values = [r[f"over_control.{m}"] for r in found if _number(r.get(f"over_control.{m}"))]
        if values:
            over[m] = {**interval(values), "per_seed": [round(v, 2) for v in values]}
    if over:
        out["over_control"] = over
    return out


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not math.isnan(x)


def markdown(summary: dict, name: str) -> str:
    seeds = ", ".join(map(str, summary["seeds"]))
    out = [f"# `{name}` over seeds {seeds}", "",
           "Accuracy (%) of the full chain; mean ± sd and the 95 % t interval of the mean over the seeds.", "",
           "| model | test mean ± sd | test 95 % CI | test min-max | valid mean ± sd | valid 95 % CI |",
           "|---|---|---|---|---|---|"]
    for m in summary["models"]:
        t, v = summary["test"].get(m), summary["valid"].get(m, {})
        if t is None:
            continue
        out.append(f"| {m} | {t['mean']:.2f} ± {t['sd']:.2f} | {_ci(t)} | {t['min']:g}-{t['max']:g} | "
                   + (f"{v['mean']:.2f} ± {v['sd']:.2f} | {_ci(v)} |" if v else "– | – |"))
    if "gain" in summary:
        g = summary["gain"]
        out += ["", f"Phase 2's gain ({g['of']}): {g['mean']:+.2f} ± {g['sd']:.2f}, 95 % CI {_ci(g)}; per seed: "
                + ", ".join(f"{x:+g}" for x in g["per_seed"]) + "."]
    if summary.get("over_control"):
        out += ["", "Each iteration over its control (the same start trained as many steps on the SFT data alone; "
                "test points):", "", "| iteration | mean ± sd | 95 % CI | per seed |", "|---|---|---|---|"]
        out += [f"| {m} | {d['mean']:+.2f} ± {d['sd']:.2f} | {_ci(d)} | " + ", ".join(f"{x:+g}" for x in d["per_seed"])
                + " |" for m, d in summary["over_control"].items()]
    return "\n".join(out) + "\n"


def _ci(d: dict) -> str:
    lo, hi = d["ci95"]
    return "–" if math.isnan(lo) else f"[{lo:.2f}, {hi:.2f}]"


def chart(summary: dict) -> dict:
    """Test accuracy per model: each seed a point, the mean a bar with its 95 % interval."""
    points = [{"model": m, "accuracy": v} for m in summary["models"] for v in summary.get("_values", {}).get(m, [])]
    means = [{"model": m, "mean": d["mean"], "lo": d["ci95"][0], "hi": d["ci95"][1]}
             for m, d in summary["test"].items() if not math.isnan(d["ci95"][0])]
    axis = {"field": "model", "type": "nominal", "sort": summary["models"], "title": "model",
            "axis": {"labelAngle": 0}}
    scale = {"domain": [0, 100]}
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "width": 360, "height": 220,
            "title": f"Test accuracy over seeds {', '.join(map(str, summary['seeds']))}",
            "layer": [{"data": {"values": means}, "mark": {"type": "bar", "color": "#9ecae1"},
                       "encoding": {"x": axis, "y": {"field": "mean", "type": "quantitative", "scale": scale,
                                                     "title": "test accuracy (%)"}}},
                      {"data": {"values": means}, "mark": {"type": "rule", "color": "#08519c"},
                       "encoding": {"x": axis, "y": {"field": "lo", "type": "quantitative"}, "y2": {"field": "hi"}}},
                      {"data": {"values": points}, "mark": {"type": "point", "color": "#e6550d", "filled": True},
                       "encoding": {"x": axis, "y": {"field": "accuracy", "type": "quantitative"}}}]}


def report(root: Path, name: str, rows: Optional[list[dict]] = None) -> dict:
    """Aggregate the finished `<name>-<seed>` experiments; write metrics/seeds.{json,md} and metrics/seeds.png."""
    if rows is None:
        import dvc.api

        # the experiments of the last BASELINES commits: a commit made after queueing (the reference run's, say)
        # must not hide them, as `dvc exp show` alone (HEAD's experiments only) would
        rows = dvc.api.exp_show(repo=str(root), num=BASELINES)
    found = runs(rows, name)
    summary = aggregate(found)
    values = {m: [r[f"test.{m}"] for r in found if _number(r.get(f"test.{m}"))] for m in summary["models"]}
    metrics = Path(root) / "metrics"
    write_json(metrics / "seeds.json", {"name": name, **summary})
    write_text(metrics / "seeds.md", markdown(summary, name) + "\n![Test accuracy over seeds](seeds.png)\n")
    from .report import _png

    with atomic_path(metrics / "seeds.png") as tmp:
        tmp.write_bytes(_png(chart({**summary, "_values": values})))
    return summary
