"""A campaign of faults beyond the issue's list: server replies of every kind, disks and paths that refuse, signals,
params. Each case runs the request stage once with the fault and once more with it gone, and holds the same
contract: exit 0 or one line `error: ...` with exit 2 (no traceback, never the key), every answer the server made
kept in the journal and the store, the rerun buying nothing twice. `CAMPAIGN_OUT=<file>` appends one row per
case (case, exit code, message, what is on disk, answers bought) for the closing note of the issue."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.teacher.fakes import API_KEY, REPO, setup_root

from tinythinker.cli import app
from tinythinker.io import read_jsonl
from tinythinker.paths import STORE_ENV, Paths

QUICK = {"max_retry_seconds": 2.0, "max_retries": 3, "timeout": 1.0}
ANSWER_500 = '{"error": {"message": "oops", "type": "server_error"}}'
# case: (what the server does to the faulty requests, which requests, params)
SERVER = {
    "503 with an HTML page": ("reply:503|text/html|<html><body>Service Unavailable</body></html>", "first", {}),
    "500 with a plain-text body": ("reply:500|text/plain|Internal error", "first", {}),
    "500 with a JSON error": (f"reply:500|application/json|{ANSWER_500}", "first", {}),
    "400 with an empty body": ("reply:400|application/json|", "always", {}),
    "418 with an HTML body": ("reply:418|text/html|<p>teapot</p>", "always", {}),
    "200 with an empty body": ("reply:200|application/json|", "first", {}),
    "200 with a text/plain JSON body": ("reply:200|text/plain|{}", "first", {}),
    "200 whose choices are empty": ('raw:{"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 0}}',
                                    "always", {"rounds": 2}),
    "200 whose content is null": ('raw:{"choices": [{"index": 0, "message": {"role": "assistant", "content": null},'
                                  ' "finish_reason": "stop"}]}', "first", {}),
    "200 with a deeply nested body": ("raw:" + "[" * 5000 + "]" * 5000, "first", {}),
    "connection closed without an answer": ("close", "first", {}),
    "headers then a stalled body": ("stall", "first", {}),
    "401 key revoked mid-run": ("401", "late", {"max_concurrency": 4}),
    "404 model not found": ("reply:404|application/json|"
                            '{"error": {"message": "The model does not exist", "code": "model_not_found"}}',
                            "always", {}),
    "429 rate limit, then answers": ("429", "first", {}),
    "answers with no usage for a priced model": ('raw:{"choices": [{"index": 0, "message": {"role": "assistant", '
                                                 '"content": "x"}, "finish_reason": "stop"}]}', "always",
                                                 {"model": "gpt-4o-mini-2024-07-18"}),
}


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def keys(path: Path) -> set[str]:
    return {r["key"] for r in read_jsonl(path)} if path.exists() else set()


def stored() -> set[str]:
    return {p.stem for p in Path(os.environ[STORE_ENV]).glob("??/*.json")}


def record(case: str, rc: int, line: str, root: Path, bought: int, twice: int) -> None:
    out = os.environ.get("CAMPAIGN_OUT")
    if out:
        paths = Paths(root)
        row = {"case": case, "exit": rc, "message": line[:300], "journal": len(keys(paths.journal)),
               "store": len(stored()), "completions": paths.completions.exists(), "answers_bought": bought,
               "bought_twice": twice}
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")


def check(res, case: str) -> tuple[int, str]:
    """The contract of one run: exit 0, or 2 with one `error:` line; no traceback, no key."""
    out = res.output
    lines = out.strip().splitlines()
    assert res.exit_code in (0, 2), (case, res.exit_code, out[-1500:], res.exception)
    assert "Traceback" not in out and API_KEY not in out, case
    if res.exit_code == 2:
        assert lines[-1].startswith("error: "), (case, lines[-1])
    return res.exit_code, lines[-1] if lines else ""


@pytest.mark.parametrize("case", sorted(SERVER))
def test_a_server_fault(tmp_path, server_factory, case):
    behaviour, which, params = SERVER[case]
    state = {"on": True}

    def script(q, attempt, body):
        n = int(q.split()[1].rstrip("?"))
        faulty = {"first": attempt == 0, "always": n == 1, "late": n >= 5}[which]
        return behaviour if state["on"] and faulty else "ok"

    server = server_factory(script, hang=2.0)
    setup_root(tmp_path, server, 8, **{"samples": 2, "rounds": 1, **QUICK, **params})
    rc, line = check(CliRunner().invoke(app, ["request", "--root", str(tmp_path)]), case)
    kept = keys(Paths(tmp_path).journal)
    good = {e["key"] for e in server.events if e["answered"] and e["behaviour"] == "ok"}
    # Every good answer is kept (journal and store); nothing is kept that the server did not make.
    assert good <= kept <= set(server.answered()) and stored() == kept, case
    state["on"] = False
    n = len(server.events)
    rc2, line2 = check(CliRunner().invoke(app, ["request", "--root", str(tmp_path)]), case)
    again = {e["key"] for e in server.events[n:] if e["answered"]}
    twice = sum(c > 1 for c in server.answered().values())
    record(case, rc, line, tmp_path, len(server.answered()), twice)
    assert not again & kept, case  # the rerun buys nothing that was kept
    # it succeeds, or the kept answers give no valid completion and it says how to have them asked anew
    assert rc2 == 0 or "forget-answers" in line2, (case, line2)
    assert keys(Paths(tmp_path).journal) == stored(), case


def _disk_cases(tmp_path: Path) -> dict:
    """case: (what to break before the run, what to mend before the rerun)."""
    journal = Paths(tmp_path).journal
    store = Path(os.environ[STORE_ENV])
    return {
        "the journal path is a directory": (lambda: (journal.unlink(missing_ok=True), journal.mkdir(parents=True)),
                                            lambda: journal.rmdir()),
        "the store root is a file": (lambda: (store.rmdir(), store.write_text("x")),
                                     lambda: (store.unlink(), store.mkdir())),
        "the store lies under /proc": (lambda: os.environ.__setitem__(STORE_ENV, "/proc/tinythinker-store"),
                                       lambda: os.environ.__setitem__(STORE_ENV, str(store))),
        "a journal line is not JSON": (lambda: (journal.parent.mkdir(parents=True, exist_ok=True),
                                                journal.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')),
                                       lambda: journal.unlink()),
        "the journal is not UTF-8": (lambda: (journal.parent.mkdir(parents=True, exist_ok=True),
                                              journal.write_bytes(b'{"key": "\xff"}\n{"key": "b"}\n')),
                                     lambda: journal.unlink()),
    }


@pytest.mark.parametrize("case", ["the journal path is a directory", "the store root is a file",
                                  "the store lies under /proc", "a journal line is not JSON",
                                  "the journal is not UTF-8"])
def test_a_disk_or_path_fault(tmp_path, server_factory, monkeypatch, case):
    server = server_factory()
    setup_root(tmp_path, server, 4, samples=2, rounds=1, **QUICK)
    monkeypatch.setenv(STORE_ENV, os.environ[STORE_ENV])  # restored after the test whatever the case sets
    brk, mend = _disk_cases(tmp_path)[case]
    brk()
    rc, line = check(CliRunner().invoke(app, ["request", "--root", str(tmp_path)]), case)
    assert rc == 2 and server.events == [], (case, line)  # refused before anything is bought
    mend()
    rc2, _ = check(CliRunner().invoke(app, ["request", "--root", str(tmp_path)]), case)
    record(case, rc, line, tmp_path, len(server.answered()), sum(c > 1 for c in server.answered().values()))
    assert rc2 == 0 and max(server.answered().values()) == 1


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGQUIT])
def test_a_terminal_signal(tmp_path, server_factory, signum):
    """SIGHUP (the terminal closed) stops as SIGINT does; SIGQUIT kills at once, and the rerun buys only what was
    not stored."""
    server = server_factory(delay=1.0)
    setup_root(tmp_path, server, 12, max_concurrency=4, samples=2, rounds=1, timeout=5.0)
    env = {**os.environ, "OPENAI_API_KEY": API_KEY, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "tinythinker", "request", "--root", str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(server.events) < 6:
        time.sleep(0.02)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    name = signal.Signals(signum).name
    time.sleep(1.2)  # what the server was making when the process died is made (and billed) now
    answered = set(server.answered())
    if signum == signal.SIGHUP:
        assert proc.returncode == 128 + signum and "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith(f"error: teacher: stopped by {name}")
        assert keys(Paths(tmp_path).journal) == answered  # in flight: kept
    kept = keys(Paths(tmp_path).journal)
    n = len(server.events)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    twice = sum(c > 1 for c in server.answered().values())
    record(f"{name} mid-run", proc.returncode, (err.strip().splitlines() or [""])[-1], tmp_path,
           len(server.answered()), twice)
    assert done.returncode == 0 and not {e["key"] for e in server.events[n:]} & kept  # nothing kept bought again
    if signum == signal.SIGHUP:
        assert twice == 0


@pytest.mark.parametrize("case,overrides,needle", [
    ("base_url with user:password", {"base_url": "http://user:secret@127.0.0.1:{port}/v1"}, None),
    ("base_url that is no URL", {"base_url": "http://[::1/v1"}, "teacher.base_url: not a URL"),
    ("a timeout far below any answer", {"timeout": 0.001, "max_retries": 1, "max_failures_in_a_row": 2}, "within"),
    ("a server on a closed port", {"base_url": "http://127.0.0.1:9/v1", "max_retries": 1}, "no connection"),
])
def test_a_params_fault(tmp_path, server_factory, case, overrides, needle):
    server = server_factory(delay=0.05)
    port = server.url.split(":")[2].split("/")[0]
    overrides = {k: v.format(port=port) if isinstance(v, str) else v for k, v in overrides.items()}
    setup_root(tmp_path, server, 3, samples=2, rounds=1, **{**QUICK, **overrides})
    res = CliRunner().invoke(app, ["request", "--root", str(tmp_path)])
    rc, line = check(res, case)
    assert "secret" not in res.output and all("secret" not in p.read_text(errors="replace") for p in
                                              tmp_path.rglob("*") if p.is_file() and p.name != "params.yaml")
    if needle is not None:
        assert rc == 2 and needle in line, (case, line)
    record(case, rc, line, tmp_path, len(server.answered()), sum(c > 1 for c in server.answered().values()))
