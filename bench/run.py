"""Benchmarks, each against a baseline measured in the same run: `python3 bench/run.py [--quick]`.

Prints one table per benchmark and writes them all to bench/results/<device>-<student>.json. See README
"Performance" for what each row means and the figures measured so far.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import workspace
from workspace import REPO


def table(title: str, rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[str(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([f"\n== {title}", line(keys), line(["-" * w for w in widths]), *map(line, cells)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="chain,train,teacher,overhead", help="comma-separated subset")
    ap.add_argument("--student", default="embedded", help="embedded | t5-small (built from config)")
    ap.add_argument("--quick", action="store_true", help="smaller inputs (a smoke run, noisier ratios)")
    ap.add_argument("--out", type=Path, help="JSON file (default bench/results/<device>-<student>[-quick].json)")
    a = ap.parse_args()
    only = set(a.only.split(","))
    unknown = only - {"chain", "train", "teacher", "overhead"}
    if unknown:
        sys.exit(f"--only: unknown benchmark(s) {', '.join(sorted(unknown))}")
    q = {"questions": 16, "steps": 10, "pairs": 128, "requests": 60, "rpm": 1200} if a.quick else \
        {"questions": 64, "steps": 40, "pairs": 640, "requests": 400, "rpm": 1200}

    import torch
    results = {"device": workspace.device(), "student": a.student, "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d"), "sizes": q}
    with tempfile.TemporaryDirectory() as tmp:
        params, paths = workspace.make(Path(tmp))
        if "chain" in only:
            import chain_speed
            model, tokenizer = workspace.student(params, paths, a.student)
            model.to("cuda" if torch.cuda.is_available() else "cpu")
            if model.device.type == "cuda" and torch.cuda.is_bf16_supported():
                model.to(torch.bfloat16)
            results["chain"] = chain_speed.run(params, paths, model, tokenizer, q["questions"])
            print(table("generation chain (sequences/s; vs_loop = ratio to the per-question loop)", results["chain"]))
        if "train" in only:
            import train_speed
            results["train"] = train_speed.run(params, paths, a.student, q["steps"], q["pairs"])
            print(table("training (real tokens/s; vs_stock = ratio to the stock Trainer set-up)", results["train"]))
        if "teacher" in only:
            import teacher_rate
            results["teacher"] = teacher_rate.run(params, paths, q["requests"], q["rpm"], latency=0.4, jitter=0.2)
            print(table("teacher against a rate-limited local server", results["teacher"]))
    if "overhead" in only:
        import overhead
        results["overhead"] = overhead.run(REPO)
        print(table("pipeline overhead (median of 3)", results["overhead"]))

    name = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-") if torch.cuda.is_available() else "cpu"
    out = a.out or REPO / "bench" / "results" / f"{name}-{a.student}{'-quick' if a.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
