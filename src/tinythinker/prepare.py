"""Stage `prepare`: seeded train/valid/test splits (spec 1.3), with the chosen ids saved."""
from __future__ import annotations

import random

from .io import read_jsonl, write_json, write_jsonl
from .params import Params
from .paths import Paths
from .tasks import get_task


def make_splits(task_split: dict, official: dict[str, list[dict]], seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    if "shuffle" in task_split:  # StrategyQA: one file, 80/10/10 after a shuffle
        rows = list(official[task_split["shuffle"]])
        rng.shuffle(rows)
        n_train, n_valid = len(rows) * 8 // 10, len(rows) // 10
        return {"train": rows[:n_train], "valid": rows[n_train:n_train + n_valid], "test": rows[n_train + n_valid:]}
    valid = task_split["valid"]
    if isinstance(valid, dict):  # CSQA: valid sampled from train, as large as the official dev set
        pool = official[valid["sample_from"]]
        picked = set(rng.sample(range(len(pool)), len(official[valid["size_of"]])))
        return {"train": [r for i, r in enumerate(pool) if i not in picked],
                "valid": [r for i, r in enumerate(pool) if i in picked],
                "test": official[task_split["test"]]}
    return {s: official[task_split[s]] for s in ("train", "valid", "test")}


def prepare(params: Params, paths: Paths) -> None:
    task = get_task(params.dataset.name)
    official = {f.stem: read_jsonl(f) for f in sorted(paths.raw.glob("*.jsonl"))}
    splits = make_splits(task.split, official, params.dataset.seed)
    for name, rows in splits.items():
        write_jsonl(paths.split(name), rows)
    write_json(paths.prepared / "split_ids.json", {
        "dataset": task.name, "seed": params.dataset.seed, **{s: [r["id"] for r in rows] for s, rows in splits.items()}})
    options = sorted({len(r["choices"]) for rows in splits.values() for r in rows})
    write_json(paths.metric("prepare"), {**{f"{s}_questions": len(r) for s, r in splits.items()},
                                         "options_min": options[0], "options_max": options[-1]})
