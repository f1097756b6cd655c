"""Paid answers under parallel workers, signals and a full disk; a store of unusable answers can be forgotten.

Two request stages sharing the machine's response store (two queued experiments) buy each request once; Ctrl-C
and SIGTERM keep the answers in flight; an answer that cannot reach the store still reaches the journal; answers
that gave no valid completion are forgotten by `tinythinker forget-answers`, never by hand."""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.teacher.fakes import API_KEY, REPO, setup_root

from tinythinker.io import read_jsonl
from tinythinker.paths import STORE_ENV, Paths
from tinythinker.teacher.backend import TeacherError
from tinythinker.teacher.claims import Claims
from tinythinker.teacher.store import ResponseStore

SRC = REPO / "src"


def _stage(root: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OPENAI_API_KEY": API_KEY, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, "-m", "tinythinker", *args, "--root", str(root)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _journal_keys(path: Path) -> set[str]:
    return {r["key"] for r in read_jsonl(path)} if path.exists() else set()


def test_two_workers_sharing_the_store_buy_each_request_once(tmp_path, server_factory):
    """Two experiments that differ in nothing the teacher sees, run at once (`dvc queue start -j 2`)."""
    server = server_factory(delay=0.2)
    roots = [tmp_path / "exp1", tmp_path / "exp2"]
    for root in roots:
        setup_root(root, server, 16, max_concurrency=4, samples=2, rounds=1)
    procs = [_stage(root, "request") for root in roots]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    answered = server.answered()
    assert len(answered) == 16 and max(answered.values()) == 1  # 16 distinct requests, each bought once
    assert len(server.events) == 16  # not even sent twice
    for root in roots:
        assert len(_journal_keys(Paths(root).journal)) == 16 and len(read_jsonl(Paths(root).completions)) == 16
    assert not list((Path(os.environ[STORE_ENV]) / "claims").glob("*"))  # every claim let go


def test_a_claim_of_a_dead_owner_is_taken_over(tmp_path):
    claims = Claims(tmp_path, stale_after=600)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "claims").mkdir()
    (tmp_path / "claims" / "k1").write_text(f'{{"host": "{claims.host}", "pid": {int(dead.stdout)}, "time": 0}}')
    assert claims.take("k1")  # its owner is gone (a killed run)
    other = Claims(tmp_path, stale_after=600)
    other.pid = os.getppid()  # a live process on this host that is not the owner
    assert not other.take("k1")
    other.release("k1")  # not its claim: nothing happens
    assert (tmp_path / "claims" / "k1").exists()
    claims.release("k1")
    assert not (tmp_path / "claims" / "k1").exists() and other.take("k1")
    old = Claims(tmp_path, stale_after=0.0)
    time.sleep(0.01)
    old.pid = os.getppid() + 1 if os.getppid() + 1 != os.getpid() else os.getppid() + 2
    assert old.take("k1")  # older than stale_after: taken over whoever holds it


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_sending_and_keeps_the_answers_in_flight(tmp_path, server_factory, signum):
    server = server_factory(delay=1.0)  # every answer takes a second: 4 in flight at any moment
    setup_root(tmp_path, server, 20, max_concurrency=4, samples=2, rounds=1, timeout=5.0)
    paths = Paths(tmp_path)
    proc = _stage(tmp_path, "request")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(server.events) < 6:  # some answered, 4 in flight
        time.sleep(0.02)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: teacher: stopped by {signal.Signals(signum).name}. The ") and "kept in" in last
    answered = set(server.answered())
    assert answered and _journal_keys(paths.journal) == answered  # every answer that came is kept, in flight too
    assert {p.stem for p in Path(os.environ[STORE_ENV]).glob("*/*.json")} == answered
    assert len(server.events) < 20 and not paths.completions.exists()  # stopped sending; nothing recorded as done
    assert "20/20" not in err and "100%" not in err  # the bar counts what was asked, not what was never sent

    n = len(server.events)
    done = _stage(tmp_path, "request")
    assert done.wait(timeout=60) == 0
    assert {e["key"] for e in server.events[n:]}.isdisjoint(answered)  # the rerun buys only the rest
    assert max(server.answered().values()) == 1 and len(read_jsonl(paths.completions)) == 20


def test_a_second_signal_exits_at_once(tmp_path, server_factory):
    server = server_factory(delay=3.0)
    setup_root(tmp_path, server, 8, max_concurrency=4, samples=2, rounds=1, timeout=10.0)
    proc = _stage(tmp_path, "request")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(server.events) < 4:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and time.monotonic() - t0 < 2.0  # not the 3 s the answers in flight take
    assert "SIGINT again: exiting now" in err and "Traceback" not in err


