"""The embedded offline task: "which one is a <category>?" over a closed world of typed things.

Shaped so a tiny T5 trained from scratch on a CPU can learn the whole recall -> analyze -> summarize chain:
one-word options from a closed vocabulary, facts (thing -> category) that recur across many questions, and
analyses that always open with the option's own word and then state its category, so each reasoning step is
short and local. A share of the things (`test_holdout`) never answer a training question; they appear there
only as distractors, whose analyses still state their category. Valid and test questions are answered by
exactly those things, so scoring needs the facts recombined, not training questions recalled.

`offline_completion` is this task's teacher: it answers the rationalisation request (spec 2.4) from the
record's `meta`, in the text format a chat model is asked for, with optional realistic faults (spec 3.3).
"""
from __future__ import annotations

import random
from typing import Optional

from .params import SyntheticParams

# Category names all start with a consonant ("a fruit", never "an ..."); every thing is one common word.
WORLD: dict[str, tuple[str, ...]] = {
    "fruit": ("apple", "pear", "plum", "grape", "lemon", "mango", "peach", "cherry", "melon", "kiwi", "fig", "lime"),
    "tool": ("hammer", "saw", "drill", "wrench", "chisel", "shovel", "rake", "pliers", "axe", "ladder", "spade", "clamp"),
    "bird": ("eagle", "robin", "sparrow", "crow", "owl", "parrot", "swan", "duck", "heron", "pigeon", "hawk", "wren"),
    "vehicle": ("truck", "bicycle", "train", "bus", "tractor", "scooter", "van", "tram", "canoe", "wagon", "taxi", "jeep"),
    "drink": ("tea", "coffee", "milk", "juice", "water", "soda", "cocoa", "lemonade", "cider", "smoothie", "punch", "broth"),
    "color": ("red", "blue", "green", "yellow", "purple", "gold", "pink", "brown", "black", "white", "gray", "violet"),
    "vegetable": ("carrot", "onion", "potato", "cabbage", "leek", "radish", "spinach", "celery", "turnip", "pea", "bean", "kale"),
    "fish": ("salmon", "trout", "cod", "tuna", "carp", "pike", "herring", "perch", "bass", "eel", "sardine", "shark"),
}
MAX_CATEGORIES = len(WORLD)
MAX_ENTITIES = min(len(v) for v in WORLD.values())

QUESTIONS = ("Which one is a {c}?", "Which of these is a {c}?", "Pick the {c}.")
RECALLS = ("We need a {c}.", "The answer must be a {c}.")
# Each reason first names its option's letter and thing, as the block pairs them ("(B) water"): the student then
# looks the thing up from a letter it has just written, one attention hop, instead of two in one step.
FITS = ("{l} is {e}, a {c}.", "{l} is {e}, which is a {c}.")
MISFITS = ("{l} is {e}, a {o}, not a {c}.", "{l} is {e}, which is a {o}, not a {c}.")
FAULTS = ("truncated", "malformed", "wrong_verdict")
LABELS = "ABCDE"


def world(cfg: SyntheticParams) -> dict[str, list[str]]:
    """The categories and things `cfg` uses."""
    if cfg.num_categories > MAX_CATEGORIES:
        raise ValueError(f"dataset.synthetic.num_categories: at most {MAX_CATEGORIES}")
    if cfg.entities_per_category > MAX_ENTITIES:
        raise ValueError(f"dataset.synthetic.entities_per_category: at most {MAX_ENTITIES}")
    return {c: list(WORLD[c][: cfg.entities_per_category]) for c in list(WORLD)[: cfg.num_categories]}


def _question(rng: random.Random, qid: str, category: str, answer: str, things: dict[str, list[str]],
              num_options: int) -> dict:
    others = rng.sample([c for c in things if c != category], num_options - 1)
    picks = [(answer, category)] + [(rng.choice(things[o]), o) for o in others]
    rng.shuffle(picks)
    labels = LABELS[:num_options]
    return {
        "id": qid,
        "question": rng.choice(QUESTIONS).format(c=category),
        "choices": [{"label": l, "text": e} for l, (e, _) in zip(labels, picks)],
        "answer": labels[[e for e, _ in picks].index(answer)],
        "meta": {"category": category, "kinds": {l: c for l, (_, c) in zip(labels, picks)}},
    }


def generate(cfg: SyntheticParams, seed: int) -> dict[str, list[dict]]:
    """Deterministic {"train", "valid", "test"} question records for `cfg`, from `seed`."""
    things = world(cfg)
    rng = random.Random(seed)
    # Per category, the things that answer only valid/test questions (at least one answers training ones).
    held = {c: set(rng.sample(es, min(len(es) - 1, round(len(es) * cfg.test_holdout)))) for c, es in things.items()}
    out = {}
    for split, n in (("train", cfg.num_train), ("valid", cfg.num_valid), ("test", cfg.num_test)):
        rows = []
        for i in range(n):
            category = rng.choice(list(things))
            pool = [e for e in things[category] if (e in held[category]) != (split == "train")]
            rows.append(_question(rng, f"syn-{split}-{i:05d}", category, rng.choice(pool or things[category]),
                                  things, cfg.num_options))
        out[split] = rows
    return out


def offline_completion(record: dict, rng: random.Random, fault: Optional[str] = None) -> tuple[str, str]:
    """The teacher's answer to the rationalisation request for `record`: (content, finish_reason).

    Lines come in the requested order (gold option first, then the others by label). `fault` (one of
    FAULTS) injects a realistic defect so the teacher stage's filtering and re-ask paths run on every build.
    """
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")
    asked, kinds, gt = record["meta"]["category"], record["meta"]["kinds"], record["answer"]
    text = {c["label"]: c["text"] for c in record["choices"]}
    declared = rng.choice(sorted(set(text) - {gt})) if fault == "wrong_verdict" else gt
    lines = [f"Key Information: {rng.choice(RECALLS).format(c=asked)}"]
    for i, label in enumerate([gt] + sorted(set(text) - {gt})):
        kind = kinds[label]
        templates = FITS if kind == asked else MISFITS
        reason = rng.choice(templates).format(l=label, e=text[label], c=asked, o=kind)
        verdict = "correct" if label == declared else "incorrect"
        lines.append(f"{'Explanations: ' if i == 0 else ''}{label} is {verdict}. Because {reason}")
    content = "\n".join(lines)
    if fault == "truncated":  # ran out of tokens: cut mid-way through the explanations
        return content[: len(content) * 2 // 3].rstrip(), "length"
    if fault == "malformed":  # a chatty answer that ignores the requested verdict format
        content = content.replace(" is correct. Because", " looks right since").replace(
            " is incorrect. Because", " looks wrong since")
    return content, "stop"
