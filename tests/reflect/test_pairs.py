"""Preference pairs from hand-written chains (spec 6.2 with the project's fixes)."""
import random
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import BASE
from tinythinker import protocol as P
from tinythinker.params import ParamsError, load
from tinythinker.reflect.pairs import analyze_pairs, iteration_init, recall_pairs, summarize_pairs


BLOCK = "Which is a metal?\n(A) wood (B) iron (C) glass"
BLOCKS = {"q1": BLOCK, "q2": "Is ice cold?\n(A) yes (B) no"}
ANALYSES = {"A": "wood is not a metal.", "B": "iron is a metal.", "C": "glass is not a metal."}


def row(qid, recall, pred, gt="B", analyses=None):
    return {"qid": qid, "gt": gt, "recall": recall, "prediction": pred, "analyses": analyses or ANALYSES}


def teacher(qid, recall):
    return {"qid": qid, "block": BLOCKS[qid], "gt": "B", "recall": recall, "analyses": {**ANALYSES, "B": "T."}}


def test_recall_pairs_skip_questions_without_rejected_and_remove_common_recalls():
    chains = {
        "q1": [row("q1", "good.", "B"), row("q1", "good.", "B"), row("q1", "both.", "B"),
               row("q1", "both.", "A"), row("q1", "bad.", "A")],
        "q2": [row("q2", "fine.", "B"), row("q2", "also fine.", "B")],  # all correct: nothing to prefer
    }
    pairs = recall_pairs(chains, {}, random.Random(0), BLOCKS)
    assert [(p["qid"], p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("q1", f"{BLOCK}\nRecall:", "good.", "bad.")]  # "both." led to either answer: dropped from both sides
    assert pairs[0]["analyses"] == ANALYSES and not pairs[0]["teacher"]

    only_common = {"q1": [row("q1", "x.", "B"), row("q1", "x.", "C")]}
    assert recall_pairs(only_common, {}, random.Random(0), BLOCKS) == []


def test_recall_pairs_more_chosen_resamples_rejected():
    chains = {"q1": [row("q1", f"good {i}.", "B") for i in range(4)] + [row("q1", "bad 1.", "A"),
                                                                        row("q1", "bad 2.", None)]}
    pairs = recall_pairs(chains, {}, random.Random(1), BLOCKS)
    assert [p["chosen"] for p in pairs] == [f"good {i}." for i in range(4)]
    rejected = Counter(p["rejected"] for p in pairs)
    assert set(rejected) == {"bad 1.", "bad 2."} and sum(rejected.values()) == 4  # None counts as wrong
    assert [p["rejected"] for p in pairs][:2] == ["bad 1.", "bad 2."]  # every distinct one used first


def test_recall_pairs_all_rejected_topped_up_from_teacher_of_that_qid():
    chains = {"q1": [row("q1", "bad 1.", "A"), row("q1", "bad 2.", "C"), row("q1", "bad 3.", None)]}
    teachers = {"q1": [teacher("q1", "teacher 1."), teacher("q1", "teacher 2.")],
                "q2": [teacher("q2", "other question.")]}
    pairs = recall_pairs(chains, teachers, random.Random(2), BLOCKS)
    assert [p["rejected"] for p in pairs] == ["bad 1.", "bad 2.", "bad 3."]
    chosen = Counter(p["chosen"] for p in pairs)
    assert set(chosen) == {"teacher 1.", "teacher 2."} and sum(chosen.values()) == 3  # both before a repeat
    assert all(p["teacher"] and p["analyses"]["B"] == "T." for p in pairs)

    # more rejected than chosen: the student's own correct recall stays, teachers fill the gap
    chains["q1"].append(row("q1", "own.", "B"))
    pairs = recall_pairs(chains, teachers, random.Random(2), BLOCKS)
    assert pairs[0]["chosen"] == "own." and not pairs[0]["teacher"]
    assert len(pairs) == 3 and all(p["teacher"] for p in pairs[1:])

    # no teacher chain and no correct chain: no pairs rather than a crash
    assert recall_pairs({"q1": chains["q1"][:3]}, {}, random.Random(2), BLOCKS) == []


def chain(pred, **changes):
    return {"prediction": pred, "analyses": {**ANALYSES, **changes}}


def group(chains, backup=(), options=("A", "B", "C")):
    return {"qid": "q1", "block": BLOCK, "options": list(options), "gt": "B", "recall": "Metals conduct.",
            "chains": chains, "backup": list(backup)}


def prompt(letter):
    return P.analyze_prompt(BLOCK, letter, "Metals conduct.")


def test_analyze_pairs_two_records_per_pair_with_gold_and_wrong_option():
    g = group([chain("B"), chain("B"), chain("A", A="wood is a metal.", B="iron is soft.")])
    assert analyze_pairs([g], random.Random(0)) == [
        {"qid": "q1", "prompt": prompt("B"), "chosen": "iron is a metal.", "rejected": "iron is soft."},
        {"qid": "q1", "prompt": prompt("A"), "chosen": "wood is not a metal.", "rejected": "wood is a metal."}]


def test_analyze_pairs_topped_up_not_replaced():
    good = [chain("B", C=f"glass {i}.") for i in range(2)]
    bad = [chain("C", C=f"glass is iron {i}.", B=f"no {i}.") for i in range(5)]
    recs = analyze_pairs([group(good + bad)], random.Random(3))
    gold = [r for r in recs if r["prompt"] == prompt("B")]
    assert [r["rejected"] for r in gold] == [f"no {i}." for i in range(5)]  # one pair per rejected set
    wrong = [r for r in recs if r["prompt"] == prompt("C")]
    # both sampled correct sets are kept (the original replaced them), then repeated up to 5
    assert [r["chosen"] for r in wrong][:2] == ["glass 0.", "glass 1."]
    assert len(wrong) == 5 and {r["chosen"] for r in wrong} == {"glass 0.", "glass 1."}


def test_analyze_pairs_backup_when_nothing_correct_and_rejected_resampled():
    bad = [chain("A", A=f"wood {i}.", B=f"not iron {i}.") for i in range(2)]
    recs = analyze_pairs([group(bad, backup=[ANALYSES])], random.Random(4))
    assert [(r["prompt"], r["chosen"]) for r in recs] == [(prompt("B"), "iron is a metal."),
                                                         (prompt("A"), "wood is not a metal.")] * 2
    assert analyze_pairs([group(bad)], random.Random(4)) == []  # no backup either: skipped

    good = [chain("B", A=f"good {i}.") for i in range(3)]
    recs = analyze_pairs([group(good + bad[:1])], random.Random(4))
    assert len(recs) == 6 and {r["rejected"] for r in recs} == {"not iron 0.", "wood 0."}


def test_analyze_pairs_invalid_predictions_dropped_per_row():
    rows = [chain("B"),
            chain(None, B="none."),  # no answer found
            chain("D", B="d."),  # not an option of this question
            {"prediction": "C", "analyses": {"A": "a.", "B": "b."}},  # no analysis of the option it picked
            chain("C", B="really bad.")]  # the one usable rejected row
    recs = analyze_pairs([group(rows)], random.Random(5))
    # one pair; its record for option C is left out because both sides analyse C with the same text
    assert [(r["prompt"], r["rejected"]) for r in recs] == [(prompt("B"), "really bad.")]


def test_analyze_pairs_no_rejected_skipped_and_common_sets_removed():
    assert analyze_pairs([group([chain("B"), chain("B", A="x.")])], random.Random(0)) == []
    assert analyze_pairs([group([chain("B"), chain("A")])], random.Random(0)) == []  # same set both ways


def test_unknown_iteration_names_the_key():
    p = BASE.replace(**{"dpo.iterations": {"iter1": {"init": "models/sft"}}})
    assert iteration_init(p, "iter1") == "models/sft"
    with pytest.raises(ParamsError, match=r"dpo\.iterations\.iter9"):
        iteration_init(p, "iter9")


def test_summarize_pairs_right_against_wrong_summaries_of_one_prompt():
    right, wrong, none = P.summarize_target("B"), P.summarize_target("A"), "So the answer is unclear."
    groups = [{"qid": "q1", "gt": "B", "prompt": "p1", "summaries": [wrong, right, wrong, none, right]},
              {"qid": "q2", "gt": "B", "prompt": "p2", "summaries": [right, right]},   # never wrong: no pair
              {"qid": "q3", "gt": "B", "prompt": "p3", "summaries": [wrong, none]}]    # never right: no pair
    recs = summarize_pairs(groups, random.Random(0))
    # distinct texts: one right, two wrong (no answer counts wrong) -> the right one twice
    assert recs == [{"qid": "q1", "prompt": "p1", "chosen": right, "rejected": wrong},
                    {"qid": "q1", "prompt": "p1", "chosen": right, "rejected": none}]


# --- the stage, with the chain scripted (the real chain has its own tests) -------------------------------
class Model:
    def to(self, device):
        return self


def scripted_chain(calls):
    def run_chain(model, tokenizer, questions, *, recalls=None, recall=None, analyze=None, summarize=None,
                  batch_size=None, desc=None, stage_type="recall_analyze_summarize", share_prompts=True):
        import torch

        assert share_prompts  # the stage encodes each repeated prompt once
        calls.append({"qids": [q["qid"] for q in questions], "recalls": recalls, "recall": recall,
                      "analyze": analyze, "summarize": summarize, "draw": torch.rand(4).tolist()})
        seen, out = Counter(), []
        for i, q in enumerate(questions):
            key = (q["qid"], recalls and recalls[i])
            j = seen[key]
            seen[key] += 1
            if recalls is None:  # recall sampling: q1 right once then wrong, q2 always right
                rec, pred = f"{q['qid']} recall {j}.", "B" if q["qid"] == "q2" or j == 0 else "A"
                out.append({"qid": q["qid"], "gt": q["gt"], "recall": rec, "analyses": ANALYSES, "prediction": pred,
                            "summary": P.summarize_target(pred), "prompt": f"{q['qid']} summarize {j}"})
            else:  # analyze sampling: alternately right and wrong, a different analysis set each time
                pred = "B" if j % 2 == 0 else "A"
                out.append({"qid": q["qid"], "gt": q["gt"], "recall": recalls[i],
                            "analyses": {x: f"{x} take {j}." for x in q["options"]}, "prediction": pred})
        return out
    return run_chain


@pytest.mark.parametrize("stage_type", ["recall_analyze", "recall", "analyze", "recall_analyze_summarize", "summarize"])
def test_dpo_sample_stage(tmp_path, monkeypatch, stage_type):
    import tinythinker.lm.chain as chain
    import tinythinker.lm.model as student
    from tinythinker.io import read_json, read_jsonl, write_jsonl
    from tinythinker.paths import Paths
    from tinythinker.reflect.stages import dpo_sample

    paths = Paths(tmp_path)
    (paths.sft_model).mkdir(parents=True)
    (paths.sft_model / "config.json").write_text("{}")
    write_jsonl(paths.sft_data / "train_questions.jsonl",
                [{"qid": "q1", "block": BLOCK, "options": ["A", "B", "C"], "gt": "B"},
                 {"qid": "q2", "block": BLOCKS["q2"], "options": ["A", "B"], "gt": "B"}])
    write_jsonl(paths.sft_data / "chains.jsonl", [teacher("q1", "teacher recall."), teacher("q2", "t2.")])
    calls, summarized = [], []

    def generate(model, tokenizer, prompts, decoding, batch_size, desc=None, share_prompts=True):
        summarized.append((list(prompts), decoding))  # q2 always right; q1's second prompt right once in three
        right = lambda k, p: p.startswith("q2") or (p == "q1 summarize 1" and k < len(prompts) // 3)  # noqa: E731
        return [P.summarize_target("B" if right(k, p) else "A") for k, p in enumerate(prompts)]

    monkeypatch.setattr(chain, "run_chain", scripted_chain(calls))
    monkeypatch.setattr(chain, "generate", generate)
    monkeypatch.setattr(student, "load_student", lambda params, paths, model_dir, what=None: (Model(), None))
    params = BASE.replace(**{"dpo.samples": 3, "dpo.temperature": 0.9, "dpo.stage_type": stage_type,
                             "generation.max_new_tokens": 50,
                             "dpo.iterations": {"iter1": {"init": "models/sft"}}})
    m = dpo_sample(params, paths, "iter1")

    assert calls[0]["qids"] == ["q1", "q2"] * 3 and calls[0]["recalls"] is None
    assert (calls[0]["recall"].do_sample, calls[0]["recall"].temperature, calls[0]["recall"].max_new_tokens) == (
        True, 0.9, 50)
    assert not calls[0]["analyze"].do_sample and not calls[0]["summarize"].do_sample
    recall_rows = read_jsonl(paths.dpo_data("iter1") / "recall_pairs.jsonl")
    analyze_rows = read_jsonl(paths.dpo_data("iter1") / "analyze_pairs.jsonl")
    # q1: 1 right + 2 wrong recalls -> its own right recall and one teacher recall; q2 never wrong -> none
    expected = [{"qid": "q1", "prompt": f"{BLOCK}\nRecall:", "chosen": "q1 recall 0.", "rejected": "q1 recall 1."},
                {"qid": "q1", "prompt": f"{BLOCK}\nRecall:", "chosen": "teacher recall.", "rejected": "q1 recall 2."}]
    summarize_rows = read_jsonl(paths.dpo_data("iter1") / "summarize_pairs.jsonl")
    assert recall_rows == ([] if stage_type in ("analyze", "summarize") else expected)
    if "summarize" in stage_type:  # each distinct summarize prompt of the recall samples, 3 sampled summaries more
        (prompts, decoding), = summarized
        distinct = ["q1 summarize 0", "q2 summarize 0", "q1 summarize 1", "q2 summarize 1", "q1 summarize 2",
                    "q2 summarize 2"]
        assert prompts == distinct * 3 and (decoding.do_sample, decoding.temperature) == (True, 0.9)
        # q1's first prompt: greedy right, samples wrong; its second: greedy wrong, one sample right; the rest one-sided
        assert summarize_rows == [
            {"qid": "q1", "prompt": "q1 summarize 0", "chosen": P.summarize_target("B"),
             "rejected": P.summarize_target("A")},
            {"qid": "q1", "prompt": "q1 summarize 1", "chosen": P.summarize_target("B"),
             "rejected": P.summarize_target("A")}]
        assert m["summarize_pairs"] == 2
    else:
        assert summarized == [] and summarize_rows == [] and m["summarize_pairs"] == 0
    if stage_type in ("recall", "summarize"):
        assert len(calls) == 1 and analyze_rows == []
    else:  # each distinct chosen recall analysed `samples` times with sampled analyses, greedy summaries
        assert calls[1]["qids"] == ["q1", "q1"] * 3
        assert calls[1]["recalls"] == ["q1 recall 0.", "teacher recall."] * 3
        assert calls[1]["analyze"].do_sample and not calls[1]["summarize"].do_sample
        # per recall: takes 0 and 2 right, take 1 wrong (picked A) -> two pairs, two records each
        assert len(analyze_rows) == 8
        assert {r["prompt"] for r in analyze_rows} == {P.analyze_prompt(BLOCK, x, rc) for x in "BA"
                                                       for rc in ("q1 recall 0.", "teacher recall.")}
        assert {r["rejected"] for r in analyze_rows} == {"A take 1.", "B take 1."}
    assert read_json(paths.metrics / "dpo" / "iter1_pairs.json") == m
    assert (m["questions"], m["questions_with_pairs"], m["chosen_from_teacher"]) == (2, 1, 1)
    assert m["sample_accuracy"] == pytest.approx(100 * 4 / 6)


def test_ablated_student_gets_no_pairs(tmp_path):
    """A summarize-only student has no recall/analyze chain to reflect on: empty pairs, no model needed."""
    from tinythinker.io import read_json, read_jsonl
    from tinythinker.paths import Paths
    from tinythinker.reflect.stages import dpo_sample

    params = BASE.replace(**{"sft.stage_type": "summarize", "dpo.iterations": {"iter1": {"init": "models/sft"}}})
    paths = Paths(tmp_path)
    metrics = dpo_sample(params, paths, "iter1")
    assert metrics["skipped"] == 1 and read_json(paths.metric("dpo/iter1_pairs"))["recall_pairs"] == 0
    assert read_jsonl(paths.dpo_data("iter1") / "recall_pairs.jsonl") == []


def test_each_iteration_samples_with_its_own_seed(tmp_path, monkeypatch):
    """Two iterations starting from the same model draw different chains; rerunning one draws the same."""
    import tinythinker.lm.chain as chain
    import tinythinker.lm.model as student
    from tinythinker.io import write_jsonl
    from tinythinker.paths import Paths
    from tinythinker.reflect.pairs import iteration_seed
    from tinythinker.reflect.stages import dpo_sample

    paths = Paths(tmp_path)
    paths.sft_model.mkdir(parents=True)
    (paths.sft_model / "config.json").write_text("{}")
    write_jsonl(paths.sft_data / "train_questions.jsonl",
                [{"qid": "q1", "block": BLOCK, "options": ["A", "B", "C"], "gt": "B"}])
    write_jsonl(paths.sft_data / "chains.jsonl", [teacher("q1", "teacher recall.")])
    calls = []
    monkeypatch.setattr(chain, "run_chain", scripted_chain(calls))
    monkeypatch.setattr(student, "load_student", lambda params, paths, model_dir, what=None: (Model(), None))
    params = BASE.replace(**{"dpo.stage_type": "recall", "dpo.iterations": {
        "iter1": {"init": "models/sft"}, "iter2": {"init": "models/sft"}}})
    for it in ("iter1", "iter2", "iter1"):
        dpo_sample(params, paths, it)
    first, second, again = (c["draw"] for c in calls)
    assert first != second and first == again
    assert iteration_seed(42, "iter1") != iteration_seed(42, "iter2") != iteration_seed(43, "iter2")
