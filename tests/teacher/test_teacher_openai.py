"""The request stage against a real OpenAI-compatible HTTP server on 127.0.0.1, through the real openai SDK.

The server scripts the failures a paid run meets (429 with Retry-After, 500s, a request hanging past the
client timeout, completions cut by length, malformed content; the refusals of tests/test_teacher_failures.py)
and logs every request server-side, so the tests check what was actually sent: retries, rounds, rate limits,
no request answered twice, and a run killed with SIGKILL that resumes without re-sending anything the journal
or the response store holds.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.teacher.fakes import API_KEY, assert_key_never_written, records, setup_root

from tinythinker.io import read_json, read_jsonl
from tinythinker.paths import Paths
from tinythinker.teacher.backend import TeacherError
from tinythinker.teacher.prompts import build_requests, message_tokens
from tinythinker.teacher.request import request

# A fresh sentinel per run, so no key-shaped literal is tracked; the tests check it never reaches a file or log.

def test_retries_rounds_and_no_double_answers(tmp_path, monkeypatch, server_factory):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)

    def script(q, attempt, body):
        first = body["n"] == 3 and attempt == 0  # round 1, first try
        return {"Question 0?": "429" if attempt == 0 else "ok",
                "Question 1?": "500" if attempt < 2 else "ok",
                "Question 2?": "hang" if attempt == 0 else "ok",
                "Question 3?": "length" if first else "ok",
                "Question 4?": "malformed" if first else "ok"}.get(q, "ok")

    server = server_factory(script)
    params = setup_root(tmp_path, server, 6)
    paths = Paths(tmp_path)
    m = request(params, paths)

    rows = read_jsonl(paths.completions)
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(6)]
    assert m["questions_complete"] == 6 and m["questions_incomplete"] == 0
    assert all(sum(c["finish_reason"] == "stop" for c in r["completions"]) >= 3 for r in rows)
    assert (m["rate_limited"], m["server_errors"], m["timeouts_or_connection_errors"]) == (1, 2, 1)
    assert m["retries"] == 4 and m["failed_requests"] == 0

    ev = server.events
    assert all(e["auth"] == f"Bearer {API_KEY}" for e in ev)
    assert max(server.answered().values()) == 1  # no key answered twice
    q0 = [e["t"] for e in ev if e["question"] == "Question 0?"]
    assert q0[1] - q0[0] >= 0.95  # Retry-After: 1 honoured
    # Re-asks: only the missing sample, with twice the room after a length cut.
    again = {e["question"]: (e["n"], e["max_tokens"]) for e in ev if e["n"] < 3}
    assert again == {"Question 3?": (1, 128), "Question 4?": (1, 64)}
    assert [r["rounds"] for r in rows] == [1, 1, 1, 2, 2, 1]
    assert len(read_jsonl(paths.journal)) == m["requests_sent"] == 8

    # A rerun answers everything from the journal.
    before = len(ev)
    m2 = request(params, paths)
    assert len(server.events) == before and m2["requests_sent"] == 0 and m2["requests_from_journal"] == 8
    assert read_jsonl(paths.completions) == rows
    assert_key_never_written(tmp_path)


def test_repeat_n_sends_single_sample_requests(tmp_path, monkeypatch, server_factory):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    server = server_factory()
    params = setup_root(tmp_path, server, 2, repeat_n=True)
    m = request(params, Paths(tmp_path))
    assert [e["n"] for e in server.events] == [1] * 6 and m["requests_sent"] == 6
    assert len(set(server.answered())) == 6  # identical bodies, distinct keys
    assert all(len(r["completions"]) == 3 for r in read_jsonl(Paths(tmp_path).completions))


@pytest.mark.parametrize("limit", ["requests", "tokens"])
def test_rate_limits_respected(tmp_path, monkeypatch, server_factory, limit):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    server = server_factory()
    params = setup_root(tmp_path, server, 4, max_concurrency=8)
    cost = message_tokens(build_requests(params, records(1))[0]["body"]["messages"]) + 3 * 64
    # One request a second either way: 60 per minute, or a minute's tokens for 60 requests.
    rates = {"teacher.requests_per_minute": 60} if limit == "requests" else \
        {"teacher.requests_per_minute": 10_000, "teacher.tokens_per_minute": 60 * cost}
    request(params.replace(**rates), Paths(tmp_path))
    t = sorted(e["t"] for e in server.events)
    assert len(t) == 4
    assert all(b - a >= 0.9 for a, b in zip(t, t[1:])), [round(b - a, 2) for a, b in zip(t, t[1:])]


def test_missing_key_fails_before_any_request(tmp_path, monkeypatch, server_factory):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = server_factory()
    params = setup_root(tmp_path, server, 2)
    with pytest.raises(TeacherError, match="OPENAI_API_KEY"):
        request(params, Paths(tmp_path))
    assert server.events == [] and not Paths(tmp_path).journal.exists()
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    out = subprocess.run([sys.executable, "-m", "tinythinker", "request", "--root", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "OPENAI_API_KEY" in out.stderr and "Traceback" not in out.stderr
    assert server.events == []


def _journal_keys(path: Path) -> set[str]:
    """Keys of the complete lines; a torn last line is what a kill mid-write leaves."""
    keys = set()
    for line in path.read_bytes().split(b"\n"):
        try:
            keys.add(json.loads(line)["key"])
        except ValueError:
            pass
    return keys


def test_sigkill_and_resume_never_resends_journaled_requests(tmp_path, server_factory, response_store):
    server = server_factory(delay=0.3)
    setup_root(tmp_path, server, 12, max_concurrency=2, samples=2, rounds=1)
    paths = Paths(tmp_path)
    env = {**os.environ, "OPENAI_API_KEY": API_KEY}
    cmd = [sys.executable, "-m", "tinythinker", "request", "--root", str(tmp_path)]

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not paths.journal.exists() or len(_journal_keys(paths.journal)) < 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    out1, err1 = proc.communicate(timeout=10)
    at_kill = _journal_keys(paths.journal)
    stored = {p.stem for p in response_store.glob("*/*.json")}  # written first: may hold one more
    assert at_kill <= stored and len(stored - at_kill) <= 1
    assert 4 <= len(at_kill) < 12 and not paths.completions.exists()
    time.sleep(0.5)  # what the server was making at the kill is made (and billed) now, for nobody
    served_before = set(server.answered())
    with paths.journal.open("a") as f:  # as if the kill had torn the line being written
        f.write('{"key": "torn", "body": {"mod')
    n_before = len(server.events)

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    resent = {e["key"] for e in server.events[n_before:]}
    assert not resent & stored  # nothing the journal or the store held was asked again
    answered = server.answered()
    # Only a response in flight at the kill (served, never stored) may have been answered twice.
    assert {k for k, c in answered.items() if c > 1} <= served_before - stored
    final = _journal_keys(paths.journal)
    assert at_kill <= final and len(final) == 12 and "torn" not in final
    rows = read_jsonl(paths.completions)
    assert len(rows) == 12 and all(len(r["completions"]) == 2 for r in rows)
    m = read_json(paths.metric("teacher_request"))
    assert m["requests_from_journal"] == len(at_kill) and m["requests_from_store"] == len(stored - at_kill)
    assert m["requests_sent"] == 12 - len(stored)
    assert m["requests_answered"] == 12  # what the data cost, as an uninterrupted run counts it
    assert_key_never_written(tmp_path, out1, err1, done.stdout, done.stderr)
