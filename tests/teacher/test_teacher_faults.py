"""Faults the server or the disk raise mid-run: each ends in the right result or one line naming the file, key or
server (exit 2), and no answer that came is lost or bought again. Against the scripted server of fakes.py."""
import errno
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.teacher.fakes import API_KEY, BASE, SMALL, assert_key_never_written, make_root, setup_root

from tinythinker.cli import app
from tinythinker.io import DataError, read_json, read_jsonl, write_jsonl
from tinythinker.paths import STORE_ENV, Paths
from tinythinker.teacher import claims as claims_module
from tinythinker.teacher import store as store_module
from tinythinker.teacher.request import dry_run, request


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def journal_keys(root: Path) -> set[str]:
    path = Paths(root).journal
    return {r["key"] for r in read_jsonl(path)} if path.exists() else set()


def store_keys() -> set[str]:
    return {p.stem for p in Path(os.environ[STORE_ENV]).glob("??/*.json")}


def run(root: Path):
    """(exit code, last line of the output) of `tinythinker request` in this process."""
    res = CliRunner().invoke(app, ["request", "--root", str(root)])
    lines = res.output.strip().splitlines()
    return res.exit_code, lines[-1] if lines else "", res.output


def test_a_quota_error_waits_for_the_answers_in_flight(tmp_path, server_factory):
    """Concurrency 8, one-second answers: a quota error while 7 are on their way stops new requests, keeps the 7,
    and the rerun (quota back) buys only what was never answered."""
    state = {"quota": True}
    server = server_factory(lambda q, a, b: "quota" if q == "Question 9?" and state["quota"] else "ok", delay=1.0)
    setup_root(tmp_path, server, 24, max_concurrency=8, samples=2, rounds=1, timeout=5.0)
    rc, line, _ = run(tmp_path)
    assert rc == 2 and line.startswith("error: teacher out of quota, not retried: HTTP 429 insufficient_quota")
    answered = set(server.answered())
    assert len(answered) >= 7 and journal_keys(tmp_path) == answered == store_keys()  # in flight: kept
    assert len(server.events) < 24  # nothing new after the quota error
    state["quota"] = False
    n = len(server.events)
    assert run(tmp_path)[0] == 0
    assert {e["key"] for e in server.events[n:]}.isdisjoint(answered)
    assert max(server.answered().values()) == 1 and journal_keys(tmp_path) == store_keys()


def test_a_full_store_disk_mid_run_loses_nothing_and_buys_nothing_twice(tmp_path, server_factory, monkeypatch):
    """The store's disk fills while 4 answers are on their way: every answer reaches the journal, the stage stops
    naming the store, and the rerun (space freed) copies the journal into the store and buys only the rest."""
    server = server_factory(delay=0.5)
    setup_root(tmp_path, server, 16, max_concurrency=4, samples=2, rounds=1)
    real, writes = store_module._write_durable, []

    def full(path, data, replace):  # a full disk's OSError names no file
        writes.append(path)
        if len(writes) > 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, replace)

    monkeypatch.setattr(store_module, "_write_durable", full)
    rc, line, _ = run(tmp_path)
    assert rc == 2 and "No space left on device (writing the response store)" in line
    assert line.startswith(f"error: {os.environ[STORE_ENV]}/") and "rerun" in line  # the record, by its path
    answered = set(server.answered())
    assert journal_keys(tmp_path) == answered and len(store_keys()) == 4 and len(answered) > 4
    assert len(server.events) < 16
    monkeypatch.setattr(store_module, "_write_durable", real)
    n = len(server.events)
    rc, _, _ = run(tmp_path)
    assert rc == 0 and {e["key"] for e in server.events[n:]}.isdisjoint(answered)
    assert max(server.answered().values()) == 1 and journal_keys(tmp_path) == store_keys()
    m = read_json(Paths(tmp_path).metric("teacher_request"))
    assert m["journal_entries_stored"] == len(answered) - 4


