"""Teacher mode `batch` through the real openai SDK against a local Batch API on 127.0.0.1.

`BatchAPI` implements what the stage uses of the OpenAI API: /v1/files (multipart upload, content download),
/v1/batches (create, retrieve, list, cancel) and /v1/chat/completions (the live fallback), validating input
files as the API does (line shape, endpoint, one model, unique custom_ids, the request limit) and logging
every call, so the tests check what was sent, polled and downloaded: a full round, error-file lines asked
again, an expired and a cancelled batch, a stage SIGKILLed while polling that resumes the same batch, a batch
whose id was never recorded, input files split at the limits, the batch price with cached tokens, and the
loud failures (validation, quota, every line refused).
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import openai
import pytest

from tests.teacher.fakes import API_KEY, BATCH, REPO, BatchAPI, assert_key_never_written, setup_root

from tinythinker.io import read_json, read_jsonl, write_jsonl
from tinythinker.params import ParamsError, load
from tinythinker.paths import Paths
from tinythinker.teacher import batch as batch_module
from tinythinker.teacher.backend import TeacherError, origin
from tinythinker.teacher.prompts import BATCH_DISCOUNT, PRICES
from tinythinker.teacher.request import _usd, request
from tinythinker.teacher.store import ResponseStore, request_key


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def batch_root(root: Path, api: BatchAPI, k: int, **teacher):
    return setup_root(root, api, k, **{**BATCH, **teacher})


def journal_batches(paths: Paths) -> Counter:
    return Counter(e.get("batch") for e in read_jsonl(paths.journal))


def records(store: Path, state: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((store / "batches" / state).glob("*.json"))]


def test_a_batch_round_answers_as_live_requests_do(tmp_path, api_factory, response_store):
    api = api_factory(lambda q, body, i: "length" if q == "Question 3?" and i == 0 else "ok")
    params = batch_root(tmp_path, api, 6)
    paths = Paths(tmp_path)
    m = request(params, paths)

    b1, b2 = api.created()  # round 1: all six; round 2: the one cut by length, with twice the room
    lines = api.input_lines(b1)
    reqs = read_jsonl(paths.requests)
    who = origin(params)
    assert [l["custom_id"] for l in lines] == [request_key(r["body"], "round1", who) for r in reqs]
    assert all(l["method"] == "POST" and l["url"] == "/v1/chat/completions" for l in lines)
    assert [l["body"] for l in lines] == [r["body"] for r in reqs]
    (again,) = api.input_lines(b2)
    assert (again["body"]["n"], again["body"]["max_tokens"]) == (1, 128)
    assert b1["metadata"]["tinythinker_input"] in {r["name"] for r in records(response_store, "done")}
    assert api.count("POST", "/v1/chat/completions") == 0  # nothing asked live

    rows = read_jsonl(paths.completions)
    assert all(sum(c["finish_reason"] == "stop" for c in r["completions"]) >= 3 for r in rows)
    assert [r["rounds"] for r in rows] == [1, 1, 1, 2, 1, 1]
    # Every answer in the store and the journal, as a live answer, marked with its batch.
    assert journal_batches(paths) == {"batch_0": 6, "batch_1": 1}
    stored = {p.stem for p in response_store.glob("*/*.json")}
    assert stored == {e["key"] for e in read_jsonl(paths.journal)}
    assert (m["requests_sent"], m["batches_submitted"], m["batches_resumed"]) == (7, 2, 0)
    assert records(response_store, "pending") == [] and len(records(response_store, "done")) == 2

    # A rerun: answered from the journal, nothing uploaded, submitted, polled or downloaded.
    n = len(api.calls)
    m2 = request(params, paths)
    assert len(api.calls) == n and m2["requests_sent"] == 0 and m2["requests_from_journal"] == 7
    assert read_jsonl(paths.completions) == rows
    # The same requests in live mode have the same keys: the journal serves them, nothing is paid again.
    m3 = request(params.replace(**{"teacher.mode": "live"}), paths)
    assert m3["requests_sent"] == 0 and m3["requests_from_journal"] == 7 and len(api.calls) == n
    assert_key_never_written(tmp_path)


@pytest.mark.parametrize("fallback", ["next_round", "live"])
def test_error_file_lines_are_asked_again(tmp_path, api_factory, fallback):
    api = api_factory(lambda q, body, i: "400" if q == "Question 1?" and i == 0 else "ok")
    params = batch_root(tmp_path, api, 4, batch_fallback=fallback)
    paths = Paths(tmp_path)
    m = request(params, paths)
    assert m["batch_requests_failed"] == 1 and m["questions_complete"] == 4
    rows = read_jsonl(paths.completions)
    if fallback == "next_round":  # round 2's batch holds the refused request, with its full n
        assert len(api.created()) == 2 and api.count("POST", "/v1/chat/completions") == 0
        assert [l["body"]["n"] for l in api.input_lines(api.created()[1])] == [3]
        assert [r["rounds"] for r in rows] == [1, 2, 1, 1]
        assert journal_batches(paths) == {"batch_0": 3, "batch_1": 1}
    else:  # asked live in the same round, under the same key
        assert len(api.created()) == 1 and api.count("POST", "/v1/chat/completions") == 1
        assert [r["rounds"] for r in rows] == [1, 1, 1, 1]
        assert journal_batches(paths) == {"batch_0": 3, None: 1}


@pytest.mark.parametrize("how", ["expired", "cancelled"])
def test_an_expired_or_cancelled_batch_goes_to_the_next_round(tmp_path, api_factory, how):
    """Round 1's batch ends unfinished: the expired one ran only questions 0-1 (the rest listed as
    batch_expired), the cancelled one (by a user, through the SDK) every other line. None of that counts
    against the server; the next round asks the rest, and only answers are paid."""
    skip = lambda q, body, i: "skip" if how == "expired" and i == 0 and q not in ("Question 0?", "Question 1?") \
        else "ok"  # noqa: E731
    api = api_factory(skip, finish=lambda b: "expired" if b["index"] == 0 else "completed")
    params = batch_root(tmp_path, api, 6)
    paths = Paths(tmp_path)
    if how == "cancelled":
        api.hold.set()
        client = openai.OpenAI(api_key=API_KEY, base_url=api.url)

        def cancel_when_running():
            while not api.batches or api.batches["batch_0"]["status"] != "in_progress":
                time.sleep(0.01)
            client.batches.cancel("batch_0")
            api.hold.clear()
        threading.Thread(target=cancel_when_running, daemon=True).start()
    m = request(params, paths)
    rows = read_jsonl(paths.completions)
    b1, b2 = api.created()
    assert b1["status"] == how and len(api.input_lines(b2)) == 4 - (how == "cancelled") * 1
    assert m["batch_requests_expired"] == len(api.input_lines(b2)) and m["batch_requests_failed"] == 0
    assert m["questions_complete"] == 6 and api.count("POST", "/v1/chat/completions") == 0
    assert sum(r["rounds"] == 2 for r in rows) == len(api.input_lines(b2))
    assert sum(journal_batches(paths).values()) == m["requests_sent"] == 6


def test_a_stage_killed_while_polling_resumes_its_batch(tmp_path, api_factory, response_store):
    api = api_factory(polls=1)
    api.hold.set()  # the batch runs until the test lets it finish
    batch_root(tmp_path, api, 5, rounds=1)
    paths = Paths(tmp_path)
    env = {**os.environ, "OPENAI_API_KEY": API_KEY}
    cmd = [sys.executable, "-m", "tinythinker", "request", "--root", str(tmp_path)]

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and api.count("GET", "/v1/batches/batch_0") < 3:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    out1, err1 = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL and api.count("GET", "/v1/batches/batch_0") >= 3
    (pending,) = records(response_store, "pending")  # recorded before the first poll
    assert pending["batch_id"] == "batch_0" and len(pending["custom_ids"]) == 5
    assert not paths.completions.exists()

    api.hold.clear()
    polls = api.count("GET", "/v1/batches/batch_0")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert api.count("POST", "/v1/batches") == 1 and api.count("POST", "/v1/files") == 1  # never sent again
    assert api.count("GET", "/v1/batches/batch_0") > polls  # the second run polled the same batch
    assert len(read_jsonl(paths.completions)) == 5 and journal_batches(paths) == {"batch_0": 5}
    m = read_json(paths.metric("teacher_request"))
    assert (m["batches_resumed"], m["batches_submitted"], m["requests_sent"]) == (1, 0, 5)
    assert records(response_store, "pending") == []
    assert_key_never_written(tmp_path, out1, err1, done.stdout, done.stderr)


def test_a_batch_whose_id_was_never_recorded_is_found_not_submitted_again(tmp_path, api_factory, monkeypatch,
                                                                             response_store):
    """Killed between batches.create and the record of its id: the next run finds the batch by its metadata."""
    api = api_factory()
    params = batch_root(tmp_path, api, 3, rounds=1)
    real = ResponseStore.put_batch

    def lost(self, record):
        if record["batch_id"]:
            raise KeyboardInterrupt  # as a kill at this line would
        real(self, record)
    monkeypatch.setattr(ResponseStore, "put_batch", lost)
    with pytest.raises(KeyboardInterrupt):
        request(params, Paths(tmp_path))
    monkeypatch.setattr(ResponseStore, "put_batch", real)
    (pending,) = records(response_store, "pending")
    assert pending["batch_id"] is None and api.count("POST", "/v1/batches") == 1

    m = request(params, Paths(tmp_path))
    assert api.count("POST", "/v1/batches") == 1 and api.calls.count(("GET", "/v1/batches")) == 1
    assert (m["batches_resumed"], m["batches_submitted"], m["questions_complete"]) == (1, 0, 3)


def test_a_stage_killed_after_storing_the_answers_downloads_nothing_again(tmp_path, api_factory, monkeypatch,
                                                                          response_store):
    api = api_factory()
    params = batch_root(tmp_path, api, 3, rounds=1)
    real = ResponseStore.finish_batch

    def killed(self, record):
        raise KeyboardInterrupt
    monkeypatch.setattr(ResponseStore, "finish_batch", killed)
    with pytest.raises(KeyboardInterrupt):  # killed after the answers were stored, before the record was retired
        request(params, Paths(tmp_path))
    monkeypatch.setattr(ResponseStore, "finish_batch", real)
    (pending,) = records(response_store, "pending")
    assert len(pending["answered"]) == 3
    n = len(api.calls)
    m = request(params, Paths(tmp_path))
    assert len(api.calls) == n and m["requests_from_journal"] == 3 and m["questions_complete"] == 3
    assert records(response_store, "pending") == [] and len(records(response_store, "done")) == 1


def test_two_questions_with_the_same_request_are_one_line(tmp_path, api_factory):
    """The same question text and options twice (datasets have such duplicates): one custom_id, one line."""
    api = api_factory()
    params = batch_root(tmp_path, api, 3, rounds=1)
    paths = Paths(tmp_path)
    reqs = read_jsonl(paths.requests)
    reqs[1] = {**reqs[0], "id": reqs[1]["id"]}
    write_jsonl(paths.requests, reqs)
    m = request(params, paths)
    assert [len(api.input_lines(b)) for b in api.created()] == [2] and m["requests_sent"] == 2
    rows = read_jsonl(paths.completions)
    assert rows[0]["completions"] == rows[1]["completions"] and m["questions_complete"] == 3


@pytest.mark.parametrize("limit", ["requests", "bytes"])
def test_input_files_split_at_the_limits(tmp_path, api_factory, monkeypatch, limit):
    api = api_factory(max_requests=4)
    params = batch_root(tmp_path, api, 10, rounds=1)
    if limit == "requests":
        monkeypatch.setattr(batch_module, "MAX_REQUESTS", 4)
    else:  # three lines fit, a fourth does not
        one = len(json.dumps({"custom_id": "k" * 64, "method": "POST", "url": "/v1/chat/completions",
                              "body": read_jsonl(Paths(tmp_path).requests)[0]["body"]},
                             ensure_ascii=False, separators=(",", ":")).encode()) + 1
        monkeypatch.setattr(batch_module, "MAX_BYTES", int(3.5 * one))
    m = request(params, Paths(tmp_path))
    sizes = [len(api.input_lines(b)) for b in api.created()]
    assert sizes == ([4, 4, 2] if limit == "requests" else [3, 3, 3, 1])
    assert all(len(api.files[b["input_file_id"]]["data"]) <= batch_module.MAX_BYTES for b in api.created())
    assert m["batches_submitted"] == len(sizes) and m["questions_complete"] == 10


def test_cost_at_the_batch_price_with_cached_prompt_tokens(tmp_path, api_factory):
    model = "gpt-4o-2024-08-06"
    price = PRICES[model]
    assert price.cached_input is not None
    api = api_factory(prompt_tokens=1_000, cached=600)  # possible: the prompt holds more than 1,000 bytes
    params = batch_root(tmp_path, api, 4, rounds=1, model=model)
    m = request(params, Paths(tmp_path))
    # Per request: 1,000 prompt tokens, 600 of them cached, and 20 completion tokens per sample (n = 3).
    live = 400 * price.input + 600 * price.cached_input + 60 * price.output
    assert live == pytest.approx(0.00235) and m["usd"] == m["usd_this_run"] == 0.0047  # 4 x half of it
    assert m["cached_prompt_tokens"] == 4 * 600 and m["prompt_tokens"] == 4 * 1_000
    entry = read_jsonl(Paths(tmp_path).journal)[0]
    assert _usd(entry) == pytest.approx(live * BATCH_DISCOUNT)
    assert _usd({k: v for k, v in entry.items() if k != "batch"}) == pytest.approx(live)  # as a live answer


def test_a_batch_that_fails_validation_stops_the_stage_with_the_server_message(tmp_path, api_factory,
                                                                                response_store):
    api = api_factory(finish=lambda b: "failed")
    batch_root(tmp_path, api, 3)
    out = subprocess.run([sys.executable, "-m", "tinythinker", "request", "--root", str(tmp_path)],
                         env={**os.environ, "OPENAI_API_KEY": API_KEY}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: batch batch_0 failed: invalid_json_line (line 2): "
                           "This line is not parseable as valid JSON.")
    assert not Paths(tmp_path).completions.exists() and api.count("POST", "/v1/batches") == 1
    assert records(response_store, "pending") == [] and records(response_store, "done")[0]["status"] == "failed"
    assert_key_never_written(tmp_path, out.stderr)


def test_quota_stops_at_once_and_keeps_what_was_answered(tmp_path, api_factory, response_store):
    api = api_factory(lambda q, body, i: "quota" if q == "Question 2?" else "ok")
    params = batch_root(tmp_path, api, 4)
    with pytest.raises(TeacherError, match="teacher out of quota, not retried: HTTP 429 insufficient_quota.* "
                                           "The 3 answers received in this run are kept"):
        request(params, Paths(tmp_path))
    assert len(api.created()) == 1 and len(list(response_store.glob("*/*.json"))) == 3
    assert len(read_jsonl(Paths(tmp_path).journal)) == 3
    assert records(response_store, "pending") == []  # the rerun asks the refused request again


def test_every_line_refused_stops_as_live_requests_do(tmp_path, api_factory, response_store):
    """A batch whose every line is refused: the stage stops with the server's words, as in live mode, and a
    rerun asks again (a new batch) instead of reading the same refusals back."""
    api = api_factory(lambda q, body, i: "400")
    params = batch_root(tmp_path, api, 3)
    for run in (1, 2):
        with pytest.raises(TeacherError, match="^teacher refuses the requests: all 3 of the round failed, none was "
                                               "answered; last: batch batch_\\d: HTTP 400 invalid_prompt: refused"):
            request(params, Paths(tmp_path))
        assert len(api.created()) == run and api.count("GET", "/v1/files/") == run  # one error file each
        assert records(response_store, "pending") == []
        assert [r["answered"] for r in records(response_store, "done")] == [[]] * run


@pytest.mark.parametrize("refusal,needle", [
    ("401", "teacher request refused; check OPENAI_API_KEY, teacher.model and teacher.base_url: HTTP 401 "
            "invalid_api_key: Incorrect API key provided"),
    ("quota", "teacher out of quota, not retried: HTTP 429 insufficient_quota: You exceeded your current quota")])
def test_a_refused_batch_call_stops_at_once(tmp_path, api_factory, refusal, needle):
    api = api_factory()
    api.faults[("POST", "/v1/files")] = [refusal]
    params = batch_root(tmp_path, api, 3)
    with pytest.raises(TeacherError, match=needle):
        request(params, Paths(tmp_path))
    assert api.calls == [("POST", "/v1/files")]  # no retry, nothing else


def test_a_create_whose_answer_is_lost_is_not_sent_again(tmp_path, api_factory):
    """batches.create made the batch but its answer was a 500: before retrying, the stage looks the batch up."""
    api = api_factory()
    api.faults[("POST", "/v1/batches")] = ["500 after"]
    params = batch_root(tmp_path, api, 3, rounds=1)
    m = request(params, Paths(tmp_path))
    assert api.count("POST", "/v1/batches") == 1 and len(api.created()) == 1 and api.calls.count(("GET", "/v1/batches")) == 1
    assert (m["batches_submitted"], m["retries"], m["questions_complete"]) == (1, 1, 3)


def test_batch_mode_needs_the_openai_backend():
    with pytest.raises(ParamsError, match="^teacher.mode: batch needs teacher.backend=openai"):
        load(REPO / "params.yaml").replace(**{"teacher.mode": "batch", "teacher.backend": "offline"})
