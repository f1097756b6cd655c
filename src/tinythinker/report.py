"""One table of validation/test accuracy for the SFT model and every DPO iteration (plotted by dvc plots)."""
from __future__ import annotations

import json
from pathlib import Path

from .io import write_json
from .params import Params
from .paths import Paths


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def report(params: Params, paths: Paths) -> list[dict]:
    rows = [{"model": "sft", "step": 0,
             "valid_accuracy": _read(paths.metric("sft")).get("valid_accuracy"),
             "test_accuracy": _read(paths.metric("test/sft")).get("accuracy")}]
    for step, key in enumerate(params.dpo.iterations, 1):
        rows.append({"model": key, "step": step,
                     "valid_accuracy": _read(paths.metric(f"dpo/{key}")).get("valid_accuracy"),
                     "test_accuracy": _read(paths.metric(f"test/{key}")).get("accuracy")})
    write_json(paths.metric("iterations"), rows)
    final = rows[-1]
    write_json(paths.metric("summary"), {"final_model": final["model"], "final_test_accuracy": final["test_accuracy"],
                                         "final_valid_accuracy": final["valid_accuracy"],
                                         "sft_test_accuracy": rows[0]["test_accuracy"]})
    return rows