def test_a_full_disk_at_start_names_the_store_record(tmp_path, server_factory, monkeypatch):
    """Copying a pulled journal into the store, and writing a claim, on a full disk: the path, not a bare errno."""
    server = server_factory()
    setup_root(tmp_path, server, 3, samples=2, rounds=1)
    assert run(tmp_path)[0] == 0
    for p in Path(os.environ[STORE_ENV]).glob("??/*.json"):
        p.unlink()  # a fresh machine's store; the journal holds the answers

    def full(path, data, replace):
        raise OSError(errno.ENOSPC, "No space left on device")

    real = store_module._write_durable
    monkeypatch.setattr(store_module, "_write_durable", full)
    rc, line, _ = run(tmp_path)
    assert rc == 2 and line.startswith(f"error: {os.environ[STORE_ENV]}/") and ".json: No space left" in line
    monkeypatch.setattr(store_module, "_write_durable", real)
    for p in Path(os.environ[STORE_ENV]).glob("??"):
        for f in p.iterdir():
            f.unlink()
    setup_root(tmp_path / "b", server, 2, samples=2, rounds=1, max_concurrency=1)

    def no_room(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(claims_module, "json", types.SimpleNamespace(dump=no_room, loads=json.loads))
    n = len(server.events)
    rc, line, _ = run(tmp_path / "b")
    assert rc == 2 and f"{os.environ[STORE_ENV]}/claims/" in line and "No space left on device" in line
    assert len(server.events) == n and not list((Path(os.environ[STORE_ENV]) / "claims").glob("*"))


def test_a_directory_where_a_record_goes_is_named(tmp_path, server_factory):
    server = server_factory()
    params = setup_root(tmp_path, server, 1, samples=2, rounds=1)
    from tinythinker.teacher.backend import origin
    from tinythinker.teacher.store import request_key

    body = read_jsonl(Paths(tmp_path).requests)[0]["body"]
    record = Path(os.environ[STORE_ENV]) / (key := request_key(body, "round1", origin(params)))[:2] / f"{key}.json"
    (record / "inside").mkdir(parents=True)
    rc, line, _ = run(tmp_path)
    assert rc == 2 and line.startswith(f"error: {record}") and "writing the response store" in line
    assert journal_keys(tmp_path) == set(server.answered()) == {key}  # the answer is in the journal


@pytest.mark.parametrize("behaviour,needle", [
    ("html", "not a chat completion"),
    ("raw:[]", "a list body"),
    ('raw:{"choices": "none"}', "no list of choices"),
    ('raw:{"choices": [{"message": "hi", "finish_reason": "stop"}]}', "choice 0 has no message with text"),
    ('raw:{"choices": [{"message": {"content": 7}, "finish_reason": "stop"}]}', "choice 0 has no message"),
    ('raw:{"choices": [], "usage": "lots"}', "usage is not an object"),
    ("raw:null", "not a chat completion"),
    ("raw:", "not JSON"),
])
def test_any_200_that_is_no_chat_completion_is_retried_then_named(tmp_path, server_factory, behaviour, needle):
    """A 200 of any content type and body: counted as malformed and retried; a server that only answers so stops
    the stage with one line naming it, never a traceback."""
    server = server_factory(lambda q, attempt, b: behaviour if attempt == 0 else "ok")
    params = setup_root(tmp_path, server, 2, samples=2, rounds=1, max_retry_seconds=30.0)
    m = request(params, Paths(tmp_path))
    assert m["malformed_responses"] == 2 and m["questions_complete"] == 2
    setup_root(tmp_path / "never", server_factory(lambda q, a, b: behaviour), 1, samples=2, rounds=1,
               max_retries=0, max_failures_in_a_row=1)
    rc, line, out = run(tmp_path / "never")
    assert rc == 2 and "Traceback" not in out and "malformed response from http://127.0.0.1:" in line
    assert needle in line


class Usage:
    """A server that reports `usage` for every answer."""

    def __init__(self, factory, usage):
        self.server = factory()
        self.server.usage = lambda body: usage


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": -2_000_000, "completion_tokens": 10},
    {"prompt_tokens": 20_000_000, "completion_tokens": 20_000_000},
    {"prompt_tokens": "many", "completion_tokens": 10},
])
def test_impossible_usage_counts_at_the_worst_case_with_a_warning(tmp_path, server_factory, usage):
    """Negative usage must not lift the cap; 20M tokens must not exhaust it; both are said, per answer."""
    server = Usage(server_factory, usage).server
    params = setup_root(tmp_path, server, 3, samples=2, rounds=1, model="gpt-4o-mini-2024-07-18", max_usd=1.0)
    res = CliRunner().invoke(app, ["request", "--root", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert res.output.count("reported impossible usage") == 3 and "counted at the request's worst case" in res.output
    m = read_json(Paths(tmp_path).metric("teacher_request"))
    from tinythinker.teacher.cost import SpendCap

    worst = sum(SpendCap(None).worst(r["body"]) for r in read_jsonl(Paths(tmp_path).requests))
    assert m["usage_impossible"] == 3 and m["usd"] == pytest.approx(worst, abs=1e-4) and 0 < m["usd"] < 0.01
    plan = dry_run(params, Paths(tmp_path))
    assert plan["usd_paid"] == pytest.approx(worst)  # what the cap sees later: the worst case, not -$2 or $1600


@pytest.mark.parametrize("key", ["sk-abc\ndef", "sk-abc def", "sk-abc\n", "sk-é"])
def test_an_api_key_no_header_can_carry_is_refused_before_sending_and_never_printed(tmp_path, server_factory, key):
    server = server_factory()
    setup_root(tmp_path, server, 2, samples=2, rounds=1)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "tinythinker", "request", "--root", str(tmp_path)],
                         env={**os.environ, "OPENAI_API_KEY": key}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and time.monotonic() - t0 < 20 and server.events == []
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: OPENAI_API_KEY holds ") and "nothing was sent" in line
    assert "abc" not in out.stderr + out.stdout and "Traceback" not in out.stderr


def test_offline_answers_stay_out_of_the_response_store(tmp_path, server_factory):
    """The offline teacher's free answers are journaled only, even when a paid run later opens the same journal."""
    params = BASE.replace(**SMALL)
    paths = make_root(tmp_path, params)
    request(params, paths)
    assert len(read_jsonl(paths.journal)) > 0
    server = server_factory()
    request(params.replace(**{"teacher.backend": "openai", "teacher.base_url": server.url}), paths)
    offline = {r["key"] for r in read_jsonl(paths.journal) if r["origin"].startswith("offline")}
    assert offline and not offline & store_keys() and store_keys()


def test_a_request_set_of_another_training_split_is_refused(tmp_path, server_factory):
    server = server_factory()
    setup_root(tmp_path, server, 4, samples=2, rounds=1)
    write_jsonl(Paths(tmp_path).split("train"), [])  # the split emptied (or changed) since `prompt` ran
    with pytest.raises(DataError, match=r"requests.jsonl: built for another training split than .*train.jsonl "
                                        r"\(4 requests, 0 training questions\); rerun `dvc repro prompt`"):
        request(BASE.replace(**{"teacher.backend": "openai", "teacher.base_url": server.url}), Paths(tmp_path))
    assert server.events == []


def test_a_dry_run_on_a_fresh_clone_builds_the_requests_or_names_the_command(tmp_path):
    params = BASE.replace(**SMALL)
    with pytest.raises(DataError, match=r"requests.jsonl: no such file, nor the training split .* `dvc repro "
                                        r"prompt` makes both"):
        dry_run(params, Paths(tmp_path))
    paths = make_root(tmp_path, params)
    expected = dry_run(params, paths)
    paths.requests.unlink()  # prepared, not yet prompted: the requests are built as `prompt` would
    assert dry_run(params, paths) == expected and not paths.requests.exists()
    assert_key_never_written(tmp_path)


def test_a_failed_build_leaves_no_temporaries_behind(tmp_path):
    """What a build killed mid-swap left beside data/sft goes at the next build, even one that then fails."""
    from tinythinker.teacher.build import build

    params = BASE.replace(**SMALL)
    paths = make_root(tmp_path, params)
    request(params, paths)
    build(params, paths)
    stale = paths.sft_data.parent / ".sft.tmp-killed" / "old" / "summarize"
    stale.mkdir(parents=True)
    (stale / "summarize.jsonl").write_text("{}\n")
    paths.completions.write_text("not json\n")  # this build fails before it writes anything
    with pytest.raises(DataError, match="completions.jsonl:1"):
        build(params, paths)
    assert not any(p.name.startswith(".sft.tmp-") for p in paths.sft_data.parent.iterdir())
    assert (paths.sft_data / "chains.jsonl").exists()  # the previous build stays whole


def test_json_nested_past_the_parser_is_a_data_error_naming_the_line(tmp_path):
    """A line of `[` x 100,000 (a hand edit, a broken tool) is no RecursionError traceback."""
    from tinythinker.io import read_json
    from tinythinker.teacher.store import Journal

    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "rows.jsonl").write_text('{"a": 1}\n' + deep + "\n")
    with pytest.raises(DataError, match=r"rows.jsonl:2: JSON nested too deep to read"):
        read_jsonl(tmp_path / "rows.jsonl")
    (tmp_path / "one.json").write_text(deep)
    with pytest.raises(DataError, match=r"one.json: JSON nested too deep to read"):
        read_json(tmp_path / "one.json")
    (tmp_path / "journal.jsonl").write_text(deep + "\n" + '{"key": "b"}\n')
    with pytest.raises(DataError, match=r"journal.jsonl:1: not a journal entry"):
        Journal(tmp_path / "journal.jsonl")