def test_an_answer_the_full_store_cannot_take_reaches_the_journal(tmp_path, server_factory, monkeypatch):
    from tinythinker.cli import app
    from typer.testing import CliRunner

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    server = server_factory()
    setup_root(tmp_path, server, 6, max_concurrency=1, samples=2, rounds=1)
    real, puts = ResponseStore.put, []

    def put(self, entry):  # the disk fills after three answers; a full disk's OSError names no file
        puts.append(entry["key"])
        if len(puts) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, entry)

    monkeypatch.setattr(ResponseStore, "put", put)
    res = CliRunner().invoke(app, ["request", "--root", str(tmp_path)])
    store = os.environ[STORE_ENV]
    line = res.output.strip().splitlines()[-1]
    assert res.exit_code == 2 and line.startswith(f"error: {store}: No space left on device (writing the response "
                                                  f"store); the answers received are also kept in {tmp_path}")
    answered = set(server.answered())
    assert len(answered) == 4 and _journal_keys(Paths(tmp_path).journal) == answered  # none lost


def test_a_store_of_unusable_answers_is_forgotten_on_request(tmp_path, server_factory, monkeypatch):
    """A server that answers nothing usable: the stage fails and says how to get out; `forget-answers --dry-run`
    changes nothing; `forget-answers` removes exactly those answers; the fixed server then answers anew."""
    from tinythinker.cli import app
    from typer.testing import CliRunner

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    state = {"broken": True}
    server = server_factory(lambda q, a, b: "garbage" if state["broken"] else "ok")
    setup_root(tmp_path, server, 5, samples=2, rounds=1)
    cli = CliRunner()
    res = cli.invoke(app, ["request", "--root", str(tmp_path)])
    assert res.exit_code == 2 and "`tinythinker forget-answers`" in res.output and "raise teacher.rounds" in res.output
    bad = set(server.answered())
    state["broken"] = False
    res = cli.invoke(app, ["request", "--root", str(tmp_path)])  # fixed server: the store still serves the bad
    assert res.exit_code == 2 and len(server.events) == 5 and "No answer arrived in this run" in res.output

    store, journal = Path(os.environ[STORE_ENV]), Paths(tmp_path).journal
    before = ({p.name for p in store.glob("*/*.json")}, journal.read_bytes())
    res = cli.invoke(app, ["forget-answers", "--dry-run", "--root", str(tmp_path)])
    assert res.exit_code == 0 and "5 gave no valid completion" in res.output and "would forget 5" in res.output
    assert ({p.name for p in store.glob("*/*.json")}, journal.read_bytes()) == before
    res = cli.invoke(app, ["forget-answers", "--root", str(tmp_path)])
    assert res.exit_code == 0 and "forgot 5" in res.output
    assert not list(store.glob("*/*.json")) and _journal_keys(journal) == set()
    res = cli.invoke(app, ["request", "--root", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert len(server.events) == 10 and set(server.answered()) == bad  # the same 5 requests, asked anew
    res = cli.invoke(app, ["forget-answers", "--root", str(tmp_path)])
    assert "5 answers of this request set" in res.output and "0 gave no valid completion" in res.output
    assert len(_journal_keys(journal)) == 5  # the good answers stay



@pytest.mark.parametrize("fault,needle,counter", [
    ("notjson", "malformed response from http://127.0.0.1:{port}/v1: not JSON", "malformed_responses"),
    ("reset", "connection to http://127.0.0.1:{port}/v1 lost before an answer", "timeouts_or_connection_errors"),
])
def test_a_reply_that_is_no_answer_is_retried_and_named(tmp_path, server_factory, monkeypatch, fault, needle, counter):
    """A 200 whose body is not JSON (a proxy's page) and a connection reset after the request: each counted as
    what it is, retried, and named so in the log; the retry's answer is kept."""
    from tinythinker.teacher.request import request

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    server = server_factory(lambda q, attempt, b: fault if q == "Question 1?" and attempt == 0 else "ok")
    params = setup_root(tmp_path, server, 3, samples=2, rounds=1, max_retry_seconds=30.0)
    m = request(params, Paths(tmp_path))
    assert m[counter] == 1 and m["retries"] == 1 and m["failed_requests"] == 0 and m["questions_complete"] == 3
    params = setup_root(tmp_path / "give-up", server_factory(lambda q, a, b: fault), 1, samples=2, rounds=1,
                        max_retries=0, max_failures_in_a_row=1)
    with pytest.raises(TeacherError) as e:  # a server that only ever does this: the stage stops, naming it
        request(params, Paths(tmp_path / "give-up"))
    port = str(e.value).split("127.0.0.1:")[1].split("/")[0]
    assert needle.format(port=port) in str(e.value) and "within teacher.timeout" not in str(e.value)
