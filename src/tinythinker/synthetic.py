"""The embedded offline task: "which of these is a <category>?" over a closed world of typed entities.

Made so a tiny T5 trained from scratch on a CPU can learn the whole recall -> analyze -> summarize chain:
short texts, a closed vocabulary, and facts (entity -> category) that recur across many questions, always
stated the same way in the teacher's analyses. A share of the entities (`test_holdout`) never appear as the
*answer* of a training question — only as distractors, whose analyses still state their category — and
valid/test questions are answered by them: scoring well needs the facts recombined, not questions recalled.

`offline_completion` is the teacher for this task: it answers the rationalisation request from the facts in
the record's `meta`, in the same text format a chat model is asked for, with optional realistic faults.
"""
from __future__ import annotations

import random
from typing import Optional

from .params import SyntheticParams

WORLD: dict[str, tuple[str, ...]] = {
    "fruit": ("apple", "pear", "plum", "grape", "lemon", "mango", "peach", "cherry", "melon", "kiwi", "fig", "lime"),
    "tool": ("hammer", "saw", "drill", "wrench", "chisel", "shovel", "rake", "pliers", "axe", "ladder", "spade", "clamp"),
    "animal": ("horse", "tiger", "rabbit", "wolf", "otter", "camel", "zebra", "mouse", "goat", "bear", "fox", "deer"),
    "vehicle": ("truck", "bicycle", "train", "bus", "tractor", "scooter", "van", "tram", "canoe", "wagon", "taxi", "jeep"),
    "instrument": ("piano", "violin", "drum", "flute", "guitar", "trumpet", "harp", "cello", "banjo", "organ", "tuba", "oboe"),
    "furniture": ("chair", "table", "sofa", "bed", "desk", "shelf", "stool", "bench", "dresser", "cabinet", "crib", "couch"),
    "vegetable": ("carrot", "onion", "potato", "cabbage", "leek", "radish", "spinach", "celery", "turnip", "pea", "bean", "kale"),
    "bird": ("eagle", "robin", "sparrow", "crow", "owl", "parrot", "swan", "duck", "heron", "pigeon", "hawk", "wren"),
}
MAX_CATEGORIES = len(WORLD)
MAX_ENTITIES = min(len(v) for v in WORLD.values())

QUESTIONS = ("Which of these is a {c}?", "Which one is a {c}?", "Which option names a {c}?")
RECALLS = ("The question asks for a {c}.", "We need the option that is a {c}.")
CORRECT = ("{e} is a {c}.", "{e} is a kind of {c}.")
WRONG = ("{e} is a {o}, not a {c}.", "{e} is a kind of {o}, not a {c}.")
FAULTS = ("truncated", "malformed", "wrong_verdict")


def _check(cfg: SyntheticParams) -> None:
    if cfg.num_categories > MAX_CATEGORIES:
        raise ValueError(f"dataset.synthetic.num_categories: at most {MAX_CATEGORIES}")
    if cfg.entities_per_category > MAX_ENTITIES:
        raise ValueError(f"dataset.synthetic.entities_per_category: at most {MAX_ENTITIES}")


def _question(rng: random.Random, qid: str, category: str, answer: str, world: dict[str, list[str]],
              num_options: int) -> dict:
    others = rng.sample([c for c in world if c != category], num_options - 1)
    picks = [(answer, category)] + [(rng.choice(world[o]), o) for o in others]
    rng.shuffle(picks)
    labels = "ABCDE"[:num_options]
    gt = labels[[e for e, _ in picks].index(answer)]
    return {
        "id": qid,
        "question": rng.choice(QUESTIONS).format(c=category),
        "choices": [{"label": l, "text": e} for l, (e, _) in zip(labels, picks)],
        "answer": gt,
        "meta": {"category": category, "kinds": {l: c for l, (_, c) in zip(labels, picks)}},
    }


def generate(cfg: SyntheticParams, seed: int) -> dict[str, list[dict]]:
    """Deterministic train/valid/test question records for `cfg`, from `seed`."""
    _check(cfg)
    rng = random.Random(seed)
    world = {c: list(WORLD[c][: cfg.entities_per_category]) for c in list(WORLD)[: cfg.num_categories]}
    # Per category, the entities that only ever answer valid/test questions.
    held = {c: set(rng.sample(es, round(len(es) * cfg.test_holdout))) for c, es in world.items()}
    splits = {}
    for split, n in (("train", cfg.num_train), ("valid", cfg.num_valid), ("test", cfg.num_test)):
        rows = []
        for i in range(n):
            category = rng.choice(list(world))
            pool = [e for e in world[category] if (e in held[category]) == (split != "train")] or world[category]
            rows.append(_question(rng, f"syn-{split}-{i:05d}", category, rng.choice(pool), world, cfg.num_options))
        splits[split] = rows
    return splits


def offline_completion(record: dict, rng: random.Random, fault: Optional[str] = None) -> tuple[str, str]:
    """The teacher's answer to the rationalisation request for `record`: (content, finish_reason).

    Lines follow the requested order (gold option first, then the others by label); `fault` injects one of
    FAULTS so the filtering and re-ask paths of the teacher stage are exercised on every default build.
    """
    meta, gt = record["meta"], record["answer"]
    asked = meta["category"]
    text = {c["label"]: c["text"] for c in record["choices"]}
    declared = gt
    if fault == "wrong_verdict":
        declared = rng.choice([l for l in text if l != gt])
    lines = [f"Key Information: {rng.choice(RECALLS).format(c=asked)}"]
    for i, label in enumerate([gt] + [l for l in text if l != gt]):
        kind = meta["kinds"][label]
        if label == declared:
            verdict = "correct"
            reason = rng.choice(CORRECT if kind == asked else WRONG).format(e=text[label], c=asked, o=kind)
        else:
            verdict = "incorrect"
            reason = (rng.choice(WRONG).format(e=text[label], c=asked, o=kind) if kind != asked
                      else rng.choice(CORRECT).format(e=text[label], c=asked))
        lines.append(f"{'Explanations: ' if i == 0 else ''}{label} is {verdict}. Because {reason}")
    content = "\n".join(lines)
    if fault == "truncated":
        return content[: max(20, len(content) * 2 // 3)], "length"
    if fault == "malformed":
        # A chatty model that drops the required verdict format.
        content = content.replace(" is correct. Because", " looks right since").replace(
            " is incorrect. Because", " looks wrong since")
    return content, "stop"
