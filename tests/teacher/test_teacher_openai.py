"""The request stage against a real OpenAI-compatible HTTP server on 127.0.0.1, through the real openai SDK.

The server scripts the failures a paid run meets (429 with Retry-After, 500s, a request hanging past the
client timeout, completions cut by length, malformed content; the refusals of tests/test_teacher_failures.py)
and logs every request server-side, so the tests check what was actually sent: retries, rounds, rate limits,
no request answered twice, and a run killed with SIGKILL that resumes without re-sending anything the journal
or the response store holds.
"""
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tinythinker.io import read_json, read_jsonl, write_jsonl
from tinythinker.params import Params, load, to_dict
from tinythinker.paths import Paths
from tinythinker.teacher.backend import KEY_HEADER, TeacherError
from tinythinker.teacher.prompts import build_requests, message_tokens
from tinythinker.teacher.request import request

# A fresh sentinel per run, so no key-shaped literal is tracked; the tests check it never reaches a file or log.
API_KEY = f"test-key-{secrets.token_hex(8)}"
REPO = Path(__file__).resolve().parents[2]
BASE = load(REPO / "params.yaml")  # params.yaml holds every value


def completion_for(user: str, i: int) -> str:
    """A well-formed rationale answering the rationalisation template in `user`."""
    lines = user.split("\n")
    verdicts = [l.replace("Explanations: ", "").replace(" Because", "") for l in lines[3:]]
    body = [f"{v} Because reason {i} about option {v[0]}." for v in verdicts]
    return f"Key Information: fact {i} of {lines[0]}\nExplanations: " + "\n".join(body)


# Error answers as OpenAI sends them: (status, error object). "401" echoes the Authorization header back.
ERRORS = {
    "429": (429, {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}),
    "500": (500, {"message": "The server had an error while processing your request. Sorry about that!",
                  "type": "server_error", "code": None}),
    "400": (400, {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                             "Use 'max_completion_tokens' instead.", "type": "invalid_request_error",
                  "param": "max_tokens", "code": "unsupported_parameter"}),
    "quota": (429, {"message": "You exceeded your current quota, please check your plan and billing details.",
                    "type": "insufficient_quota", "code": "insufficient_quota"}),
    "401": (401, {"message": "Incorrect API key provided: {auth}.", "type": "invalid_request_error",
                  "code": "invalid_api_key"}),
}


def send_json(h, payload: bytes, status: int = 200, headers: dict | None = None) -> None:
    """One HTTP answer of a test server: `payload` (bytes) as application/json, with `headers`."""
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(payload)))
    for name, value in (headers or {}).items():
        h.send_header(name, value)
    h.end_headers()
    h.wfile.write(payload)
    h.wfile.flush()


class Teacher:
    """A scripted chat-completions server. `script(question, attempt, body)` picks a behaviour per request:
    ok | hang | reset | notjson | length | malformed | garbage (no choice parses) | a key of ERRORS; `attempt`
    counts the requests for the same key."""

    def __init__(self, script=lambda q, a, b: "ok", delay: float = 0.0, hang: float = 2.5):
        self.script, self.delay, self.hang = script, delay, hang
        self.events: list[dict] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                owner.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, h):
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        key = h.headers.get(KEY_HEADER)
        user = body["messages"][-1]["content"]
        question = user.split("\n")[0]
        with self.lock:
            attempt = sum(e["key"] == key for e in self.events)
            behaviour = self.script(question, attempt, body)
            event = {"t": time.monotonic(), "key": key, "question": question, "n": body["n"],
                     "max_tokens": body.get("max_tokens", body.get("max_completion_tokens")),
                     "fields": sorted(body), "auth": h.headers.get("Authorization"),
                     "behaviour": behaviour, "answered": False}
            self.events.append(event)
        if behaviour == "hang":
            time.sleep(self.hang)  # the client has timed out and gone; no answer counts
            return
        if behaviour == "reset":  # the connection reset after the request arrived (RST, no answer)
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            return
        if behaviour == "notjson":  # a 200 from a proxy in the way: an HTML page
            send_json(h, b"<html><body>502 Bad Gateway</body></html>")
            return
        if behaviour in ERRORS:
            status, error = ERRORS[behaviour]
            error = {**error, "message": error["message"].format(auth=h.headers.get("Authorization"))}
            send_json(h, json.dumps({"error": error}).encode(), status,
                      {"Retry-After": "1"} if behaviour == "429" else None)
            return
        time.sleep(self.delay)
        choices = []
        for i in range(body["n"]):
            content, finish = completion_for(user, len(self.events) * 10 + i), "stop"
            if i == 0 and behaviour == "length":
                content, finish = content[:30], "length"
            if (i == 0 and behaviour == "malformed") or behaviour == "garbage":
                content = "Sure! I believe the answer is the first one."
            choices.append({"index": i, "message": {"role": "assistant", "content": content},
                            "finish_reason": finish, "logprobs": None})
        payload = json.dumps({"id": f"chatcmpl-{len(self.events)}", "object": "chat.completion",
                              "created": int(time.time()), "model": body["model"], "choices": choices,
                              "usage": {"prompt_tokens": 100, "completion_tokens": 20 * body["n"],
                                        "total_tokens": 100 + 20 * body["n"]}}).encode()
        send_json(h, payload)
        with self.lock:
            event["answered"] = True

    def answered(self) -> Counter:
        with self.lock:
            return Counter(e["key"] for e in self.events if e["answered"])


def outage_after(answers: int):
    """(script, state): the server answers `answers` requests, then every request gets a 500 until the test
    sets ``state["answers"] = None`` (the server is back)."""
    state = {"answers": answers}

    def script(q, attempt, body):
        if state["answers"] is None:
            return "ok"
        state["answers"] -= 1
        return "ok" if state["answers"] >= 0 else "500"
    return script, state


def records(k: int) -> list[dict]:
    return [{"id": f"q{i}", "question": f"Question {i}?", "answer": "ABCD"[i % 4],
             "choices": [{"label": l, "text": f"option {l}{i}"} for l in "ABCD"]} for i in range(k)]


def setup_root(root: Path, server: Teacher, k: int, **teacher) -> Params:
    overrides = {"teacher.backend": "openai", "teacher.base_url": server.url, "teacher.samples": 3,
                 "teacher.max_tokens": 64, "teacher.timeout": 1.0, "teacher.max_retries": 4,
                 **{f"teacher.{key}": v for key, v in teacher.items()}}
    params = BASE.replace(**overrides)
    paths = Paths(root)
    train = records(k)
    write_jsonl(paths.split("train"), train)
    write_jsonl(paths.requests, build_requests(params, train))
    (root / "params.yaml").write_text(yaml.safe_dump(to_dict(params), sort_keys=False))
    return params


def assert_key_never_written(root: Path, *texts: str):
    for path in root.rglob("*"):
        if path.is_file():
            assert API_KEY not in path.read_text(errors="replace"), path
    for text in texts:
        assert API_KEY not in text


def closing_servers(cls):
    """A fixture's body: a maker of `cls` servers, every one closed when the test ends."""
    servers = []

    def make(*a, **kw):
        servers.append(cls(*a, **kw))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


@pytest.fixture
def server_factory():
    yield from closing_servers(Teacher)


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
