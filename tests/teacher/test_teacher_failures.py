"""The request stage when requests cannot succeed: it stops early with exit 2 and the server's own message on
the last line (no traceback, never the API key), writes no completions (so DVC locks nothing), and keeps every
answer that did arrive. Against the scripted server of test_teacher_openai.py, and a closed port."""
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.teacher.fakes import API_KEY, assert_key_never_written, outage_after, records, setup_root

from tinythinker.io import read_json, read_jsonl
from tinythinker.paths import Paths
from tinythinker.teacher.backend import TeacherError
from tinythinker.teacher.prompts import build_requests, message_tokens
from tinythinker.teacher.request import request

QUICK = {"max_retry_seconds": 1.0, "max_retries": 50, "max_concurrency": 1}


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def run_cli(root):
    """(exit code, stderr, seconds) of `tinythinker request` in a fresh process."""
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "tinythinker", "request", "--root", str(root)],
                         env={**os.environ, "OPENAI_API_KEY": API_KEY}, capture_output=True, text=True, timeout=120)
    return out.returncode, out.stderr, time.monotonic() - t0


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def stored(store) -> int:
    return len(list(store.glob("*/*.json")))


def assert_nothing_written(root, store, answers=0):
    paths = Paths(root)
    assert not paths.completions.exists() and not paths.metric("teacher_request").exists()
    assert stored(store) == answers
    assert (len(read_jsonl(paths.journal)) if paths.journal.exists() else 0) == answers


def refuses_max_tokens(q, attempt, body):
    """What a reasoning model says to a chat-model body."""
    return "400" if "max_tokens" in body or "temperature" in body else "ok"


@pytest.mark.parametrize("questions,limit,sent", [(30, 5, 5), (4, 20, 4)])
def test_every_request_refused_fails_at_once(tmp_path, server_factory, response_store, questions, limit, sent):
    """30 questions: stops after `max_failures_in_a_row` refusals; 4 (fewer than the limit): after round 1."""
    server = server_factory(refuses_max_tokens)
    setup_root(tmp_path, server, questions, max_failures_in_a_row=limit, **QUICK)
    rc, err, secs = run_cli(tmp_path)
    assert rc == 2 and secs < 30 and "Traceback" not in err
    line = last_line(err)
    assert line.startswith("error: teacher refuses the requests: ")
    assert "HTTP 400 unsupported_parameter: Unsupported parameter: 'max_tokens'" in line
    assert len(server.events) == sent  # no retries of a refusal, no second round
    assert err.count("no answer for q") == sent  # each refusal logged with the server's message
    assert_nothing_written(tmp_path, response_store)
    assert_key_never_written(tmp_path, err)


def test_reasoning_model_params_are_accepted(tmp_path, server_factory):
    server = server_factory(lambda q, a, b: "length" if b["n"] == 3 and q == "Question 1?" else
                            refuses_max_tokens(q, a, b))
    params = setup_root(tmp_path, server, 3, max_tokens_param="max_completion_tokens", send_temperature=False)
    m = request(params, Paths(tmp_path))
    assert m["questions_covered"] == 3 and m["rejected_requests"] == 0
    assert all(e["fields"] == ["max_completion_tokens", "messages", "model", "n"] for e in server.events)
    assert [e["max_tokens"] for e in server.events if e["n"] == 1] == [128]  # doubled after the length cut


def test_insufficient_quota_is_never_retried(tmp_path, server_factory, response_store):
    server = server_factory(lambda q, a, b: "ok" if q == "Question 0?" else "quota")
    setup_root(tmp_path, server, 8, **QUICK)
    rc, err, secs = run_cli(tmp_path)
    assert rc == 2 and secs < 30 and "Traceback" not in err
    line = last_line(err)
    assert line.startswith("error: teacher out of quota, not retried: HTTP 429 insufficient_quota: "
                           "You exceeded your current quota")
    assert "The 1 answer received in this run is kept in the response store" in line
    assert [e["question"] for e in server.events] == ["Question 0?", "Question 1?"]
    assert_nothing_written(tmp_path, response_store, answers=1)


def test_server_errors_give_up_within_the_retry_budget(tmp_path, server_factory, response_store):
    server = server_factory(lambda q, a, b: "500")
    setup_root(tmp_path, server, 10, max_failures_in_a_row=3, **{**QUICK, "max_concurrency": 2})
    rc, err, secs = run_cli(tmp_path)
    assert rc == 2 and "Traceback" not in err
    line = last_line(err)
    assert line.startswith("error: teacher unreachable or failing: 3 requests in a row got no answer")
    assert "HTTP 500 server_error: The server had an error while processing your request" in line
    # Three requests of about one second (teacher.max_retry_seconds) each, two at a time.
    assert secs < 15, secs
    first, last = server.events[0]["t"], server.events[-1]["t"]
    assert last - first < 3.5 and len({e["key"] for e in server.events}) <= 4
    assert_nothing_written(tmp_path, response_store)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: connections are refused


