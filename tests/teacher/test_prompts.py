"""Teacher request assembly (spec 2.3, 2.4), exemplar validation, cost estimate arithmetic."""
import json
from pathlib import Path

import pytest

from tinythinker.io import DataError, read_json, read_jsonl, write_jsonl
from tinythinker.params import ParamsError, load
from tinythinker.paths import Paths
from tinythinker.teacher import prompts

BASE = load(Path(__file__).resolve().parents[2] / "params.yaml")  # params.yaml holds every value

RECORD = {"id": "q1", "question": "Which is a metal?",
          "choices": [{"label": "A", "text": "wood"}, {"label": "B", "text": "iron, cast"},
                      {"label": "C", "text": "glass"}],
          "answer": "B"}
EX = {"Q": "Pick the fruit.", "Options": "A. pear, B. saw", "Key Information": "We need a fruit.",
      "Explanations": ["A is correct. Because a pear is a fruit.", "B is incorrect. Because a saw is a tool."],
      "Reference": "test"}


def test_user_message_gold_first_then_label_order_stripped():
    assert prompts.user_message(RECORD) == (
        "Which is a metal?\nOptions: A. wood, B. iron, cast, C. glass\nKey Information:\n"
        "Explanations: B is correct. Because\nA is incorrect. Because\nC is incorrect. Because")


def test_system_message_byte_level():
    ex2 = {**EX, "Q": "Pick the tool.", "Explanations": ["A is incorrect. Because x.", "B is correct. Because y."]}
    got = prompts.system_message([EX, ex2], instruction="Do it.\n")
    assert got == ("Do it.\n\n###\nPick the fruit.\nOptions: A. pear, B. saw\nKey Information: We need a fruit.\n"
                   "Explanations: A is correct. Because a pear is a fruit.\nB is incorrect. Because a saw is a tool.\n"
                   "###\n\n###\nPick the tool.\nOptions: A. pear, B. saw\nKey Information: We need a fruit.\n"
                   "Explanations: A is incorrect. Because x.\nB is correct. Because y.\n###")
    assert prompts.INSTRUCTION.endswith("\n") and "Key Information:" in prompts.INSTRUCTION


def test_shipped_exemplars_are_valid_with_their_task_option_counts():
    for name, k in (("csqa", 5), ("obqa", 4), ("strategyqa", 2), ("synthetic", 4)):
        rows = prompts.load_exemplars(prompts.EXEMPLAR_DIR / f"{name}.json")
        assert 3 <= len(rows) <= 5
        assert all(len(r["Explanations"]) == k for r in rows), name


@pytest.mark.parametrize("mutate, msg", [
    (lambda e: e.pop("Key Information"), "missing Key Information"),
    (lambda e: e.update(Options="pear or saw"), "Options must read"),
    (lambda e: e.update(Explanations="A is correct."), "must be a list of strings"),
    (lambda e: e["Explanations"].__setitem__(1, "B is wrong. Because no."), "Explanations[1] must read"),
    (lambda e: e["Explanations"].reverse(), "in that order"),
    (lambda e: e["Explanations"].__setitem__(1, "B is correct. Because also."), "exactly one"),
])
def test_user_exemplar_file_errors_name_file_and_index(tmp_path, mutate, msg):
    bad = json.loads(json.dumps(EX))
    mutate(bad)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([EX, bad]))
    with pytest.raises(DataError) as e:
        prompts.load_exemplars(path)
    assert str(e.value).startswith(f"{path}: exemplar 1: ") and msg in str(e.value)


