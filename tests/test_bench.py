"""The benchmark script keeps working: a quick run of the cheap benchmarks writes a well-formed report.

Only shape and sanity are asserted here (timings belong to bench/, not to tests)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_bench_writes_its_report(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--only", "chain,teacher,overhead",
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    chain = {r["variant"]: r for r in report["chain"]}
    loop = chain["per-question loop"]
    assert loop["vs_loop"] == 1.0 and loop["sequences"] == 16 * 6  # recall + 4 options + summarize per question
    assert all(r["sequences"] == loop["sequences"] and r["seq_per_s"] > 0 for r in chain.values())
    (teacher,) = report["teacher"]
    assert teacher["requests"] == 60 and teacher["failed_requests"] == 0 and 0 < teacher["share_of_limit"] <= 1.2
    assert {r["command"] for r in report["overhead"]} == {"tinythinker --help", "dvc repro (no-op)"}
    assert "generation chain" in run.stdout


def test_unknown_benchmark_is_refused():
    run = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--only", "chain,gpu"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "unknown benchmark(s) gpu" in run.stderr
