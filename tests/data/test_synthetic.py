import random
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from tinythinker.data import synthetic as S
from tinythinker.params import load

BASE = load(Path(__file__).resolve().parents[2] / "params.yaml")  # params.yaml holds every value

# The hand-written world (the structure tests need no invented words), small enough to read
CFG = replace(BASE.dataset.synthetic, num_train=400, num_valid=20, num_test=30, clues_per_category=6,
              entities_per_category=10, uniform_answers=False)
VERDICT = re.compile(r"^(?:Explanations: )?([A-E]) is (correct|incorrect)\. Because (.+)$")


@pytest.fixture(scope="module")
def data():
    return S.generate(CFG, seed=7)


def _answer_text(q):
    return next(c["text"] for c in q["choices"] if c["label"] == q["answer"])


def test_deterministic_per_seed(data):
    assert S.generate(CFG, seed=7) == data
    assert S.generate(CFG, seed=8) != data


def test_split_sizes_ids_and_labels(data):
    assert {k: len(v) for k, v in data.items()} == {"train": 400, "valid": 20, "test": 30}
    ids = [q["id"] for rows in data.values() for q in rows]
    assert len(ids) == len(set(ids))
    for q in (q for rows in data.values() for q in rows):
        labels = [c["label"] for c in q["choices"]]
        assert labels == list("ABCDE"[:CFG.num_options])
        assert q["answer"] in labels
        assert len({c["text"] for c in q["choices"]}) == len(labels)
        kinds = q["meta"]["kinds"]
        assert [l for l in labels if kinds[l] == q["meta"]["category"]] == [q["answer"]]  # exactly one fits


# README's clue world: its three flags over the default sizes
CLUE_WORLD = replace(BASE.dataset.synthetic, clues_per_category=12, entities_per_category=30, uniform_answers=True)


@pytest.mark.parametrize("which", ["small", "default", "clue world"])
def test_test_questions_recombine_training_facts(data, which):
    # at the default sizes every held-out answer is seen in training too, however rare
    if which != "small":
        data = S.generate(BASE.dataset.synthetic if which == "default" else CLUE_WORLD, seed=BASE.dataset.seed)
    train_answers = {_answer_text(q) for q in data["train"]}
    train_options = {c["text"] for q in data["train"] for c in q["choices"]}
    for split in ("valid", "test"):
        answers = {_answer_text(q) for q in data[split]}
        assert not answers & train_answers  # held-out things never answer a training question ...
        assert answers <= train_options  # ... but their facts are seen there, as distractors


def test_no_holdout_uses_every_thing_everywhere():
    d = S.generate(replace(BASE.dataset.synthetic, num_train=200, num_valid=10, num_test=50, test_holdout=0.0), seed=1)
    assert {_answer_text(q) for q in d["test"]} & {_answer_text(q) for q in d["train"]}


def test_world_limits():
    with pytest.raises(ValueError, match="num_categories"):
        S.generate(replace(BASE.dataset.synthetic, num_categories=S.MAX_CATEGORIES + 1), seed=0)
    with pytest.raises(ValueError, match="entities_per_category"):
        S.generate(replace(BASE.dataset.synthetic, entities_per_category=S.MAX_ENTITIES + 1), seed=0)


def _lines(content):
    return content.split("\n")


def test_completion_format_and_order(data):
    rng = random.Random(0)
    for q in data["train"][:40]:
        content, finish = S.offline_completion(q, rng)
        assert finish == "stop"
        first, *rest = _lines(content)
        assert first.startswith("Key Information: ")
        # the recall brings what the question does not state: the category its clue implies
        assert q["meta"]["clue"] in q["question"] and q["meta"]["category"] not in re.findall(r"\w+", q["question"])
        assert q["meta"]["clue"] in first and f"a {q['meta']['category']}" in first
        assert rest[0].startswith("Explanations: ")
        parsed = [VERDICT.match(l).groups() for l in rest]
        others = sorted(c["label"] for c in q["choices"] if c["label"] != q["answer"])
        assert [p[0] for p in parsed] == [q["answer"]] + others  # GT first, then alphabetical
        assert [p[0] for p in parsed if p[1] == "correct"] == [q["answer"]]
        text = {c["label"]: c["text"] for c in q["choices"]}
        for label, verdict, reason in parsed:  # the reason names the option, its thing and its category
            assert reason.startswith(f"{label} is {text[label]}, ") and reason.endswith(".")
            assert f"a {q['meta']['kinds'][label]}" in reason
            assert ("not a" in reason) == (verdict == "incorrect")


