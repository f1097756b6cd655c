"""The spend cap `teacher.max_usd`: the request stage never lets what this request set has paid plus the worst case
of what it has in flight exceed the cap, live and batch, against the local servers of test_teacher_openai.py and
test_teacher_batch.py. The servers price what they answer with the test price and keep their own running total,
so the tests check the money from the server's side: what it answered, never twice, never over the cap."""
import json
import os
import subprocess
import sys
import time

import pytest

from tests.teacher.fakes import (API_KEY, BASE, BATCH, REPO, Teacher, closing_servers, completion_for, records,
                                send_json, setup_root)

from tinythinker.io import read_jsonl
from tinythinker.params import ParamsError, load
from tinythinker.paths import Paths
from tinythinker.teacher.backend import TeacherError
from tinythinker.teacher.cost import prompt_tokens_bound
from tinythinker.teacher.prompts import build_requests
from tinythinker.teacher.request import describe, dry_run, request

# The test price, USD per 1M tokens: a live answer of the servers (100 prompt tokens, 20 completion tokens per
# sample, n = 3) costs 100 x 10 + 60 x 20 = 2,200 micro-dollars; a batch answer half that.
PRICE = {"input": 10.0, "output": 20.0}
IN, OUT = PRICE["input"] / 1e6, PRICE["output"] / 1e6
REAL = 100 * IN + 60 * OUT
EPS = 1e-12  # float sums in a different order


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def worst(body: dict, share: float = 1.0) -> float:
    """The most a request can cost, computed here from its bytes: every token of the prompt is at least one byte
    (3 tokens of chat format per message, 3 priming the reply), every sample at max_tokens."""
    prompt = sum(3 + len(m["role"].encode()) + len(m["content"].encode()) for m in body["messages"]) + 3
    return share * (prompt * IN + body["n"] * body["max_tokens"] * OUT)


class PricedTeacher(Teacher):
    """The scripted server answering every request, which prices each answer by the usage it returns and tracks
    its exposure: at each arrival, what it has answered plus the worst case of every request it holds unanswered.
    An answer's real cost is booked before the response leaves, so the client cannot act on it any earlier."""

    def __init__(self, delay: float = 0.05):
        super().__init__(delay=delay)
        self.paid, self.holding, self.exposure = 0.0, {}, []

    def handle(self, h):
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        user = body["messages"][-1]["content"]
        with self.lock:
            event = {"t": time.monotonic(), "key": h.headers.get("X-TinyThinker-Request-Key"), "n": body["n"],
                     "question": user.split("\n")[0], "answered": False}
            self.events.append(event)
            self.holding[id(event)] = worst(body)
            self.exposure.append(self.paid + sum(self.holding.values()))
        time.sleep(self.delay)
        choices = [{"index": i, "message": {"role": "assistant", "content": completion_for(user, i)},
                    "finish_reason": "stop"} for i in range(body["n"])]
        usage = {"prompt_tokens": 100, "completion_tokens": 20 * body["n"], "total_tokens": 100 + 20 * body["n"]}
        payload = json.dumps({"id": f"chatcmpl-{len(self.events)}", "object": "chat.completion", "created": 0,
                              "model": body["model"], "choices": choices, "usage": usage}).encode()
        with self.lock:
            self.paid += 100 * IN + usage["completion_tokens"] * OUT
            del self.holding[id(event)]
        send_json(h, payload)
        with self.lock:
            event["answered"] = True


@pytest.fixture
def priced_factory():
    yield from closing_servers(PricedTeacher)


def run_cli(root, *args):
    out = subprocess.run([sys.executable, "-m", "tinythinker", "request", "--root", str(root), *args],
                         env={**os.environ, "OPENAI_API_KEY": API_KEY}, capture_output=True, text=True, timeout=120)
    return out.returncode, out.stdout, out.stderr


def cap_line(spent: float, cap: float, now: float, done: int, k: int) -> str:
    return (f"teacher spend cap reached: ${spent:.4f} spent of teacher.max_usd={cap:g} (${now:.4f} of it in this "
            f"run); {done} of {k} training questions have their valid completions, {k - done} left; raise "
            "teacher.max_usd and rerun: the answers bought are kept and not bought again")


