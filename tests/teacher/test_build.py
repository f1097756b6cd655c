"""Hand-made teacher completions -> exact stage rows (spec 3.2-3.6, 4), label override, summarize order."""
from pathlib import Path

import pytest

from tinythinker.io import read_json, read_jsonl, write_jsonl
from tinythinker.params import load
from tinythinker.paths import Paths
from tinythinker.teacher.build import build

BASE = load(Path(__file__).resolve().parents[2] / "params.yaml")  # params.yaml holds every value

Q1 = {"id": "q1", "question": "Which is a metal?", "answer": "B",
      "choices": [{"label": "A", "text": "wood"}, {"label": "B", "text": "iron, cast"}, {"label": "C", "text": "glass"}]}
Q2 = {"id": "q2", "question": "Is ice cold?", "answer": "A",
      "choices": [{"label": "A", "text": "yes"}, {"label": "B", "text": "no"}]}
Q3 = {"id": "q3", "question": "Unanswered?", "answer": "A",
      "choices": [{"label": "A", "text": "x"}, {"label": "B", "text": "y"}]}
BLOCK1 = "Which is a metal?\n(A) wood (B) iron, cast (C) glass"
BLOCK2 = "Is ice cold?\n(A) yes (B) no"


def done(content, finish="stop"):
    return {"content": content, "finish_reason": finish}


GOOD1 = done("Key Information: Metals conduct\nExplanations: B is correct. Because iron is a metal\n"
             "A is incorrect. Because wood grows.\nC is incorrect. Because glass is brittle.")
Q1_COMPLETIONS = [
    GOOD1,
    GOOD1,  # exact duplicate chain
    done("Key Information: Other.\nExplanations: A is correct. Because wood.\nB is incorrect. Because no.\n"
         "C is incorrect. Because no."),  # consistent with neither label nor vote
    done("Key Information: Cut", "length"),
    done("Key Information: Iron is metal.\nExplanations: B is correct. Because yes.\nA is incorrect. Because no."),
]
VOTE_B = done("Key Information: Ice melts.\nExplanations: B is correct. Because warm.\nA is incorrect. Because no.")
VOTE_A = done("Key Information: Ice is frozen water.\nExplanations: A is correct. Because ice is cold.\n"
              "B is incorrect. Because it is cold")


@pytest.fixture
def root(tmp_path):
    paths = Paths(tmp_path)
    write_jsonl(paths.split("train"), [Q1, Q2, Q3])
    write_jsonl(paths.split("valid"), [{**Q2, "id": "v1"}])
    write_jsonl(paths.split("test"), [{**Q1, "id": "t1", "answer": "C"}])
    rows = [(Q1, Q1_COMPLETIONS), (Q2, [VOTE_B, VOTE_A, VOTE_B]), (Q3, [done("no format at all")])]
    write_jsonl(paths.completions, [{"id": q["id"], "gt": q["answer"], "options": [c["label"] for c in q["choices"]],
                                     "user": "u", "completions": cs, "rounds": 1} for q, cs in rows])
    return paths


def rows(paths, stage_type, stage):
    return read_jsonl(paths.stage_file(stage_type, stage))


def test_full_method_rows_exact(root):
    m = build(BASE.replace(**{"teacher.override_label": False}), root)
    recall = "Recall: Metals conduct."
    assert rows(root, "recall_analyze_summarize", "recall") == [
        {"qid": "q1", "input": f"{BLOCK1}\nRecall:", "target": "Metals conduct."},
        {"qid": "q2", "input": f"{BLOCK2}\nRecall:", "target": "Ice is frozen water."}]
    assert rows(root, "recall_analyze_summarize", "analyze")[:3] == [
        {"qid": "q1", "input": f"{BLOCK1}\n{recall}\nAnalyze: For option B,", "target": "iron is a metal.", "option": "B"},
        {"qid": "q1", "input": f"{BLOCK1}\n{recall}\nAnalyze: For option A,", "target": "wood grows.", "option": "A"},
        {"qid": "q1", "input": f"{BLOCK1}\n{recall}\nAnalyze: For option C,", "target": "glass is brittle.", "option": "C"}]
    assert rows(root, "recall_analyze_summarize", "summarize")[0] == {
        "qid": "q1", "target": "So the answer is option B.",
        "input": f"{BLOCK1}\n{recall}\nAnalyze: For option A, wood grows. For option B, iron is a metal. "
                 "For option C, glass is brittle.\nSummarize:"}
    assert read_jsonl(root.sft_data / "chains.jsonl")[0] == {
        "qid": "q1", "block": BLOCK1, "gt": "B", "recall": "Metals conduct.",
        "analyses": {"B": "iron is a metal.", "A": "wood grows.", "C": "glass is brittle."}}
    assert read_jsonl(root.sft_data / "recall_single.jsonl") == rows(root, "recall_analyze_summarize", "recall")
    assert m["accepted_chains"] == 3 and m["questions"] == 3 and m["questions_with_chain"] == 2
    assert (m["rejected_length"], m["rejected_inconsistent_with_label"], m["rejected_incomplete_option_count"],
            m["rejected_no_key_information"], m["rejected_no_declared_answer"]) == (1, 3, 1, 1, 0)
    assert m["duplicates_removed/recall_analyze_summarize/recall"] == 1
    assert m["duplicates_removed/recall_analyze_summarize/analyze"] == 3
    assert m["rows/recall_analyze_summarize/analyze"] == 5
    assert (m["label_disagreements"], m["label_overrides"]) == (1, 0)
    written = read_json(root.metric("build"))
    assert written == m and all(isinstance(v, int) for v in written.values())


