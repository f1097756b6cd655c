"""The machine-level response store: answers outlive the workspace (a rolled-back journal, a failed
`dvc exp run --temp`), a pulled journal feeds it, another backend or server is never served from it, and two
processes write it at once without harm."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.teacher.fakes import API_KEY, REPO, SMALL, make_root, outage_after, setup_root

from tinythinker.io import read_jsonl
from tinythinker.params import load
from tinythinker.paths import STORE_ENV, Paths, store_dir
from tinythinker.teacher.request import request
from tinythinker.teacher.store import ResponseStore

BASE = load(REPO / "params.yaml")  # params.yaml holds every value


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def keys(store: Path) -> set[str]:
    return {p.stem for p in store.glob("*/*.json")}


def test_rolled_back_journal_is_answered_from_the_store(tmp_path, server_factory, response_store):
    server = server_factory(lambda q, a, b: "length" if q == "Question 1?" and b["n"] == 3 else "ok")
    params = setup_root(tmp_path, server, 6)
    paths = Paths(tmp_path)
    first = request(params, paths)
    assert first["requests_sent"] == 7 and keys(response_store) == {e["key"] for e in read_jsonl(paths.journal)}
    rows = read_jsonl(paths.completions)
    # What `git checkout -- . && dvc checkout` does to a journal committed after two answers.
    lines = paths.journal.read_text().splitlines(keepends=True)
    paths.journal.write_text("".join(lines[:2]))
    m = request(params, paths)
    assert len(server.events) == 7  # nothing asked again
    assert (m["requests_sent"], m["requests_from_journal"], m["requests_from_store"]) == (0, 2, 5)
    assert read_jsonl(paths.completions) == rows and len(read_jsonl(paths.journal)) == 7


def test_pulled_journal_feeds_an_empty_store(tmp_path, server_factory, monkeypatch):
    server = server_factory()
    params = setup_root(tmp_path / "a", server, 4)
    request(params, Paths(tmp_path / "a"))
    # Another machine: its own empty store, the journal from `dvc pull`.
    other = tmp_path / "other-store"
    monkeypatch.setenv(STORE_ENV, str(other))
    b = Paths(tmp_path / "b")
    setup_root(b.root, server, 4)
    shutil.copy(Paths(tmp_path / "a").journal, b.journal)
    m = request(params, b)
    assert (m["requests_sent"], m["requests_from_journal"], m["journal_entries_stored"]) == (0, 4, 4)
    assert keys(other) == {e["key"] for e in read_jsonl(b.journal)}
    b.journal.unlink()  # and from now on the store serves every checkout of this machine
    m = request(params, b)
    assert (m["requests_sent"], m["requests_from_store"], m["journal_entries_stored"]) == (0, 4, 0)
    assert len(server.events) == 4


def test_offline_answers_never_serve_the_openai_backend(tmp_path, server_factory, response_store):
    params = BASE.replace(**SMALL)
    paths = make_root(tmp_path, params)
    offline = request(params, paths)
    assert keys(response_store) == set()  # free answers are journaled only
    server = server_factory()
    m = request(params.replace(**{"teacher.backend": "openai", "teacher.base_url": server.url}), paths)
    assert m["requests_from_journal"] == 0 and m["requests_sent"] == len(server.events) >= 30
    assert len(read_jsonl(paths.journal)) == offline["requests_sent"] + m["requests_sent"]
    # Nor does the same backend with another seed or fault rate: they make other answers.
    again = request(params.replace(**{"teacher.offline_fault_rate": 0.2}), paths)
    assert again["requests_from_journal"] == 0


def test_another_server_is_not_served_the_same_server_is(tmp_path, server_factory, response_store):
    a, b = server_factory(), server_factory()
    params = setup_root(tmp_path, a, 3)
    paths = Paths(tmp_path)
    request(params, paths)
    m = request(params.replace(**{"teacher.base_url": b.url}), paths)
    assert m["requests_sent"] == 3 and len(b.events) == 3
    # The same server spelt differently (case, trailing slash) is the same origin.
    same = a.url.replace("http://127.0.0.1", "HTTP://127.0.0.1") + "/"
    paths.journal.unlink()
    m = request(params.replace(**{"teacher.base_url": same}), paths)
    assert (m["requests_sent"], m["requests_from_store"]) == (0, 3) and len(a.events) == 3


WRITER = textwrap.dedent("""
    import json, sys
    from tinythinker.teacher.store import ResponseStore
    store, who = ResponseStore(sys.argv[1]), sys.argv[2]
    for i in range(200):
        kept = store.put({"key": f"{i:064x}", "body": {"i": i}, "response": {"by": who, "pad": "x" * 5000}})
        assert kept["response"]["by"] in ("a", "b")