def test_not_a_list_or_not_json(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.json").write_text("[")
    for name in ("a.json", "b.json"):
        with pytest.raises(DataError, match=name):
            prompts.load_exemplars(tmp_path / name)


def test_prompt_stage_with_user_exemplars_shots_and_seeded_order(tmp_path):
    paths = Paths(tmp_path)
    write_jsonl(paths.split("train"), [RECORD, {**RECORD, "id": "q2", "answer": "A"}])
    exemplars = [{**EX, "Q": f"Question {i}?"} for i in range(4)]
    (tmp_path / "ex.json").write_text(json.dumps(exemplars))
    params = BASE.replace(**{"teacher.exemplars": str(tmp_path / "ex.json"), "teacher.num_shots": 3,
                             "teacher.samples": 5, "teacher.max_tokens": 100})
    prompts.prompt(params, paths)
    reqs = read_jsonl(paths.requests)
    assert [r["id"] for r in reqs] == ["q1", "q2"] and reqs[1]["gt"] == "A" and reqs[0]["options"] == ["A", "B", "C"]
    body = reqs[0]["body"]
    assert set(body) == {"model", "messages", "max_tokens", "n", "temperature"}
    assert (body["n"], body["max_tokens"], body["temperature"]) == (5, 100, 0.8)
    system = body["messages"][0]["content"]
    assert system == reqs[1]["body"]["messages"][0]["content"]  # one system message for the dataset
    shown = [q for q in (f"Question {i}?" for i in range(4)) if q in system]
    assert len(shown) == 3
    prompts.prompt(params, paths)  # same seed, same bytes
    assert read_jsonl(paths.requests) == reqs
    with pytest.raises(ParamsError, match="teacher.num_shots"):
        prompts.prompt(params.replace(**{"teacher.num_shots": 5}), paths)


def test_reasoning_model_body_sends_max_completion_tokens_and_no_temperature(tmp_path):
    paths = Paths(tmp_path)
    write_jsonl(paths.split("train"), [RECORD])
    params = BASE.replace(**{"teacher.max_tokens_param": "max_completion_tokens",
                                 "teacher.send_temperature": False, "teacher.max_tokens": 300})
    prompts.prompt(params, paths)
    (req,) = read_jsonl(paths.requests)
    assert set(req["body"]) == {"model", "messages", "max_completion_tokens", "n"}
    assert req["body"]["max_completion_tokens"] == 300
    assert read_json(paths.metric("teacher_cost"))["output_tokens_max"] == 4 * 300


def test_task_default_samples_and_shipped_exemplars(tmp_path):
    paths = Paths(tmp_path)
    write_jsonl(paths.split("train"), [RECORD])
    prompts.prompt(BASE, paths)  # synthetic: 4 samples by default
    (req,) = read_jsonl(paths.requests)
    assert req["body"]["n"] == 4
    assert "Pick the bird." in req["body"]["messages"][0]["content"]


def test_cost_estimate_arithmetic(tmp_path):
    def req(system, user, n, max_tokens):
        return {"body": {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
                         "n": n, "max_tokens": max_tokens}}
    # ceil(chars/4): "system"->2, "user"->1, 8 chars->2, 5 chars->2, 1 char->1.
    reqs = [req("a" * 8, "b" * 5, 4, 256), req("c", "", 2, 100)]
    est = prompts.estimate(reqs)
    first = (3 + 2 + 2) + (3 + 1 + 2) + 3
    second = (3 + 2 + 1) + (3 + 1 + 0) + 3
    assert est["input_tokens"] == first + second == 29
    assert est["output_tokens_max"] == 4 * 256 + 2 * 100 == 1224
    assert est["tokens_counted_by_tiktoken"] == 0
    assert est["usd_total_gpt-4o-2024-05-13"] == round(29 * 5e-6 + 1224 * 15e-6, 4)
    assert est["usd_input_gpt-4-0613"] == round(29 * 30e-6, 4)
    assert len([k for k in est if k.startswith("usd_total_")]) == len(prompts.PRICES) == 8
    exact = prompts.estimate(reqs, count=lambda text: 1)
    assert exact["tokens_counted_by_tiktoken"] == 1 and exact["input_tokens"] == 2 * (5 + 5 + 3)


def test_prompt_stage_writes_cost_metrics_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    paths = Paths(tmp_path)
    write_jsonl(paths.split("train"), [RECORD])
    prompts.prompt(BASE, paths)
    cost = read_json(paths.metric("teacher_cost"))
    assert cost["requests"] == 1 and cost["output_tokens_max"] == 4 * 256
    assert all(isinstance(v, (int, float)) for v in cost.values())