def test_clues_imply_one_category_each():
    owner = {}
    for c, clues in S.CLUES.items():
        for k in clues:
            assert owner.setdefault(k, c) == c, f"clue {k!r} fits {owner[k]} and {c}"
    assert set(S.CLUES) == set(S.WORLD)


def test_invented_things_and_clues_extend_the_world():
    """Beyond the hand-written words, made-up things and properties: the same for every seed, each owned by one
    category, never a word of the hand-written world, and one token-like word each."""
    big = replace(CFG, entities_per_category=40, clues_per_category=20, num_train=600)
    things, clues = S.world(big), S.invented_clues(20 - S.NAMED_CLUES)
    assert all(len(es) == 40 and es[: S.NAMED_ENTITIES] == list(S.WORLD[c]) for c, es in things.items())
    every_thing = [e for es in things.values() for e in es]
    assert len(set(every_thing)) == len(every_thing) and all(re.fullmatch(r"[a-z]+", e) for e in every_thing)
    every_clue = [k for ks in clues.values() for k in ks] + [k for ks in S.CLUES.values() for k in ks]
    assert len(set(every_clue)) == len(every_clue)
    assert S.invented(5) == S.invented(5) and S.invented(5)["bird"] == S.invented(9)["bird"][:5]
    d = S.generate(big, seed=4)
    asked = Counter(q["meta"]["clue"] for q in d["train"])
    assert len(asked) > 6 * 12 and any(k.startswith("is ") and k.endswith("sh") for k in asked)
    for q in d["train"][:50]:  # an invented clue still implies exactly one option's category
        owners = [c for c, ks in S.CLUES.items() if q["meta"]["clue"] in ks] or \
                 [c for c, ks in clues.items() if q["meta"]["clue"] in ks]
        assert owners == [q["meta"]["category"]]
    with pytest.raises(ValueError, match="clues_per_category"):
        S.generate(replace(CFG, clues_per_category=S.MAX_CLUES + 1), seed=0)


def test_long_tail_of_clues_and_things():
    d = S.generate(replace(CFG, num_train=2000, num_valid=10, num_test=10), seed=3)
    clues = Counter(q["meta"]["clue"] for q in d["train"])
    things = Counter(c["text"] for q in d["train"] for c in q["choices"])
    # Zipf 1 over 6 clues: the commonest of a category about 6x its rarest; things likewise over 10 ranks
    assert max(clues.values()) > 4 * min(clues.values()) and min(clues.values()) >= 5
    assert max(things.values()) > 4 * min(things.values())
    answers = Counter(_answer_text(q) for q in d["train"])
    assert max(answers.values()) > 4 * min(answers.values())  # answers follow the tail too, unless ...
    alike = S.generate(replace(CFG, num_train=2000, num_valid=10, num_test=10, uniform_answers=True), seed=3)
    answers = Counter(_answer_text(q) for q in alike["train"])
    assert max(answers.values()) < 2 * min(answers.values())  # ... uniform_answers asks about each alike
    alike_things = Counter(c["text"] for q in alike["train"] for c in q["choices"])
    assert max(alike_things.values()) > 4 * min(alike_things.values())  # the distractors keep the tail
    flat = S.generate(replace(CFG, num_train=2000, num_valid=10, num_test=10, zipf=0.0),
                      seed=3)
    flat_clues = Counter(q["meta"]["clue"] for q in flat["train"])
    assert max(flat_clues.values()) < 2 * min(flat_clues.values())


def test_wrong_fact_keeps_the_verdicts_and_the_answer(data):
    rng = random.Random(5)
    for q in data["train"][:40]:
        content, finish = S.offline_completion(q, rng, wrong_fact=True)
        parsed = [VERDICT.match(l).groups() for l in _lines(content)[1:]]
        assert finish == "stop" and [p[0] for p in parsed if p[1] == "correct"] == [q["answer"]]
        text, kinds = {c["label"]: c["text"] for c in q["choices"]}, q["meta"]["kinds"]
        wrong = [l for l, _, reason in parsed if f"{text[l]}, a {kinds[l]}" not in reason
                 and f"{text[l]}, which is a {kinds[l]}" not in reason]
        assert len(wrong) == 1 and wrong[0] != q["answer"]  # one distractor's category is wrong ...
        reason = next(r for l, _, r in parsed if l == wrong[0])
        assert reason.endswith(f"not a {q['meta']['category']}.")  # ... and it is still rejected