def test_teacher_summarize_order(root):
    build(BASE.replace(**{"teacher.summarize_order": "teacher"}), root)
    assert rows(root, "recall_analyze_summarize", "summarize")[0]["input"].endswith(
        "Analyze: For option B, iron is a metal. For option A, wood grows. For option C, glass is brittle.\nSummarize:")


def test_label_override_on_uses_teacher_majority_and_counts_it(root):
    m = build(BASE, root)  # override_label defaults to true
    assert (m["label_disagreements"], m["label_overrides"]) == (1, 1)
    q2 = [r for r in rows(root, "recall_analyze_summarize", "summarize") if r["qid"] == "q2"]
    assert [r["target"] for r in q2] == ["So the answer is option B."]  # two identical chains, deduplicated
    train_q = read_jsonl(root.sft_data / "train_questions.jsonl")
    assert train_q == [{"qid": "q1", "block": BLOCK1, "options": ["A", "B", "C"], "gt": "B"},
                       {"qid": "q2", "block": BLOCK2, "options": ["A", "B"], "gt": "B"}]
    assert m["rejected_inconsistent_with_label"] == 2  # q1's A chain and q2's A chain


def test_label_override_off_keeps_dataset_label(root):
    build(BASE.replace(**{"teacher.override_label": False}), root)
    chains = [c for c in read_jsonl(root.sft_data / "chains.jsonl") if c["qid"] == "q2"]
    assert [(c["gt"], c["recall"]) for c in chains] == [("A", "Ice is frozen water.")]
    assert read_jsonl(root.sft_data / "train_questions.jsonl")[1]["gt"] == "A"


def test_valid_test_rows_never_overridden(root):
    build(BASE, root)
    assert read_jsonl(root.sft_data / "valid.jsonl") == [{"qid": "v1", "block": BLOCK2, "options": ["A", "B"], "gt": "A"}]
    assert read_jsonl(root.sft_data / "test.jsonl") == [{"qid": "t1", "block": BLOCK1, "options": ["A", "B", "C"], "gt": "C"}]


def test_ablation_files(root):
    m = build(BASE.replace(**{"teacher.override_label": False}), root)
    assert rows(root, "summarize", "summarize") == [
        {"qid": "q1", "input": f"{BLOCK1}\nSummarize:", "target": "So the answer is option B."},
        {"qid": "q2", "input": f"{BLOCK2}\nSummarize:", "target": "So the answer is option A."}]
    assert not root.stage_file("summarize", "recall").exists()
    assert rows(root, "recall_summarize", "summarize")[0] == {
        "qid": "q1", "input": f"{BLOCK1}\nRecall: Metals conduct.\nSummarize:", "target": "So the answer is option B."}
    assert rows(root, "recall_summarize", "recall") == rows(root, "recall_analyze_summarize", "recall")
    an = rows(root, "analyze_summarize", "analyze")
    assert an[0] == {"qid": "q1", "input": f"{BLOCK1}\nAnalyze: For option B,", "target": "iron is a metal.", "option": "B"}
    assert len(an) == 5 and m["duplicates_removed/analyze_summarize/analyze"] == 3
    summ = rows(root, "analyze_summarize", "summarize")
    assert len(summ) == 3  # no dedup for this file (spec 4)
    assert summ[0]["input"] == (f"{BLOCK1}\nAnalyze: For option A, wood grows. For option B, iron is a metal. "
                                "For option C, glass is brittle.\nSummarize:")