""")


def test_two_processes_write_the_store_at_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), who], env=env) for who in "ab"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    files = sorted(tmp_path.rglob("*"))
    assert not [f for f in files if f.name.endswith(".tmp")]
    stored = [json.loads(f.read_text()) for f in files if f.suffix == ".json"]
    assert len(stored) == 200 and all(len(s["response"]["pad"]) == 5000 for s in stored)
    store = ResponseStore(tmp_path)
    assert all(store.get(f"{i:064x}")["body"] == {"i": i} for i in range(200))


def test_store_first_answer_stays_and_unreadable_records_are_replaced(tmp_path):
    store = ResponseStore(tmp_path)
    key = "ab" * 32
    assert store.put({"key": key, "body": {}, "response": {"v": 1}})["response"] == {"v": 1}
    assert store.put({"key": key, "body": {}, "response": {"v": 2}})["response"] == {"v": 1}
    (tmp_path / "ab" / f"{key}.json").write_text('{"key": "ab')  # a disk fault
    assert store.get(key) is None
    assert store.put({"key": key, "body": {}, "response": {"v": 3}})["response"] == {"v": 3}
    assert store.get(key)["response"] == {"v": 3}


def test_store_location(monkeypatch, tmp_path):
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "mine"))
    assert store_dir() == tmp_path / "mine"
    monkeypatch.delenv(STORE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store_dir() == tmp_path / "xdg" / "tinythinker" / "responses"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store_dir() == tmp_path / "home" / ".cache" / "tinythinker" / "responses"


def _dvc(cmd: str, repo: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": API_KEY}
    return subprocess.run(cmd, shell=True, cwd=repo, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_failed_temp_experiment_keeps_its_answers(tmp_path, server_factory, response_store):
    """`dvc exp run --temp` (what queued runs do) whose request stage fails after 5 answers: the answers are
    in the store, a failed stage locks nothing, and the rerun pays only for the rest. About 40 s of dvc."""
    from tests.helpers import copy_repo

    script, up = outage_after(5)

    server = server_factory(script)
    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["dataset"]["synthetic"].update(num_train=12)
    params["teacher"].update(backend="openai", base_url=server.url, samples=2, rounds=1, max_concurrency=1,
                             max_retry_seconds=0.5, max_retries=5, max_failures_in_a_row=3)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _dvc("dvc repro prompt && git add -A && git commit -qm prompt", repo).returncode == 0
    journal = Paths(repo).journal

    out = _dvc("dvc exp run --temp request", repo)
    assert out.returncode != 0 and "HTTP 500 server_error" in out.stdout + out.stderr
    assert len(keys(response_store)) == 5 and not journal.exists()

    out = _dvc("dvc repro request", repo)  # in the workspace: the stored answers, then the same outage
    assert out.returncode != 0 and "error: teacher unreachable or failing" in out.stdout + out.stderr
    assert "request" not in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert len(read_jsonl(journal)) == 5 and not Paths(repo).completions.exists()

    up["answers"] = None  # the server is back
    sent_before = len(server.events)
    out = _dvc("dvc repro request", repo)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(server.events) - sent_before == 12 - 5  # only what no run had paid for
    assert len(server.answered()) == 12 and max(server.answered().values()) == 1
    assert "request" in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