def test_wrong_fact_with_two_options_has_nothing_to_confuse():
    """Two options have two categories: no third to mix one up with (was an IndexError in the request stage)."""
    d = S.generate(replace(CFG, num_options=2, num_categories=2, num_train=20), seed=2)
    rng = random.Random(0)
    for q in d["train"]:
        content, finish = S.offline_completion(q, rng, wrong_fact=True)
        assert finish == "stop"
        text, kinds = {c["label"]: c["text"] for c in q["choices"]}, q["meta"]["kinds"]
        assert all(f"{text[l]}, a {kinds[l]}" in content or f"{text[l]}, which is a {kinds[l]}" in content
                   for l in text)


def test_completion_is_deterministic_and_varied(data):
    q = data["train"][0]
    assert S.offline_completion(q, random.Random(3)) == S.offline_completion(q, random.Random(3))
    rng = random.Random(3)
    assert len({S.offline_completion(q, rng)[0] for _ in range(12)}) > 1


def test_faults_break_what_they_should(data):
    q = data["train"][0]
    rng = random.Random(0)
    full, _ = S.offline_completion(q, random.Random(0))
    content, finish = S.offline_completion(q, rng, "truncated")
    assert finish == "length" and len(content) < len(full) and len(_lines(content)) <= len(_lines(full))

    content, finish = S.offline_completion(q, rng, "malformed")
    assert finish == "stop" and not any(VERDICT.match(l) for l in _lines(content)[1:])

    for _ in range(5):
        content, finish = S.offline_completion(q, rng, "wrong_verdict")
        parsed = [VERDICT.match(l).groups() for l in _lines(content)[1:]]
        correct = [p[0] for p in parsed if p[1] == "correct"]
        assert finish == "stop" and len(correct) == 1 and correct[0] != q["answer"]
        assert len(parsed) == CFG.num_options

    assert set(S.FAULTS) == {"truncated", "malformed", "wrong_verdict"}
    with pytest.raises(ValueError, match="unknown fault"):
        S.offline_completion(q, rng, "nonsense")


def test_named_categories_without_clues():
    """clues_per_category 0: the question names the category, the recall restates it."""
    d = S.generate(replace(CFG, clues_per_category=0), seed=7)
    rng = random.Random(1)
    for q in d["train"][:30]:
        c = q["meta"]["category"]
        assert q["meta"]["clue"] is None and c in re.findall(r"\w+", q["question"])
        first = _lines(S.offline_completion(q, rng)[0])[0]
        assert first in {f"Key Information: {r.format(c=c)}" for r in S.NAMED_RECALLS}


def test_corpus_states_every_fact_in_every_wording_and_flags_the_held_out_things(data):
    text, probe = S.corpus(CFG, seed=7)
    world, clues = S.world(CFG), S.clues_of(CFG)
    n_things, n_clues = sum(map(len, world.values())), sum(map(len, clues.values()))
    n_facts = n_things * len(S.THING_FACTS) + n_clues * len(S.CLUE_FACTS)  # each fact once in every wording
    assert len(text) == 2 * n_facts and S.corpus(CFG, seed=7) == (text, probe)
    facts, lists = text[:n_facts], text[n_facts:]
    assert len(set(facts)) == n_facts
    assert "an apple is a fruit." in facts and "a pear is a fruit." in facts  # the article fits the word
    # none of the task's formats: no stage markers, no "option", no question
    assert not any(re.search(r"Recall:|Analyze:|option|answer is|Which|\?", t) for t in text)
    # the lists: every item a thing of the world, read back right at its label
    things = {e for es in world.values() for e in es}
    for t in lists:
        items = dict(re.findall(r"\(([A-E])\) (\w+)", t))
        m = re.search(r"item ([A-E]) is the (\w+)\.$", t)
        label, thing = m.group(1, 2) if m else re.search(r"has the (\w+) at ([A-E])\.$", t).group(2, 1)
        assert 2 <= len(items) <= 5 and list(items) == list("ABCDE"[:len(items)]) and set(items.values()) <= things
        assert items[label] == thing
    # one probe per fact, answered by the corpus: a thing's wording cut before its category
    assert len(probe) == n_things + n_clues
    for r in probe:
        assert sum(t.startswith(r["prompt"] + " ") and t.endswith(f" {r['answer']}.") for t in text) == 1
    # held out = the things that answer valid/test questions only (seeded as in generate)
    held = {r["prompt"].split()[1] for r in probe if r["held_out"]}
    answers = {s: {_answer_text(q) for q in data[s]} for s in data}
    assert answers["valid"] | answers["test"] <= held and not held & answers["train"]
    assert {r["prompt"].split()[1] for r in S.corpus(CFG, seed=8)[1] if r["held_out"]} != held
