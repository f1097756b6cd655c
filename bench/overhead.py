"""Pipeline overhead: `dvc repro` when nothing changed, and `tinythinker --help` start-up, each next to a
baseline of the same kind measured in the same run (DVC's and Python's own start-up)."""
from __future__ import annotations

import statistics
import subprocess
import sys
import time


def _time(cmd: list[str], cwd, repeats: int) -> float:
    """Median wall seconds of `cmd` (each run must succeed)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(repo, repeats: int = 3) -> list[dict]:
    rows = []
    python = _time([sys.executable, "-c", "pass"], repo, repeats)
    cli = _time([sys.executable, "-m", "tinythinker", "--help"], repo, repeats)
    rows.append({"command": "tinythinker --help", "seconds": round(cli, 3), "baseline": "python -c pass",
                 "baseline_seconds": round(python, 3), "ratio": round(cli / python, 2)})

    dvc_version = _time(["dvc", "--version"], repo, repeats)
    status = subprocess.run(["dvc", "status", "--quiet"], cwd=repo, capture_output=True)
    if status.returncode == 0 and (repo / "dvc.lock").exists():
        noop = _time(["dvc", "repro"], repo, repeats)
        rows.append({"command": "dvc repro (no-op)", "seconds": round(noop, 3), "baseline": "dvc --version",
                     "baseline_seconds": round(dvc_version, 3), "ratio": round(noop / dvc_version, 2)})
    else:  # timing it now would run the pipeline
        rows.append({"command": "dvc repro (no-op)", "skipped": "pipeline not up to date; run `dvc repro` first"})
    return rows
