"""The embedded offline task: "which one <clue>?" over a closed world of typed things.

Built so that every step of the chain carries knowledge the question does not state, and can fail:

- **Recall** turns a clue into the category it implies: the question says "Which one has feathers?", the
  recall says "Something that has feathers is a bird." Every category has several clues (and the teacher
  several recall wordings), drawn with a long-tail (Zipf) frequency: the common clues are learned early,
  the rare ones late or not at all within the budget.
- **Analyze** states each option's category against the recalled one ("B is trout, a fish, not a bird."):
  thing -> category facts, again long-tailed, so some things are seen hundreds of times and some a handful.
  A wrong recall carries into every analysis, as in real chains.
- **Summarize** picks the option whose analysis fits.
- **A world bigger than the word lists.** Beyond 12 common words per category come invented ones ("a zadrim is a
  fish") and beyond 6 hand-written clues invented properties ("is dukish"): facts no spelling gives away, as many
  as `entities_per_category` and `clues_per_category` ask for (README's clue world: 30 things, 12 clues).
- **Held-out answers.** A share of each category's things (`test_holdout`) never answer a training question;
  they appear there only as distractors, whose analyses still state their category. Valid and test questions
  are answered by exactly those things, so scoring needs facts recombined, not training questions recalled.
  With `uniform_answers` answers are drawn alike from their pool and only distractors with the long tail:
  every held-out fact is asked about equally often, however rarely training showed it.
- **An imperfect teacher.** `offline_completion` answers the rationalisation request (spec 2.4) from the
  record's `meta` in the text format a chat model is asked for. With `wrong_fact` one distractor's analysis
  names a wrong category although the verdict and the answer stay right, as real LLM rationales do: the
  build stage cannot tell. Format faults (spec 3.3) exercise the parser and the re-ask rounds.

The answer-only student (`sft.stage_type=summarize`) has to do all of this in one step with no written
intermediate; the full chain gets each piece as its own short, supervised step. `clues_per_category: 0` names
the category in the question ("Which one is a bird?") and the recall only restates it. What a run of this task
shows, over seeds, is in docs/embedded-task.md.
"""
from __future__ import annotations

import functools
import random
from typing import Optional, Sequence

from ..params import MAX_CATEGORIES, MAX_CLUES, MAX_ENTITIES, SyntheticParams

# Category names all start with a consonant ("a fruit", never "an ..."); every hand-written thing is one common word.
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
# What a question says instead of the category: each clue fits one category only, most common first.
CLUES: dict[str, tuple[str, ...]] = {
    "fruit": ("grows on a tree", "tastes sweet", "is picked in an orchard", "is sliced for a dessert",
              "has a pit or pips", "ripens in the summer sun"),
    "tool": ("is used to fix things", "hangs in a workshop", "is kept on a workbench", "helps build a shed",
             "is sold at a hardware store", "needs a strong grip"),
    "bird": ("has feathers", "builds a nest", "has a beak", "sings at dawn", "lays eggs and flies",
             "migrates in the autumn"),
    "vehicle": ("has wheels", "carries passengers", "needs a driver", "moves along a road",
                "has a license plate", "waits at a depot"),
    "drink": ("is poured into a cup", "quenches thirst", "is sipped slowly", "is served in a glass",
              "comes in a bottle", "is stirred with a spoon"),
    "color": ("is seen in a rainbow", "is mixed on a palette", "is used to paint a wall", "names a shade",
              "is picked for a dress", "fades in the sun"),
    "vegetable": ("grows in a garden bed", "goes in a soup", "is dug from the soil", "is sold by a greengrocer",
                  "is steamed for dinner", "is chopped for a stew"),
    "fish": ("has fins and gills", "swims in a river", "lives in the sea", "is caught with a net",
             "lays eggs in a stream", "is kept in an aquarium"),
}
assert len(WORLD) == MAX_CATEGORIES, "params.MAX_CATEGORIES counts the hand-written categories"
NAMED_ENTITIES = min(len(v) for v in WORLD.values())
NAMED_CLUES = min(len(v) for v in CLUES.values())

QUESTIONS = ("Which one {k}?", "Which of these {k}?")
NAMED = ("Which one is a {c}?", "Which of these is a {c}?", "Pick the {c}.")  # clues_per_category: 0
NAMED_RECALLS = ("We need a {c}.", "The answer must be a {c}.")
# The recall names what the clue implies; the third wording is the teacher's rare one.
RECALLS = ("Something that {k} is a {c}.", "What {k} must be a {c}.", "Only a {c} {k}.")
RECALL_WEIGHTS = (6, 3, 1)
# Each reason first names its option's letter and thing, as the block pairs them ("(B) water"): the student then
# looks the thing up from a letter it has just written, one attention hop, instead of two in one step.
FITS = ("{l} is {e}, a {c}.", "{l} is {e}, which is a {c}.")
MISFITS = ("{l} is {e}, a {o}, not a {c}.", "{l} is {e}, which is a {o}, not a {c}.")
FAULTS = ("truncated", "malformed", "wrong_verdict")
LABELS = "ABCDE"


