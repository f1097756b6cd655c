"""Calls that cross between reflect/, student/ and lm/ while `tinythinker dpo-train` runs (issue 32's "bounces").

    python3 experiments/boundary_calls.py WORKSPACE OUT.json [--iteration iter1]

Runs the stage in-process on a workspace whose pairs exist (e.g. one experiments/engine_equivalence.py made; its
models/dpo/<iteration> is rewritten) under `sys.setprofile` and records two things:
- following the params: every call of a reflect/ or student/ function that receives the Params object, in call
  order; `bounces` counts the switches between reflect/ and student/ in that sequence, `returns` the calls that
  go back to a file the sequence had already left;
- every call whose caller is a function of one package and whose callee a function of the other (any argument):
  the distinct (caller -> callee) edges, downward (reflect -> student) and upward (student -> reflect: callbacks,
  overridden methods, lambdas handed down).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path


def package(filename: str) -> str | None:
    for name in ("reflect", "student", "lm"):
        if f"/tinythinker/{name}/" in filename:
            return name
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workspace", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--iteration", default="iter1")
    args = ap.parse_args()
    from tinythinker.params import Params

    edges: Counter = Counter()
    followed: list[tuple[str, str]] = []  # (package, file.function) of each call that receives the params

    def profile(frame, event, arg):
        if event != "call" or frame.f_back is None:
            return
        callee = package(frame.f_code.co_filename)
        if callee is None:
            return
        code = frame.f_code
        names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
        if any(isinstance(frame.f_locals.get(n), Params) for n in names):
            followed.append((callee, f"{callee}/{Path(code.co_filename).stem}.{code.co_qualname}"))
        caller = package(frame.f_back.f_code.co_filename)
        if caller is not None and caller != callee:
            f, b = frame.f_code, frame.f_back.f_code
            edges[(f"{caller}/{Path(b.co_filename).stem}.{b.co_qualname}",
                   f"{callee}/{Path(f.co_filename).stem}.{f.co_qualname}")] += 1

    from tinythinker.cli import app

    sys.setprofile(profile)
    try:
        app(["dpo-train", args.iteration, "--root", str(args.workspace)], standalone_mode=False)
    finally:
        sys.setprofile(None)
    files = [f"{pkg}/{name.split('/')[1].split('.')[0]}" for pkg, name in followed]
    left, returns = set(), 0
    for prev, cur in zip(files, files[1:]):
        if cur != prev:
            left.add(prev)
            returns += cur in left
    phases = {("reflect", "student"), ("student", "reflect")}
    up = {k: n for k, n in edges.items() if k[0].startswith(("student/", "lm/")) and k[1].startswith("reflect/")}
    out = {"following_params": {"files": len(set(files)), "calls": len(followed), "returns": returns,
                                # between the two phases (issue 32's bounces), and between reflect/ and any code
                                # below or beside it that student/ held before lm/ was split out of it
                                "bounces": sum((a[0], b[0]) in phases for a, b in zip(followed, followed[1:])),
                                "switches_reflect_lm_or_student": sum(a[0] != b[0] for a, b in
                                                                      zip(followed, followed[1:])),
                                "sequence": [name for _, name in followed]},
           "crossing": {"distinct_edges": len(edges), "downward": len(edges) - len(up), "upward": len(up),
                        "edges": {f"{a} -> {b}": n for (a, b), n in sorted(edges.items())}}}
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
