"""Byte-for-byte equivalence of two versions of the training code on a shrunken pipeline (issue 32's refactor).

    python3 experiments/engine_equivalence.py run --src /tmp/old/src --out /tmp/eq/before
    python3 experiments/engine_equivalence.py run --src src --out /tmp/eq/after
    python3 experiments/engine_equivalence.py compare /tmp/eq/before /tmp/eq/after --write experiments/results/engine-equivalence.json

`run` makes one workspace per student family (tests/test_pipeline.py's TINY shape, one DPO iteration), runs every
model stage through the `tinythinker` command line of the code under `--src` (OMP_NUM_THREADS=2) and records the
md5 of every file of the models (weights, configs, tokenizers), the test predictions and the preference pairs, and
the stage metrics, in `<out>/hashes.json`; `compare` requires both equal.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.helpers import TINY as PIPELINE, set_key  # noqa: E402 - the end-to-end tests' shrunken pipeline

TINY = {**PIPELINE, "dpo.iterations": {"iter1": {"init": "models/sft"}}}  # one DPO iteration
FAMILIES = ("embedded", "embedded-causal")
STAGES = (["download"], ["prepare"], ["corpus"], ["prompt"], ["request"], ["build"], ["tokenizer"], ["pretrain"],
          ["sft"], ["test", "--model", "models/sft", "--name", "test/sft"], ["dpo-sample", "iter1"],
          ["dpo-train", "iter1"], ["test", "--model", "models/dpo/iter1", "--name", "test/iter1"])
HASHED = ("models/tokenizer", "models/pretrained", "models/sft", "models/dpo", "data/predictions", "data/dpo")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _digest(f: Path, root: Path) -> str:
    """md5 of a file; of a saved TrainingArguments (training_args.bin, a pickle), md5 of its fields with the
    output directory taken relative to the workspace, so two workspaces in different places compare."""
    if f.name != "training_args.bin":
        return _md5(f)
    import torch

    fields = dict(vars(torch.load(f, weights_only=False)))
    fields.pop("distributed_state", None)  # the process's accelerate state, not a setting
    fields["output_dir"] = Path(fields["output_dir"]).relative_to(root.resolve()).as_posix()
    return hashlib.md5(json.dumps({k: repr(v) for k, v in sorted(fields.items())}).encode()).hexdigest()


def hashes(root: Path) -> dict:
    """md5 of every file of the models, test predictions and preference pairs (checkpoints aside), and the stage
    metrics (flat JSON; the dvclive curves aside)."""
    files = sorted(f for d in HASHED for f in (root / d).rglob("*") if f.is_file() and "checkpoints" not in f.parts)
    return {"hashes": {f.relative_to(root).as_posix(): _digest(f, root) for f in files},
            "metrics": {f.relative_to(root).as_posix(): json.loads(f.read_text())
                        for f in sorted((root / "metrics").rglob("*.json")) if "_live" not in f.as_posix()}}


def run(src: Path, out: Path) -> dict:
    result = {}
    for family in FAMILIES:
        root = out / family
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        for k, v in {**TINY, "student.model": family}.items():
            set_key(params, k, v)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {**os.environ, "PYTHONPATH": str(src.resolve()), "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1",
               "TINYTHINKER_STORE": str(root / "store"), "OPENAI_API_KEY": "", "TOKENIZERS_PARALLELISM": "false"}
        times = {}
        for stage in STAGES:
            t0 = time.monotonic()
            args = [str(root / a) if a.startswith("models/") else a for a in stage]  # --model: from the cwd
            p = subprocess.run([sys.executable, "-m", "tinythinker", *args, "--root", str(root)], env=env,
                               capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"{family} {' '.join(stage)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
            times[stage[0]] = round(times.get(stage[0], 0) + time.monotonic() - t0, 1)
            print(family, " ".join(stage), times[stage[0]], flush=True)
        result[family] = {"seconds": times, **hashes(root)}
    (out / "hashes.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def compare(before: Path, after: Path, write: Path | None) -> bool:
    a, b = (json.loads((d / "hashes.json").read_text()) for d in (before, after))
    equal = all(a[f]["hashes"] == b[f]["hashes"] and a[f]["metrics"] == b[f]["metrics"] for f in FAMILIES)
    diff = {f: sorted(k for k in set(a[f]["hashes"]) | set(b[f]["hashes"])
                      if a[f]["hashes"].get(k) != b[f]["hashes"].get(k)) for f in FAMILIES}
    doc = {"what": "issue 32's training engine: every model stage of a shrunken pipeline, old code vs new",
           "config": {"overrides": TINY, "families": list(FAMILIES), "OMP_NUM_THREADS": 2,
                      "stages": [" ".join(s) for s in STAGES], "script": "experiments/engine_equivalence.py"},
           "before": {f: a[f]["hashes"] for f in FAMILIES}, "after": {f: b[f]["hashes"] for f in FAMILIES},
           "metrics_equal": {f: a[f]["metrics"] == b[f]["metrics"] for f in FAMILIES},
           "seconds": {"before": {f: a[f]["seconds"] for f in FAMILIES}, "after": {f: b[f]["seconds"] for f in FAMILIES}},
           "differing": diff, "equal": equal}
    if write:
        write.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({"equal": equal, "differing": diff}))
    return equal


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--src", type=Path, default=REPO / "src")
    r.add_argument("--out", type=Path, required=True)
    h = sub.add_parser("rehash", help="recompute <out>/hashes.json from the workspaces a run left")
    h.add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--write", type=Path)
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.src, args.out)
    elif args.cmd == "rehash":
        old = json.loads((args.out / "hashes.json").read_text())
        new = {f: {"seconds": old[f]["seconds"], **hashes(args.out / f)} for f in FAMILIES}
        (args.out / "hashes.json").write_text(json.dumps(new, indent=1) + "\n")
    else:
        sys.exit(0 if compare(args.before, args.after, args.write) else 1)


if __name__ == "__main__":
    main()