def snapshot(root, store) -> dict:
    """Every file the stage could write, with its bytes."""
    files = [p for base in (root / "data", root / "metrics", store) if base.exists() for p in base.rglob("*")]
    return {str(p): p.read_bytes() for p in files if p.is_file()}


def test_cap_reached_mid_round_then_a_higher_cap_buys_only_the_rest(tmp_path, priced_factory, response_store):
    k = 8
    server = priced_factory()
    params = setup_root(tmp_path, server, k, max_concurrency=2, price=PRICE)
    paths = Paths(tmp_path)
    w = worst(read_jsonl(paths.requests)[0]["body"])
    assert all(worst(r["body"]) == pytest.approx(w) for r in read_jsonl(paths.requests)) and REAL < w
    cap = round(2 * w + 2.5 * REAL, 6)  # two in flight at their worst, and room for a few answers' real cost
    params = setup_root(tmp_path, server, k, max_concurrency=2, price=PRICE, max_usd=cap)

    cap_code, _, err = run_cli(tmp_path)
    answered = server.answered()
    n = len(answered)
    assert cap_code == 2 and "Traceback" not in err
    assert 0 < n < k and max(answered.values()) == 1  # mid-round, none answered twice
    assert len(server.events) == n  # every request sent was answered: none cut off, none left hanging
    journal = read_jsonl(paths.journal)
    assert {e["key"] for e in journal} == set(answered) and len(journal) == n  # stored and journaled
    assert len(list(response_store.glob("??/*.json"))) == n
    assert max(server.exposure) <= cap + EPS and server.paid <= cap + EPS  # the cap held at every arrival
    assert err.strip().splitlines()[-1] == "error: " + cap_line(n * REAL, cap, n * REAL, n, k)
    assert not paths.completions.exists() and not paths.metric("teacher_request").exists()

    # --dry-run now: the rest, nothing sent, nothing written
    before = snapshot(tmp_path, response_store)
    plan = dry_run(params, paths)
    assert (plan["requests"], plan["answered"], plan["round_requests"]) == (k - n, n, k)
    assert plan["usd_paid"] == pytest.approx(n * REAL) and plan["usd_worst"] == pytest.approx((k - n) * w)
    assert plan["usd_expected"] < plan["usd_worst"] and plan["fit_under_cap"] == int((cap - n * REAL + EPS) // w)
    code, out, _ = run_cli(tmp_path, "--dry-run")
    assert code == 0 and out.startswith(f"teacher round 1 would send {k - n} requests (live): {n} of {k} are "
                                        "answered by the journal or the response store")
    assert f"already paid for this request set: ${n * REAL:.4f}" in out and f"teacher.max_usd={cap:g}" in out
    assert len(server.events) == n and snapshot(tmp_path, response_store) == before
    print(f"\n[live cap] exit {cap_code}; {err.strip().splitlines()[-1]}; spent ${server.paid:.6f} of ${cap}, "
          f"max exposure ${max(server.exposure):.6f}; {n} of {k} answered\n[dry-run]\n{out}", file=sys.stderr)

    # A higher cap: only the rest is bought, and the stage completes.
    m = request(params.replace(**{"teacher.max_usd": 1.0}), paths)
    again = server.answered()
    assert len(server.events) == k and max(again.values()) == 1 and set(answered) < set(again)
    assert (m["requests_sent"], m["requests_from_journal"], m["questions_complete"]) == (k - n, n, k)
    assert m["max_usd"] == 1.0 and m["usd_paid_for_request_set"] == pytest.approx(k * REAL, abs=1e-4)
    assert m["usd"] == pytest.approx(k * REAL, abs=1e-4) and m["usd_this_run"] == pytest.approx((k - n) * REAL,
                                                                                                 abs=1e-4)
    print(f"[live rerun, max_usd=1] completed: {k - n} more answered, {k} of {k}; paid for the request set "
          f"${m['usd_paid_for_request_set']}", file=sys.stderr)


def test_one_request_over_the_cap_sends_nothing_and_is_no_failure(tmp_path, priced_factory):
    """A cap below one request's worst case: nothing is sent, the stage stops at the cap (not 'teacher refuses')."""
    server = priced_factory()
    params = setup_root(tmp_path, server, 3, price=PRICE, max_usd=0.001)
    with pytest.raises(TeacherError) as e:
        request(params, Paths(tmp_path))
    assert str(e.value) == cap_line(0.0, 0.001, 0.0, 0, 3) and server.events == []
    print(f"\n[cap under one request] {e.value}; {len(server.events)} requests sent", file=sys.stderr)


def test_what_was_paid_before_counts_against_the_cap(tmp_path, priced_factory, response_store):
    """A rerun with the same cap gets no fresh cap: the store's answers of this request set count, in another
    workspace too (a fresh checkout with no journal) — and answers of another request set do not."""
    k = 4
    server = priced_factory()
    params = setup_root(tmp_path, server, k, price=PRICE, max_concurrency=1)
    m = request(params.replace(**{"teacher.rounds": 1}), Paths(tmp_path))
    assert m["usd_paid_for_request_set"] == pytest.approx(k * REAL, abs=1e-4)

    other = tmp_path / "other"  # another workspace: the same request set, no journal; two more questions
    params2 = setup_root(other, server, k + 2, price=PRICE, max_concurrency=1, max_usd=k * REAL + 0.5 * REAL)
    with pytest.raises(TeacherError) as e:
        request(params2, Paths(other))
    assert len(server.events) == k  # the four are served by the store; the cap leaves no room for a fifth
    assert str(e.value) == cap_line(k * REAL, k * REAL + 0.5 * REAL, 0.0, k, k + 2)
    print(f"\n[paid before, other workspace] {e.value}; {len(server.events) - k} requests sent", file=sys.stderr)

    third = tmp_path / "third"  # another request set (another system message): nothing paid yet
    params3 = setup_root(third, server, 2, price=PRICE, max_usd=1.0, num_shots=1)
    plan = dry_run(params3, Paths(third))
    assert plan["usd_paid"] == 0.0 and plan["requests"] == 2 and plan["answered"] == 0


def test_batch_uploads_only_the_prefix_that_fits_then_a_higher_cap_buys_the_rest(tmp_path, api_factory,
                                                                                  response_store):
    k = 6
    api = api_factory()
    params = setup_root(tmp_path, api, k, **BATCH, price=PRICE, rounds=1)
    paths = Paths(tmp_path)
    wb = worst(read_jsonl(paths.requests)[0]["body"], share=0.5)
    cap = round(3.5 * wb, 6)
    params = params.replace(**{"teacher.max_usd": cap})
    plan = dry_run(params, paths)
    assert (plan["requests"], plan["fit_under_cap"], plan["mode"]) == (k, 3, "batch")
    assert plan["usd_worst"] == pytest.approx(k * wb)
    with pytest.raises(TeacherError) as e:
        request(params, paths)
    (b1,) = api.created()
    lines = api.input_lines(b1)
    reqs = read_jsonl(paths.requests)
    assert [line["body"] for line in lines] == [r["body"] for r in reqs[:3]]  # the prefix, in order
    assert sum(worst(line["body"], 0.5) for line in lines) <= cap
    real = 3 * REAL * 0.5
    assert str(e.value) == cap_line(real, cap, real, 3, k)
    assert len(read_jsonl(paths.journal)) == 3 and len(list(response_store.glob("??/*.json"))) == 3
    assert api.count("POST", "/v1/chat/completions") == 0 and not paths.completions.exists()
    print(f"\n[batch cap] {e.value}; uploaded {len(lines)} of {k} lines, worst ${3 * wb:.6f} <= cap ${cap}",
          file=sys.stderr)

    m = request(params.replace(**{"teacher.max_usd": 1.0}), paths)
    b1, b2 = api.created()
    assert [line["body"] for line in api.input_lines(b2)] == [r["body"] for r in reqs[3:]]  # only the rest
    assert (m["requests_sent"], m["requests_from_journal"], m["questions_complete"]) == (3, 3, k)
    assert m["usd_paid_for_request_set"] == pytest.approx(k * REAL * 0.5, abs=1e-4) and m["max_usd"] == 1.0
    print(f"[batch rerun, max_usd=1] completed: second batch {len(api.input_lines(b2))} lines; paid "
          f"${m['usd_paid_for_request_set']}", file=sys.stderr)


def test_a_batch_submitted_before_is_resumed_whatever_the_cap(tmp_path, api_factory, monkeypatch):
    """Stopped while its batch ran; rerun with a cap below it: the batch is paid either way, so it is polled and
    read back (its requests reserved whatever the cap), and nothing new is uploaded."""
    from tinythinker.teacher.batch import BatchBackend

    api = api_factory()
    params = setup_root(tmp_path, api, 3, **BATCH, price=PRICE, rounds=1)
    real = BatchBackend._wait

    async def stopped(self, records, label):
        raise KeyboardInterrupt  # as a kill while polling would
    monkeypatch.setattr(BatchBackend, "_wait", stopped)
    with pytest.raises(KeyboardInterrupt):
        request(params, Paths(tmp_path))
    monkeypatch.setattr(BatchBackend, "_wait", real)
    assert api.count("POST", "/v1/files") == 1 and len(api.created()) == 1
    m = request(params.replace(**{"teacher.max_usd": 0.0001}), Paths(tmp_path))
    assert api.count("POST", "/v1/files") == 1 and len(api.created()) == 1  # resumed, not uploaded again
    assert (m["questions_complete"], m["requests_sent"], m["batches_resumed"]) == (3, 3, 1)
    assert m["usd_paid_for_request_set"] == pytest.approx(3 * REAL * 0.5, abs=1e-4)
    print(f"\n[batch resumed under max_usd=0.0001] completed; {m['questions_complete']} of 3, paid "
          f"${m['usd_paid_for_request_set']}, uploads {api.count('POST', '/v1/files')}", file=sys.stderr)


def test_unknown_price_with_a_cap_is_refused_before_any_request(tmp_path, priced_factory, api_factory):
    server = priced_factory()
    setup_root(tmp_path, server, 3, model="gpt-4o", max_usd=5.0)
    refused, _, err = run_cli(tmp_path)
    line = err.strip().splitlines()[-1]
    assert refused == 2 and line == ("error: teacher.max_usd: no price known for teacher.model='gpt-4o'; set "
                                  "teacher.price (input, cached_input, output per 1M tokens, batch_discount)")
    assert server.events == [] and not Paths(tmp_path).journal.exists()
    code, out, _ = run_cli(tmp_path, "--dry-run")  # the same refusal, before anything
    assert code == 2 and server.events == []
    print(f"\n[unknown price] exit {refused}; {line}; {len(server.events)} requests sent", file=sys.stderr)

    api = api_factory()  # batch mode: not even a file upload
    params = setup_root(tmp_path / "b", api, 3, **BATCH, model="local-model", max_usd=5.0)
    with pytest.raises(TeacherError, match=r"^teacher.max_usd: no price known for teacher.model='local-model'"):
        request(params, Paths(tmp_path / "b"))
    assert api.calls == []

    # Without a cap the same model runs (unpriced: $0); with teacher.price given it runs under the cap.
    m = request(params.replace(**{"teacher.max_usd": None, "teacher.mode": "live"}), Paths(tmp_path / "b"))
    assert m["usd"] == 0.0 and m["questions_complete"] == 3
    params = setup_root(tmp_path / "c", server, 3, model="gpt-4o", max_usd=5.0, price=PRICE)
    m = request(params, Paths(tmp_path / "c"))
    assert m["questions_complete"] == 3 and len(server.answered()) == 3
    assert m["usd"] == pytest.approx(3 * REAL, abs=1e-4) and m["max_usd"] == 5.0


def test_a_given_price_overrides_the_table(tmp_path, priced_factory):
    server = priced_factory()
    params = setup_root(tmp_path, server, 2, model="gpt-4o-2024-05-13")
    m = request(params, Paths(tmp_path))
    assert m["usd"] == pytest.approx(2 * (100 * 5e-6 + 60 * 15e-6), abs=1e-4) and m["max_usd"] is None
    m = request(params.replace(**{"teacher.price": {**PRICE, "batch_discount": 0.4}}), Paths(tmp_path))
    assert m["usd"] == pytest.approx(2 * REAL, abs=1e-4) == m["usd_paid_for_request_set"]


def test_the_prompt_bound_is_above_the_real_token_count():
    """The bound the cap reserves at: UTF-8 bytes, at least one per BPE token, so above any tokenizer's count
    (checked with tiktoken's o200k and cl100k encodings when their files are cached)."""
    body = build_requests(BASE, records(1))[0]["body"]
    bound = prompt_tokens_bound(body["messages"])
    text = "".join(m["role"] + m["content"] for m in body["messages"])
    assert bound >= len(text.encode()) >= len(text)
    multi = [{"role": "user", "content": "日本語のテキスト — ünïcödé"}]
    assert prompt_tokens_bound(multi) == 3 + 4 + len("日本語のテキスト — ünïcödé".encode()) + 3
    try:
        from tinythinker.teacher.prompts import _tiktoken_counter
        count = _tiktoken_counter("gpt-4o-2024-05-13")
    except Exception:  # noqa: BLE001
        count = None
    if count is not None:
        from tinythinker.teacher.prompts import message_tokens
        assert message_tokens(body["messages"], count) <= bound


@pytest.mark.parametrize("key,value,needle", [
    ("teacher.max_usd", 0, "teacher.max_usd: must be > 0, got 0.0"),
    ("teacher.max_usd", -1, "teacher.max_usd: must be > 0, got -1.0"),
    ("teacher.max_usd", "ten", "teacher.max_usd: expected a number, got 'ten'"),
    ("teacher.max_usd", True, "teacher.max_usd: expected a number, got True"),
    ("teacher.price", {"input": -1, "output": 1}, "teacher.price.input: must be >= 0, got -1.0"),
    ("teacher.price", {"input": "cheap", "output": 1}, "teacher.price.input: expected a number, got 'cheap'"),
    ("teacher.price", {"output": 1}, "teacher.price.input: missing key"),
    ("teacher.price", {"input": 1, "output": 1, "batch_discount": 1.5},
     "teacher.price.batch_discount: must be in [0, 1]"),
    ("teacher.price", {"input": 1, "output": 1, "cached": 0.5}, "teacher.price.cached: unknown key"),
    ("teacher.price", 2.5, "teacher.price: expected a mapping"),
])
def test_bad_cap_and_price_are_params_errors_naming_the_key(key, value, needle):
    with pytest.raises(ParamsError, match="^" + needle.replace("[", r"\[").replace("]", r"\]")):
        BASE.replace(**{key: value})


def test_cap_and_price_load_from_dvc_set_params(tmp_path):
    """What `dvc exp run -S teacher.max_usd=25 -S 'teacher.price={input: 2.5, output: 10}'` writes loads."""
    from dvc.utils.hydra import apply_overrides

    f = tmp_path / "params.yaml"
    f.write_text((REPO / "params.yaml").read_text())
    apply_overrides(str(f), ["teacher.max_usd=25", "teacher.price={input: 2.5, output: 10}"])
    t = load(f).teacher
    assert (t.max_usd, t.price.input, t.price.output, t.price.cached_input, t.price.batch_discount) == \
        (25.0, 2.5, 10.0, None, 0.5)
    assert (load(REPO / "params.yaml").teacher.max_usd, load(REPO / "params.yaml").teacher.price) == (None, None)


def test_describe_reads_as_a_few_lines():
    plan = {"backend": "openai", "mode": "live", "round_requests": 20, "answered": 14, "in_submitted_batch": 0,
            "requests": 6, "max_usd": 0.0125, "usd_worst": 0.03, "usd_expected": 0.02, "usd_paid": 0.0123,
            "fit_under_cap": 0, "tokens_counted_by": "characters/4", "unpriced_model": None}
    text = describe(plan)
    assert text.splitlines()[0] == ("teacher round 1 would send 6 requests (live): 14 of 20 are answered by the "
                                    "journal or the response store")
    assert "at most $0.0300" in text and "expected $0.0200" in text and "$0.0002 left; 0 of the 6 fit" in text
    assert len(text.splitlines()) == 5


def test_the_offline_teacher_is_free_under_any_cap(tmp_path):
    """No price check, no reservation: a cap with the offline teacher changes nothing; its dry run costs $0."""
    from tests.teacher.fakes import SMALL, make_root

    params = BASE.replace(**SMALL, **{"teacher.max_usd": 0.0001, "teacher.rounds": 2})
    paths = make_root(tmp_path, params)
    plan = dry_run(params, paths)
    assert (plan["requests"], plan["usd_worst"], plan["fit_under_cap"]) == (30, 0.0, 30)
    assert "cost: $0 (the offline teacher is free)" in describe(plan) and not paths.journal.exists()
    m = request(params, paths)
    assert m["questions"] == 30 and m["usd"] == 0 and m["max_usd"] == 0.0001 and m["usd_paid_for_request_set"] == 0
    assert dry_run(params, paths)["requests"] == 0
