"""What self-reflection adds over more training, for a finished run made before the `control` stage existed.

    python3 experiments/control.py [WORKSPACE] [--out experiments/results/control-<name>.json]

The pipeline's own `control` stage (`dpo.control: true`, results/control.py) now does this: each DPO iteration's
start trained as many optimizer steps on its SFT data alone, kept by validation as the iteration is, then tested.
This script runs that stage's code on every iteration of WORKSPACE (default: this checkout; it must hold a finished
`dvc repro`), writing metrics/control/<iteration>.json there as the stage would, and gathers the rows in one file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workspace", nargs="?", type=Path, default=Path("."))
    ap.add_argument("--out", type=Path, help="JSON file (default: experiments/results/control-<workspace name>.json)")
    a = ap.parse_args()
    import torch

    from tinythinker.params import load
    from tinythinker.paths import Paths
    from tinythinker.results.control import control

    ws = Paths(a.workspace)
    params = load(ws.params).replace(**{"dpo.control": True})
    missing = [str(ws.metric(f"dpo/{k}")) for k in params.dpo.iterations if not ws.metric(f"dpo/{k}").exists()]
    if missing or not ws.sft_model.is_dir():
        sys.exit(f"{a.workspace}: not a finished run (missing: {', '.join(missing) or ws.sft_model}); run dvc repro")
    rows = [{"iteration": k, **control(params, ws, k)} for k in params.dpo.iterations]
    out = {"what": "each DPO iteration beside the same start trained as many steps on its SFT data (results/control.py)",
           "workspace": str(a.workspace.resolve()), "seed": params.seed, "dataset_seed": params.dataset.seed,
           "torch_threads": torch.get_num_threads(), "iterations": rows}
    path = a.out or REPO / "experiments" / "results" / f"control-{a.workspace.resolve().name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    keys = ("iteration", "dpo_steps", "start_test_accuracy", "dpo_test_accuracy", "control_test_accuracy",
            "over_control")
    print("  ".join(keys))
    for r in rows:
        print("  ".join(str(r.get(k, "")) for k in keys))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