def test_closed_port_fails_within_the_retry_budget(tmp_path, server_factory, response_store):
    port = _closed_port()
    setup_root(tmp_path, server_factory(), 5, base_url=f"http://127.0.0.1:{port}/v1/", **QUICK)
    rc, err, secs = run_cli(tmp_path)
    assert rc == 2 and "Traceback" not in err and secs < 30, secs
    line = last_line(err)
    assert line.startswith("error: teacher refuses the requests: all 5 of the round failed")
    assert f"no connection to http://127.0.0.1:{port}/v1: All connection attempts failed" in line
    assert "gave up after" in line
    assert_nothing_written(tmp_path, response_store)


def test_rejected_credentials_never_show_the_key(tmp_path, server_factory, response_store):
    server = server_factory(lambda q, a, b: "401")  # this server echoes the Authorization header
    setup_root(tmp_path, server, 3, **QUICK)
    rc, err, _ = run_cli(tmp_path)
    assert rc == 2 and "Traceback" not in err
    assert "Incorrect API key provided: Bearer <OPENAI_API_KEY>." in last_line(err)
    assert_key_never_written(tmp_path, err)
    assert_nothing_written(tmp_path, response_store)


def test_outage_mid_run_keeps_the_answers_and_the_rerun_sends_only_the_rest(tmp_path, server_factory,
                                                                           response_store):
    script, up = outage_after(4)

    server = server_factory(script)
    setup_root(tmp_path, server, 12, max_failures_in_a_row=3, **QUICK)
    rc, err, secs = run_cli(tmp_path)
    assert rc == 2 and secs < 30 and "HTTP 500" in last_line(err)
    assert "The 4 answers received in this run are kept in the response store" in last_line(err)
    assert_nothing_written(tmp_path, response_store, answers=4)
    up["answers"] = None  # the server is back
    n_before = len(server.events)
    rc, err, _ = run_cli(tmp_path)
    assert rc == 0, err
    assert len(server.events) - n_before == 8 and max(server.answered().values()) == 1
    m = read_json(Paths(tmp_path).metric("teacher_request"))
    assert (m["requests_from_journal"], m["requests_sent"], m["questions_covered"]) == (4, 8, 12)


def test_a_few_refusals_among_answers_are_only_counted(tmp_path, server_factory, capsys):
    server = server_factory(lambda q, a, b: "400" if q == "Question 3?" else "ok")
    params = setup_root(tmp_path, server, 10, min_coverage=0.8, max_failures_in_a_row=2)
    m = request(params, Paths(tmp_path))
    assert m["questions_covered"] == 9 and m["rejected_requests"] == 3  # asked once per round
    assert len(read_jsonl(Paths(tmp_path).completions)) == 10
    err = capsys.readouterr().err
    assert err.count("no answer for q3") == 3 and "Unsupported parameter: 'max_tokens'" in err


def test_too_few_valid_questions_fail_with_the_counts(tmp_path, server_factory, response_store):
    server = server_factory(lambda q, a, b: "ok" if q in ("Question 0?", "Question 1?", "Question 2?") else "garbage")
    params = setup_root(tmp_path, server, 10, rounds=2)
    with pytest.raises(TeacherError) as e:
        request(params, Paths(tmp_path))
    msg = str(e.value)
    assert "3 of 10 training questions got a valid completion, teacher.min_coverage=0.9 needs 9" in msg
    paid = 3 + 7 * 2  # every answer is paid for, valid or not
    assert f"The {paid} answers received in this run are kept" in msg
    assert_nothing_written(tmp_path, response_store, answers=paid)
    params = params.replace(**{"teacher.min_coverage": 0.3})  # a lower bar: the stored answers suffice
    m = request(params, Paths(tmp_path))
    assert m["requests_sent"] == 0 and m["requests_from_journal"] == paid and m["questions_covered"] == 3


def test_refused_requests_do_not_spend_the_token_budget(tmp_path, server_factory):
    server = server_factory(lambda q, a, b: "400" if q in ("Question 0?", "Question 1?", "Question 2?") else "ok")
    params = setup_root(tmp_path, server, 5, rounds=1, min_coverage=0.4, max_concurrency=1)
    cost = message_tokens(build_requests(params, records(1))[0]["body"]["messages"]) + 3 * 64
    # A minute's tokens for 60 requests: one answered request a second; refusals must not wait.
    request(params.replace(**{"teacher.tokens_per_minute": 60 * cost}), Paths(tmp_path))
    t = [e["t"] for e in server.events]
    assert [e["behaviour"] for e in server.events] == ["400"] * 3 + ["ok"] * 2
    assert t[3] - t[0] < 0.5, [round(b - a, 2) for a, b in zip(t, t[1:])]  # no charge for the refusals
    assert t[4] - t[3] >= 0.9  # the answered one did pay
