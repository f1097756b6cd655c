"""What self-reflection adds over more training: each DPO iteration of a finished run beside a control.

    python3 experiments/control.py [WORKSPACE] [--out experiments/results/control-<name>.json]

The control of an iteration starts from the same model (its `init`) and trains as many optimizer steps as the
iteration did, at its learning rate, batch size and warm-up, with its validation cadence, on the SFT curriculum
data alone (the sft stage's code, nothing else changed); like the iteration it keeps the best of its start and its
checkpoints by validation chain accuracy. Then both are tested on the test questions. WORKSPACE (default: this
checkout) must hold a finished `dvc repro`: models/, data/sft/ and metrics/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def control(params, ws, iteration: str) -> dict:
    """One iteration and its control, measured: valid/test of the start, of the iteration, of the control."""
    from tinythinker.paths import Paths
    from tinythinker.protocol import read_questions
    from tinythinker.lm.curriculum import CurriculumBatchSampler, sft_intervals
    from tinythinker.student.stages import sft, stage_data, test

    d = params.dpo
    dpo = _read(ws.metric(f"dpo/{iteration}"))
    init = ws.root / d.iterations[iteration].init
    start_name = "sft" if init == ws.sft_model else init.name
    row = {"iteration": iteration, "init": start_name, "steps": dpo.get("steps", 0),
           "start_valid": dpo.get("start_valid_accuracy"),
           "start_test": _read(ws.metric(f"test/{start_name}")).get("accuracy"),
           "dpo_valid": dpo.get("valid_accuracy"), "dpo_test": _read(ws.metric(f"test/{iteration}")).get("accuracy")}
    if not row["steps"]:
        return row | {"control_valid": row["start_valid"], "control_test": row["start_test"], "note": "no DPO steps"}
    with tempfile.TemporaryDirectory() as tmp:
        paths = Paths(Path(tmp))
        (paths.root / "data").mkdir()
        os.symlink(ws.sft_data.resolve(), paths.sft_data)
        # the starting model, loaded as a local student (its own tokenizer) by the unchanged sft stage
        p = params.replace(**{"student.model": str(init.resolve()), "sft.learning_rate": d.learning_rate,
                              "sft.batch_size": d.batch_size, "sft.warmup_ratio": d.warmup_ratio,
                              "sft.gradient_accumulation_steps": d.gradient_accumulation_steps,
                              "sft.eval_every": max(1, row["steps"] // d.passes)})
        paths.tokenizer.parent.mkdir(parents=True)
        os.symlink(init.resolve(), paths.tokenizer)
        stages = stage_data(p, paths)
        s = p.sft
        options = max(len(q["options"]) for q in read_questions(paths.sft_data / "valid.jsonl"))
        per_epoch = len(CurriculumBatchSampler({k: len(v) for k, v in stages.items()},
                                               sft_intervals(s.stage_type, s.interval, options), s.batch_size, p.seed))
        # epochs such that the trainer's ceil(epochs x batches per epoch) is exactly the iteration's steps
        p = p.replace(**{"sft.epochs": (row["steps"] - 0.5) / per_epoch})
        t0 = time.time()
        m = sft(p, paths)
        kept = m["valid_accuracy"] > (row["start_valid"] or 0)
        row |= {"control_steps": m["train_steps"], "control_best_valid": m["valid_accuracy"],
                "control_valid": m["valid_accuracy"] if kept else row["start_valid"],
                "control_test": test(p, paths, paths.sft_model, "test/control")["accuracy"] if kept
                else row["start_test"], "control_seconds": round(time.time() - t0, 1)}
    for k in ("dpo", "control"):
        if row.get(f"{k}_test") is not None and row["start_test"] is not None:
            row[f"{k}_gain"] = round(row[f"{k}_test"] - row["start_test"], 2)
    if "dpo_gain" in row and "control_gain" in row:
        row["self_reflection_over_control"] = round(row["dpo_gain"] - row["control_gain"], 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workspace", nargs="?", type=Path, default=Path("."))
    ap.add_argument("--out", type=Path, help="JSON file (default: experiments/results/control-<workspace name>.json)")
    a = ap.parse_args()
    import torch

    from tinythinker.params import load
    from tinythinker.paths import Paths

    ws = Paths(a.workspace)
    params = load(ws.params)
    missing = [str(ws.metric(f"dpo/{k}")) for k in params.dpo.iterations if not ws.metric(f"dpo/{k}").exists()]
    if missing or not ws.sft_model.is_dir():
        sys.exit(f"{a.workspace}: not a finished run (missing: {', '.join(missing) or ws.sft_model}); run dvc repro")
    rows = [control(params, ws, k) for k in params.dpo.iterations]
    out = {"what": "each DPO iteration beside the same start trained as many steps on its SFT data (experiments/control.py)",
           "workspace": str(a.workspace.resolve()), "seed": params.seed, "dataset_seed": params.dataset.seed,
           "torch_threads": torch.get_num_threads(), "iterations": rows}
    path = a.out or REPO / "bench" / "results" / f"control-{a.workspace.resolve().name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    keys = ("iteration", "steps", "start_test", "dpo_test", "control_test", "self_reflection_over_control")
    print("  ".join(keys))
    for r in rows:
        print("  ".join(str(r.get(k, "")) for k in keys))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
