"""The offline teacher through the same journal, rounds and parser; the journal's crash tolerance."""
import json
import os

import pytest

from tests.teacher.fakes import BASE, SMALL, make_root

from tinythinker.io import DataError, read_jsonl
from tinythinker.teacher.backend import TeacherError
from tinythinker.teacher.build import build
from tinythinker.teacher.request import request
from tinythinker.teacher.store import Journal, request_key


def test_offline_rounds_faults_and_build(tmp_path):
    params = BASE.replace(**SMALL, **{"teacher.rounds": 8})  # 0.3 ** 8: every question ends complete
    paths = make_root(tmp_path / "a", params)
    m = request(params, paths)
    assert m["questions"] == 30 and m["questions_complete"] == 30 and m["usd"] == 0
    rows = read_jsonl(paths.completions)
    finishes = [c["finish_reason"] for r in rows for c in r["completions"]]
    assert "length" in finishes and max(r["rounds"] for r in rows) >= 2  # faults drove re-ask rounds
    journal = read_jsonl(paths.journal)
    assert len(journal) == m["requests_sent"] > 30
    assert any(e["body"]["max_tokens"] == 2 * params.teacher.max_tokens for e in journal)
    assert all(set(e["response"]) >= {"choices", "usage"} for e in journal)

    b = build(params, paths)
    assert b["questions_with_chain"] == 30
    # Four valid samples per question; a wrong verdict is valid for the teacher stage (spec 3.2 step 9)
    # and only dropped here as inconsistent with the label.
    assert b["accepted_chains"] + b["rejected_inconsistent_with_label"] == 4 * 30
    assert b["rejected_length"] > 0 and b["rejected_no_declared_answer"] + b["rejected_inconsistent_with_label"] > 0

    # Deterministic from the seed and request keys; a rerun is all journal.
    other = make_root(tmp_path / "b", params)
    request(params, other)
    assert read_jsonl(other.completions) == rows
    again = request(params, paths)
    assert again["requests_sent"] == 0 and again["requests_from_journal"] == m["requests_sent"]


def test_offline_backend_only_for_synthetic(tmp_path):
    params = BASE.replace(**SMALL)
    paths = make_root(tmp_path, params)
    with pytest.raises(TeacherError, match="teacher.backend"):
        request(params.replace(**{"dataset.name": "csqa"}), paths)


def test_journal_torn_line_is_dropped_and_appends_stay_clean(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        j.put({"key": "k1", "body": {"a": 1}, "response": {"choices": []}})
    with path.open("a") as f:
        f.write('{"key": "k2", "body": {"a"')
    with Journal(path) as j:
        assert "k1" in j and "k2" not in j and len(j) == 1
        j.put({"key": "k3", "body": {"a": 3}, "response": {"choices": [1]}})
    assert [json.loads(l)["key"] for l in path.read_text().splitlines()] == ["k1", "k3"]


def test_journal_keeps_a_complete_entry_missing_its_newline(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text(json.dumps({"key": "k1", "body": {}, "response": {"x": 1}}))
    with Journal(path) as j:
        assert j.get("k1")["response"] == {"x": 1}
        j.put({"key": "k2", "body": {}, "response": {}})
    assert len(path.read_text().splitlines()) == 2


def test_journal_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"key": "k1", "body": {}, "response": {}}\nnot json\n{"key": "k2", "body": {}, "response": {}}\n')
    with pytest.raises(DataError, match=r"j.jsonl:2"):
        Journal(path)


def test_journal_detaches_from_a_hardlinked_cache_copy(tmp_path):
    path, cache = tmp_path / "j.jsonl", tmp_path / "cache"
    with Journal(path) as j:
        j.put({"key": "k1", "body": {}, "response": {}})
    os.link(path, cache)
    with Journal(path) as j:
        j.put({"key": "k2", "body": {}, "response": {}})
    assert len(cache.read_text().splitlines()) == 1 and len(path.read_text().splitlines()) == 2


def test_request_key_is_canonical_salted_and_names_who_answers():
    a = request_key({"n": 1, "model": "m"})
    assert a == request_key({"model": "m", "n": 1})
    assert a != request_key({"model": "m", "n": 1}, "round2")
    assert len({request_key({"n": 1}, "round1", o) for o in ("offline seed=1", "openai http://a/v1",
                                                               "openai http://b/v1")}) == 3