def zipf(n: int, s: float) -> list[float]:
    """Weights of ranks 1..n under Zipf's law with exponent s (s = 0: uniform)."""
    return [1.0 / (r ** s) for r in range(1, n + 1)]


# Beyond the common words, each category gets invented ones ("a dravel is a bird"): a fact no spelling gives away,
# which the student can only learn from the data, as much of a real LLM's knowledge looks to a small student.
ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl", "pl", "tr", "sk")
VOWELS = ("a", "e", "i", "o", "u")
CODAS = ("", "n", "r", "l", "m", "x", "sk", "nd")


@functools.lru_cache(maxsize=None)
def _invent(n: int, salt: str, codas: tuple[str, ...], taken: frozenset[str]) -> dict[str, tuple[str, ...]]:
    rng = random.Random(f"tinythinker-invented-{salt}")
    seen, out = set(taken), {c: [] for c in WORLD}
    for c in WORLD:
        while len(out[c]) < n:
            w = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(2)) + rng.choice(codas)
            if w not in seen:
                seen.add(w)
                out[c].append(w)
    return {c: tuple(ws) for c, ws in out.items()}


def invented(n: int) -> dict[str, list[str]]:
    """n made-up two-syllable things per category, none a word of WORLD; the same for every seed, and a bigger
    world only adds words (the first n are always the same)."""
    pool = _invent(MAX_ENTITIES, "things", CODAS, frozenset(w for ws in WORLD.values() for w in ws) | set(WORLD))
    return {c: list(ws[:n]) for c, ws in pool.items()}


def invented_clues(n: int) -> dict[str, list[str]]:
    """n made-up properties per category ("is dukish") beyond the hand-written clues, so the recall's knowledge
    has a long tail of its own; fixed like `invented`."""
    return {c: [f"is {w}" for w in ws[:n]] for c, ws in _invent(MAX_CLUES, "clues", ("sh",), frozenset()).items()}


def world(cfg: SyntheticParams) -> dict[str, list[str]]:
    """The categories and things `cfg` uses (its sizes are checked when params load: SyntheticParams)."""
    extra = invented(max(0, cfg.entities_per_category - NAMED_ENTITIES))
    return {c: (list(WORLD[c]) + extra[c])[: cfg.entities_per_category] for c in list(WORLD)[: cfg.num_categories]}


def _pick(rng: random.Random, items: Sequence[str], weights: Sequence[float]) -> str:
    return rng.choices(items, weights=weights)[0]


def clues_of(cfg: SyntheticParams) -> dict[str, list[str]]:
    """The clues of each category `cfg` uses, most common first."""
    extra = invented_clues(max(0, cfg.clues_per_category - NAMED_CLUES))
    return {c: (list(CLUES[c]) + extra[c])[: cfg.clues_per_category] for c in world(cfg)}


Things = dict[str, list[str]]  # category -> its things (or its clues), as `world` and `clues_of` give them


def _ranked(cfg: SyntheticParams, rng: random.Random,
            things: Optional[Things] = None) -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """Per category, its things from common to rare (drawn per seed, so the tail is not always the same words),
    and the things that answer only valid/test questions (at least one answers training ones), spread over the
    frequency ranks so the held-out facts are long-tailed as well."""
    ranked = {c: rng.sample(es, len(es)) for c, es in (things or world(cfg)).items()}
    k = min(cfg.entities_per_category - 1, round(cfg.entities_per_category * cfg.test_holdout))
    held = {c: {es[int((j + 0.5) * len(es) / k)] for j in range(k)} for c, es in ranked.items()}
    return ranked, held


def generate(cfg: SyntheticParams, seed: int, things: Optional[Things] = None,
             clues: Optional[Things] = None) -> dict[str, list[dict]]:
    """Deterministic {"train", "valid", "test"} question records for `cfg`, from `seed`; in the world `things`
    and `clues` when given (another world than `cfg`'s, as data/worlds.py makes, of the sizes `cfg` says)."""
    things, clues = things or world(cfg), clues or clues_of(cfg)
    rng = random.Random(seed)
    ranked, held = _ranked(cfg, rng, things)
    weight = {e: w for es in ranked.values() for e, w in zip(es, zipf(len(es), cfg.zipf))}
    clue_w = zipf(cfg.clues_per_category, cfg.zipf)
    named = cfg.clues_per_category == 0
    out = {}
    for split, n in (("train", cfg.num_train), ("valid", cfg.num_valid), ("test", cfg.num_test)):
        rows = []
        for i in range(n):
            category = rng.choice(list(things))
            pool = [e for e in ranked[category] if (e in held[category]) != (split == "train")] or ranked[category]
            # Alike, every held-out fact is tested equally however rarely training showed it; else with the tail.
            answer = rng.choice(pool) if cfg.uniform_answers else _pick(rng, pool, [weight[e] for e in pool])
            others = rng.sample([c for c in things if c != category], cfg.num_options - 1)
            picks = [(answer, category)] + [(_pick(rng, ranked[o], [weight[e] for e in ranked[o]]), o)
                                            for o in others]
            rng.shuffle(picks)
            clue = None if named else _pick(rng, clues[category], clue_w)
            labels = LABELS[: cfg.num_options]
            rows.append({
                "id": f"syn-{split}-{i:05d}",
                "question": rng.choice(NAMED).format(c=category) if named else rng.choice(QUESTIONS).format(k=clue),
                "choices": [{"label": l, "text": e} for l, (e, _) in zip(labels, picks)],
                "answer": labels[[e for e, _ in picks].index(answer)],
                "meta": {"category": category, "clue": clue, "kinds": {l: c for l, (_, c) in zip(labels, picks)}},
            })
        out[split] = rows
    return out


