"""Stage `prepare`: seeded train/valid/test splits of the official data (spec 1.3), with their ids saved.

The split recipe comes from the task file (tasks.SplitRecipe). `dataset.limit` then caps every split with a
seeded sample (smoke runs on a real dataset). The same data, `dataset.seed` and limit give byte-identical
outputs; data/prepared/split_ids.json records which question went where (and the limit).
"""
from __future__ import annotations

import random

from ..io import DataError, atomic_path, write_json, write_jsonl
from ..params import Params
from ..paths import Paths
from .download import RECORD, collect, jsonl_rows
from .tasks import SplitRecipe, get_task

SPLITS = ("train", "valid", "test")


def make_splits(recipe: SplitRecipe, official: dict[str, list[dict]], seed: int) -> dict[str, list[dict]]:
    """train/valid/test record lists from the official splits; only `seed` drives the randomness.

    Sampling and shuffling start from the records sorted by id, so which question lands where depends on
    the questions and the seed only, not on the order a source (Hub or local file) happens to list them.
    """
    rng = random.Random(seed)
    if recipe.method == "official":
        return {s: list(official[getattr(recipe, s)]) for s in SPLITS}
    if recipe.method == "sample_valid":
        pool, test = official[recipe.train], official[recipe.test]
        if len(test) >= len(pool):
            raise DataError(f"split: cannot sample {len(test)} valid questions from {len(pool)} train questions")
        picked = set(rng.sample(sorted(r["id"] for r in pool), len(test)))
        # Both parts keep the official file order.
        return {"train": [r for r in pool if r["id"] not in picked],
                "valid": [r for r in pool if r["id"] in picked], "test": list(test)}
    rows = sorted(official[recipe.source], key=lambda r: r["id"])
    rng.shuffle(rows)
    total = sum(recipe.ratio)
    n_train, n_valid = len(rows) * recipe.ratio[0] // total, len(rows) * recipe.ratio[1] // total
    return {"train": rows[:n_train], "valid": rows[n_train:n_train + n_valid], "test": rows[n_train + n_valid:]}


def cap(rows: list[dict], limit: int, seed: str) -> list[dict]:
    """At most `limit` records: a seeded uniform sample (by id, so independent of the source's order), kept in
    the split's order."""
    if len(rows) <= limit:
        return rows
    keep = set(random.Random(seed).sample(sorted(r["id"] for r in rows), limit))
    return [r for r in rows if r["id"] in keep]


def read_split(paths: Paths, split: str) -> list[dict]:
    """A prepared split with every record re-checked as `prepare` checked it (an error names file and line),
    since the file may have been edited since; the stages that read it send it to a paid teacher."""
    rows = collect({split: jsonl_rows(paths.split(split))}, RECORD, None)[split]
    if not rows:
        raise DataError(f"{paths.split(split)}: no questions (an empty {split} split; rerun `dvc repro prepare`)")
    return rows


def prepare(params: Params, paths: Paths) -> None:
    task = get_task(params.dataset.name)
    n_opts = task.num_options_for(params)
    files = {s: paths.raw / f"{s}.jsonl" for s in task.official_splits}
    for s, f in files.items():
        if not f.is_file():
            raise DataError(f"{f}: no such file (the {task.name} {s} split; run `tinythinker download` first)")
    # Re-checked on read: data/raw may have been edited or produced for another dataset.
    official = collect({s: jsonl_rows(f) for s, f in files.items()}, RECORD, n_opts)
    splits = make_splits(task.split, official, params.dataset.seed)
    full = {s: len(rows) for s, rows in splits.items()}
    if params.dataset.limit is not None:
        splits = {s: cap(rows, params.dataset.limit, f"{params.dataset.seed}/limit/{s}") for s, rows in splits.items()}
    for s, rows in splits.items():
        if not rows:
            raise DataError(f"{paths.raw}: the {s} split of {task.name} would be empty")

    ids = {s: [r["id"] for r in rows] for s, rows in splits.items()}
    if params.dataset.source:
        source = params.dataset.source
    elif task.hub is not None:
        source = task.hub.path + (f"@{task.hub.revision}" if task.hub.revision else "")
    else:
        source = "generated"
    with atomic_path(paths.prepared) as tmp:  # replaced as a whole: no stale file from another dataset
        tmp.mkdir()
        for s, rows in splits.items():
            write_jsonl(tmp / f"{s}.jsonl", rows)
        write_json(tmp / "split_ids.json", {**ids, "seed": params.dataset.seed, "dataset": task.name,
                                            "source": source, "limit": params.dataset.limit})
    limited = {f"{s}_before_limit": n for s, n in full.items()} if params.dataset.limit is not None else {}
    write_json(paths.metric("prepare"), {**{s: len(rows) for s, rows in splits.items()}, "num_options": n_opts,
                                         **limited})
