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

BENCHMARKS = ("chain", "sampling", "train", "teacher", "overhead")


def table(title: str, rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[str(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([f"\n== {title}", line(keys), line(["-" * w for w in widths]), *map(line, cells)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    ap.add_argument("--student", default="embedded", help="embedded | t5-small | t5-base (built from config)")
    ap.add_argument("--train-steps", type=int, help="curriculum SFT steps before the generation benchmarks "
                    "(default 600, --quick 30): a student that writes the task's texts, not random tokens")
    ap.add_argument("--model", type=Path, help="a trained student for the generation benchmarks instead (e.g. "
                    "models/sft of a default run; --student and --train-steps then do not apply to them)")
    ap.add_argument("--csqa", type=Path, help="the official CSQA files (e.g. ../shared/datasets/csqa): adds chain rows "
                    "on 256 dev questions, whose prompts vary in length as the paper's data do")
    ap.add_argument("--quick", action="store_true", help="smaller inputs (a smoke run, noisier ratios)")
    ap.add_argument("--out", type=Path, help="JSON file (default bench/results/<device>-<student>[-quick].json)")
    a = ap.parse_args()
    only = set(a.only.split(","))
    unknown = only - set(BENCHMARKS)
    if unknown:
        sys.exit(f"--only: unknown benchmark(s) {', '.join(sorted(unknown))}")
    # checked before minutes of data making and training, not after
    if a.model and not (a.model / "config.json").is_file():
        sys.exit(f"--model: {a.model} is no model directory (no config.json)")
    if a.csqa and not (a.csqa / "dev_rand_split.jsonl").is_file():
        sys.exit(f"--csqa: {a.csqa} has no dev_rand_split.jsonl (the official CSQA files)")
    # --quick: a smoke run, also shorter generations (a barely trained student writes to the token budget)
    # and a workspace of 600 training questions (the default's 4,800 take a minute to make and tokenise)
    q = {"questions": 8, "steps": 5, "pairs": 64, "requests": 60, "rpm": 1200, "train_steps": 30, "repeats": 1,
         "max_new_tokens": 16, "original_max_length": 50, "num_train": 600} if a.quick else \
        {"questions": 64, "steps": 40, "pairs": 640, "requests": 400, "rpm": 1200, "train_steps": 600, "repeats": 3,
         "max_new_tokens": None, "original_max_length": 200, "num_train": None}
    if a.train_steps is not None:
        q["train_steps"] = a.train_steps

    import torch
    results = {"device": workspace.device(), "student": a.student, "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d"), "sizes": q}
    name = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-") if torch.cuda.is_available() else "cpu"
    tag = a.student + ("-model" if a.model else "") + ("-quick" if a.quick else "")
    out = a.out or REPO / "bench" / "results" / f"{name}-{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()

    def save(done: str | None = None):  # after every benchmark: a run cut short keeps what it measured
        nonlocal t0
        if done:  # wall seconds of each step, set-up included: what a run of it costs
            results.setdefault("wall_seconds", {})[done] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
        out.write_text(json.dumps(results, indent=2) + "\n")

    overrides = {k: v for k, v in (("generation.max_new_tokens", q["max_new_tokens"]),
                                    ("dataset.synthetic.num_train", q["num_train"])) if v}
    with tempfile.TemporaryDirectory() as tmp:
        params, paths = workspace.make(Path(tmp), **overrides) if only - {"overhead"} else (None, None)
        save("workspace")
        if only & {"chain", "sampling"}:
            import chain_speed
            if a.model:
                from tinythinker.lm.model import load_student
                model, tokenizer = load_student(params, paths, a.model.resolve(), "--model")
                results["generation_model"] = str(a.model)
            else:
                model, tokenizer = workspace.trained(params, paths, a.student, q["train_steps"])
            model.to("cuda" if torch.cuda.is_available() else "cpu")
            if model.device.type == "cuda" and torch.cuda.is_bf16_supported():
                model.to(torch.bfloat16)
            save("student")
            if "chain" in only:
                results["chain"] = chain_speed.run(
                    params, paths, model, tokenizer, q["questions"], repeats=q["repeats"],
                    original_max_length=q["original_max_length"],
                    csqa=chain_speed.csqa_questions(params, paths, a.csqa, 256) if a.csqa else None)
                print(table("generation chain (sequences/s; vs_original = ratio to the original's Trainer.predict "
                            "chain at our token budget, vs_loop = to the per-question loop)", results["chain"]))
                save("chain")
            if "sampling" in only:
                results["sampling"] = chain_speed.sampling(params, paths, model, tokenizer, q["questions"],
                                                            repeats=q["repeats"])
                print(table("sampling (sequences/s; vs_every_copy = ratio to generating each repeated prompt on "
                            "its own)", results["sampling"]))
                save("sampling")
        if "train" in only:
            import train_speed
            results["train"] = train_speed.run(params, paths, a.student, q["steps"], q["pairs"])
            print(table("training (real tokens/s; vs_stock = ratio to the stock Trainer set-up: SFT length-grouped, DPO "
                        "with a reference model)", results["train"]))
            save("train")
        if "teacher" in only:
            import teacher_rate
            results["teacher"] = teacher_rate.run(params, paths, q["requests"], q["rpm"], latency=0.4, jitter=0.2)
            print(table("teacher against a rate-limited local server", results["teacher"]))
            save("teacher")
    if "overhead" in only:
        import overhead
        results["overhead"] = overhead.run(REPO)
        print(table("pipeline overhead (median of 3)", results["overhead"]))
    save("overhead")
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