# The pretraining corpus states the world's facts in plain sentences, in wordings that are none of the task's
# (no "Recall:", no option letters), as a real student's pretraining text is not its fine-tuning data. Each
# probe wording ends where the category follows, so a decoder-only student can complete it too.
THING_FACTS = ("{a} {e} is a {c}.", "the {e} is a kind of {c}.", "people call the {e} a {c}.",
               "there is a {c} called the {e}.", "one {c} is the {e}.")
CLUE_FACTS = ("a {c} {k}.", "every {c} {k}.", "if a thing {k}, it is a {c}.", "what marks a {c}: it {k}.")
THING_PROBE, CLUE_PROBE = "the {e} is a kind of", "if a thing {k}, it is a"
# Reading, beside knowing: a pretrained T5 can find what a label points to in a list (C4 is full of them); a
# student that cannot copies the wrong option's thing ("B is shovel" for "(B) dobrol"). Lettered lists of the
# world's things, each read back at one label, in a wording that is not the task's.
LIST_READS = ("in the list {items}, item {l} is the {e}.", "the list {items} has the {e} at {l}.")


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def corpus(cfg: SyntheticParams, seed: int, things: Optional[Things] = None,
           clues: Optional[Things] = None) -> tuple[list[str], list[dict]]:
    """The embedded student's pretraining text and its probe: every fact of the world `cfg` (each thing's category,
    held-out things included, and each clue's) once in every wording, uniform over facts (the long tail is the
    questions', not the world's); and one probe per fact, a wording cut before its category, flagged `held_out`
    for the things that answer only valid/test questions (`seed` draws which, as in `generate`); of another world
    when `things` and `clues` are given."""
    things, clues = things or world(cfg), clues or clues_of(cfg)
    _, held = _ranked(cfg, random.Random(seed), things)
    text, probe = [], []
    for c, es in things.items():
        for e in es:
            text += [t.format(a=_a(e), e=e, c=c) for t in THING_FACTS]
            probe.append({"prompt": THING_PROBE.format(e=e), "answer": c, "held_out": e in held[c]})
        for k in clues[c]:
            text += [t.format(c=c, k=k) for t in CLUE_FACTS]
            probe.append({"prompt": CLUE_PROBE.format(k=k), "answer": c, "held_out": False})
    return text + [read.format(e=e) for read, e in lists(things, seed, len(text))], probe


def lists(things: Things, seed: int, n: int) -> list[tuple[str, str]]:
    """`n` lettered lists of 2 to 5 of the world's things ("(A) owl (B) zadrim"), each read back at one label:
    (the sentence with `{e}` where the read-back thing goes, the thing)."""
    rng = random.Random(f"tinythinker-lists-{seed}")
    pool = [e for es in things.values() for e in es]
    out = []
    for _ in range(n):
        picks = rng.sample(pool, rng.randint(2, min(5, len(pool))))
        at = rng.randrange(len(picks))
        items = " ".join(f"({LABELS[i]}) {e}" for i, e in enumerate(picks))
        out.append((rng.choice(LIST_READS).format(items=items, l=LABELS[at], e="{e}"), picks[at]))
    return out


def offline_completion(record: dict, rng: random.Random, fault: Optional[str] = None,
                       wrong_fact: bool = False) -> tuple[str, str]:
    """The teacher's answer to the rationalisation request for `record`: (content, finish_reason).

    Lines come in the requested order (gold option first, then the others by label). `fault` (one of
    FAULTS) injects a format defect the parser must catch; `wrong_fact` makes one distractor's analysis name
    a wrong category while every verdict stays right, which no parser can catch.
    """
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")
    meta, gt = record["meta"], record["answer"]
    asked, kinds = meta["category"], dict(meta["kinds"])
    text = {c["label"]: c["text"] for c in record["choices"]}
    others = sorted(set(text) - {gt})
    if wrong_fact and others:
        victim = rng.choice(others)
        # confused with another option's category, as a model mixing up the options would; with two options
        # there is none to confuse it with, and the rationale stays right
        confusable = sorted(set(kinds.values()) - {asked, kinds[victim]})
        if confusable:
            kinds[victim] = rng.choice(confusable)
    declared = rng.choice(others) if fault == "wrong_verdict" else gt
    if meta.get("clue") is None:  # the question names the category: the recall restates it
        recall = rng.choice(NAMED_RECALLS).format(c=asked)
    else:
        recall = rng.choices(RECALLS, weights=RECALL_WEIGHTS)[0].format(k=meta["clue"], c=asked)
    lines = [f"Key Information: {recall}"]
    for i, label in enumerate([gt] + others):
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
