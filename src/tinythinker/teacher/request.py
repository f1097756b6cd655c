"""Stage `request`: ask the teacher for rationales, in re-ask rounds, never paying twice (spec 2.7, 3.1).

Backends: `openai` (the official SDK against api.openai.com or any OpenAI-compatible server) and `offline`
(the synthetic task's teacher). Both go through the same journal, rounds and parser. Each request is keyed by
a hash of who answers (backend and normalised server), its full body (model included) and its round; a
rerun — after a crash, a SIGKILL, a failed or finished run — rebuilds the same rounds and sends only what
neither the journal nor the response store holds. That works because each round's requests depend only on
the answers of earlier rounds. A paid response goes to the machine's response store first, then to the
journal (see journal.py); the offline teacher's free answers are journaled only. With `teacher.mode=batch`
(batch.py) each round's missing requests go to the OpenAI Batch API first, under the same keys, and its
answers take the same way into the store and the journal.

The stage stops (exit 2, the server's message on the last line, nothing written but the answers received):
- at once on 401/403/404 (key, access, model or URL) and on a 429 `insufficient_quota`;
- when the server is down: `teacher.max_failures_in_a_row` requests in a row ran out of their retry budget
  (`teacher.max_retries` attempts within `teacher.max_retry_seconds`) on 5xx, 408, 409, 429, timeouts or lost
  connections;
- when requests cannot succeed as sent: nothing of this run has an answer yet (sent now, or found in the
  journal or store) and `teacher.max_failures_in_a_row` requests, or every request of the first round, ended
  unanswered, refused (other 4xx) or out of retries.
After any answer a refused request is that request's problem (a content filter, one over-long prompt):
logged, counted and asked again in the next round; whether the run is good enough is then decided by
`teacher.min_coverage`, the share of training questions that must end with a valid completion.
"""
from __future__ import annotations

import asyncio
import math
import os
import random
import sys
import time
from collections import Counter
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from ..io import DataError, read_jsonl, write_json, write_jsonl
from .store import Journal, ResponseStore, request_key
from ..params import Params, TeacherParams
from .parse import filter_answer, is_complete
from ..paths import Paths, store_dir
from .prompts import BATCH_DISCOUNT, PRICES, approx_tokens, limit_key, message_tokens

KEY_HEADER = "X-TinyThinker-Request-Key"  # lets a server (or a test) tell rounds and repeats apart
_FATAL_STATUS = (401, 403, 404)  # wrong key, no access, wrong model or URL: no request can succeed
_LOGGED_FAILURES = 10  # unanswered requests reported one line each; the rest are only counted


class TeacherError(DataError):
    """The teacher cannot be used (no key, refused, out of quota, unreachable); the message says what to fix."""


class RequestFailed(Exception):
    """One request ended without an answer; str() is the server's own message. `transient`: it ran out of
    retries (server errors, timeouts, no connection), as opposed to being refused as sent. `deferred`: no
    verdict on the request at all (its batch expired or was cancelled first); asked again, never counted as
    a sign that requests cannot succeed."""

    def __init__(self, message: str, transient: bool, deferred: bool = False):
        super().__init__(message)
        self.transient, self.deferred = transient, deferred


class Backend:
    """What the rounds need of a teacher. `complete` answers one request; `prepare_round` lets a batch teacher
    (batch.py) have a round's missing requests answered together first, which `complete` then hands out, and
    `finish_round` tells it they are stored; `provenance` adds to a new journal entry what its price depends on."""

    batched = False  # prepare_round wants the round's missing requests

    async def prepare_round(self, missing: list[tuple[dict, str, str]], label: str) -> bool:
        """Answer `missing` ((body, salt, key) each) ahead of `complete`; True if any answer came."""
        return False

    def finish_round(self) -> None:
        """Every answer of the round is stored."""

    def provenance(self, key: str) -> dict:
        return {}

    async def complete(self, body: dict, key: str, qid: str, salt: str) -> dict:
        raise NotImplementedError

    async def close(self) -> None:
        pass


def server_url(base_url: Optional[str]) -> str:
    """The server the SDK talks to, normalised (case, default port, trailing slash) and without any
    user:password part, which must never reach a key, the store or a log."""
    url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    try:
        u = urlsplit(url.strip())
        scheme, host, port = u.scheme.lower(), (u.hostname or "").lower(), u.port
    except ValueError as e:
        raise TeacherError(f"teacher.base_url: not a URL ({e})") from None
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != {"http": 80, "https": 443}.get(scheme):
        host += f":{port}"
    return urlunsplit((scheme, host, u.path.rstrip("/"), u.query, ""))


def origin(params: Params) -> str:
    """Who answers, as part of every request key: another backend or server never serves these answers."""
    t = params.teacher
    if t.backend == "offline":  # its answers are a function of the seed and the fault rates too
        return (f"offline seed={params.seed} fault_rate={t.offline_fault_rate!r} "
                f"wrong_fact_rate={t.offline_wrong_fact_rate!r}")
    return f"{t.backend} {server_url(t.base_url)}"


class RateLimiter:
    """Token buckets for requests and tokens per minute, refilled continuously, at most one second of burst."""

    def __init__(self, rpm: float, tpm: float):
        self.rate = {"req": rpm / 60.0, "tok": tpm / 60.0}
        self.cap = {"req": max(1.0, rpm / 60.0), "tok": max(1.0, tpm / 60.0)}
        self.level = {"req": 1.0, "tok": self.cap["tok"]}
        self.t = time.monotonic()
        self.not_before = 0.0
        self.lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        """After a 429 every request waits, not just the refused one (the original paused all for 15 s)."""
        self.not_before = max(self.not_before, time.monotonic() + seconds)

    async def acquire(self, tokens: int) -> float:
        """Wait for one request and `tokens`; return the tokens charged (for `refund`)."""
        tokens = min(tokens, self.cap["tok"])  # a request above one second of budget waits for a full bucket
        async with self.lock:  # first come, first served: large requests are not starved by small ones
            while True:
                now = time.monotonic()
                if now < self.not_before:
                    await asyncio.sleep(self.not_before - now)
                    continue
                for k in self.level:
                    self.level[k] = min(self.cap[k], self.level[k] + (now - self.t) * self.rate[k])
                self.t = now
                if self.level["req"] >= 1 and self.level["tok"] >= tokens:
                    self.level["req"] -= 1
                    self.level["tok"] -= tokens
                    return tokens
                wait = max((1 - self.level["req"]) / self.rate["req"],
                           (tokens - self.level["tok"]) / self.rate["tok"])
                await asyncio.sleep(max(wait, 0.001))

    def refund(self, tokens: float) -> None:
        """A request the server refused or never received gives its tokens back: only answers spend them."""
        self.level["tok"] = min(self.cap["tok"], self.level["tok"] + tokens)


class OfflineBackend(Backend):
    """The synthetic task's teacher: deterministic per request key, with a share of realistic faults."""

    def __init__(self, records: dict[str, dict], seed: int, fault_rate: float, wrong_fact_rate: float):
        self.records, self.seed, self.fault_rate, self.wrong_fact_rate = records, seed, fault_rate, wrong_fact_rate

    async def complete(self, body: dict, key: str, qid: str, salt: str) -> dict:
        from ..data.synthetic import FAULTS, offline_completion

        record = self.records.get(qid)
        if record is None or "meta" not in record:
            raise DataError(f"question {qid}: not in data/prepared/train.jsonl with its synthetic meta; "
                            "the offline teacher answers synthetic questions only")
        rng = random.Random(f"{self.seed}:{request_key(body, salt)}")  # the origin-free key: answers as before
        choices = []
        for i in range(body["n"]):
            fault = rng.choice(FAULTS) if rng.random() < self.fault_rate else None
            content, finish = offline_completion(record, rng, fault, rng.random() < self.wrong_fact_rate)
            choices.append({"index": i, "message": {"role": "assistant", "content": content},
                            "finish_reason": finish})
        prompt_tokens = message_tokens(body["messages"])
        completion_tokens = sum(approx_tokens(c["message"]["content"]) for c in choices)
        return {"object": "chat.completion", "model": "offline", "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}


class OpenAIBackend(Backend):
    """AsyncOpenAI with our own retries (429 honouring Retry-After, 5xx, timeouts, lost connections) under
    request and token rate limits. The SDK's own retries are off so that every attempt is counted and paced."""

    def __init__(self, t: TeacherParams, stats: Counter):
        import openai

        key = os.environ.get("OPENAI_API_KEY")
        if not key:
            raise TeacherError("teacher.backend=openai needs the OPENAI_API_KEY environment variable "
                               "(any non-empty value for a local server without auth); nothing was sent")
        self.openai, self.t, self.stats, self.key = openai, t, stats, key
        self.server = server_url(t.base_url)
        # base_url None lets the SDK read OPENAI_BASE_URL, else api.openai.com.
        self.client = openai.AsyncOpenAI(api_key=key, base_url=t.base_url, max_retries=0, timeout=t.timeout)
        self.limiter = RateLimiter(t.requests_per_minute, t.tokens_per_minute)

    @staticmethod
    def _delay(attempt: int, err: Optional[Exception]) -> float:
        resp = getattr(err, "response", None)
        headers = resp.headers if resp is not None else {}
        for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
            try:
                return min(120.0, float(headers[name]) * scale)
            except (KeyError, TypeError, ValueError):
                pass
        return min(60.0, 0.5 * 2.0 ** attempt) * (0.5 + random.random() / 2)  # backoff with jitter

    def _message(self, err: Exception) -> str:
        """The server's own words, on one line, with the API key masked should a server echo it."""
        o = self.openai
        if isinstance(err, o.APIStatusError):
            body = err.body
            text = body.get("message") if isinstance(body, dict) else body
            code = body.get("code") or body.get("type") if isinstance(body, dict) else None
            msg = f"HTTP {err.status_code}" + (f" {code}" if code else "") + (f": {text}" if text else "")
        elif isinstance(err, o.APITimeoutError):
            msg = f"no answer from {self.server} within teacher.timeout={self.t.timeout:g} s"
        elif isinstance(err, o.APIConnectionError):
            msg = f"no connection to {self.server}: {err.__cause__ or err}"
        else:
            msg = f"malformed response from {self.server}: {err}"
        return " ".join(str(msg).replace(self.key, "<OPENAI_API_KEY>").split())[:500]

    def refusal(self, err: Exception) -> Optional[TeacherError]:
        """The TeacherError for an error after which no request can succeed (quota, key, access, model, URL)."""
        o = self.openai
        if not isinstance(err, o.APIStatusError):
            return None
        why = self._message(err)
        if err.status_code == 429 and "insufficient_quota" in (err.code, err.type):
            return TeacherError(f"teacher out of quota, not retried: {why}")
        if err.status_code in _FATAL_STATUS:
            return TeacherError(f"teacher request refused; check OPENAI_API_KEY, teacher.model and "
                                f"teacher.base_url: {why}")
        return None

    async def complete(self, body: dict, key: str, qid: str, salt: str) -> dict:
        """The response, or RequestFailed; TeacherError when no request can succeed (key, access, quota)."""
        o = self.openai
        cost = message_tokens(body["messages"]) + body["n"] * body[limit_key(body)]
        start = time.monotonic()
        for attempt in range(self.t.max_retries + 1):
            charged = await self.limiter.acquire(cost)
            try:
                resp = await self.client.chat.completions.create(**body, extra_headers={KEY_HEADER: key})
                return resp.model_dump(mode="json", exclude_none=True)
            except o.APIStatusError as e:
                self.limiter.refund(charged)
                why = self._message(e)
                if (fatal := self.refusal(e)) is not None:
                    raise fatal from None
                if e.status_code == 429:
                    self.stats["rate_limited"] += 1
                    delay = self._delay(attempt, e)
                    self.limiter.pause(delay)
                elif e.status_code < 500 and e.status_code not in (408, 409):
                    self.stats["rejected_requests"] += 1  # this request as sent; retrying cannot help
                    raise RequestFailed(why, transient=False) from None
                else:
                    self.stats["server_errors"] += 1
                    delay = self._delay(attempt, e)
            except (o.APITimeoutError, o.APIConnectionError) as e:
                if not isinstance(e, o.APITimeoutError):
                    self.limiter.refund(charged)  # never reached the server; a timed-out one may have
                self.stats["timeouts_or_connection_errors"] += 1
                why, delay = self._message(e), self._delay(attempt, e)
            except o.APIResponseValidationError as e:
                self.stats["malformed_responses"] += 1
                why, delay = self._message(e), self._delay(attempt, None)
            if attempt == self.t.max_retries or time.monotonic() - start + delay > self.t.max_retry_seconds:
                break
            self.stats["retries"] += 1
            await asyncio.sleep(delay)
        self.stats["failed_requests"] += 1
        raise RequestFailed(f"{why} (gave up after {attempt + 1} attempts in {time.monotonic() - start:.1f} s)",
                            transient=True)

    async def close(self) -> None:
        await self.client.close()


class Breaker:
    """Decides when unanswered requests mean that no request can succeed (the rules in the module docstring)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.answered = False  # any answer in this run: sent now, or found in the journal or store
        self.down_in_a_row = 0  # requests in a row that ran out of retries
        self.failed = 0
        self.deferred = 0  # left unanswered with no verdict (an expired batch): not counted against the server
        self.last = ""  # the last server message

    def ok(self) -> None:
        self.answered, self.down_in_a_row = True, 0

    def fail(self, err: RequestFailed) -> None:
        self.last = str(err)
        if err.deferred:
            self.deferred += 1
            return
        self.failed += 1
        self.down_in_a_row = self.down_in_a_row + 1 if err.transient else 0  # a refusal: the server is up
        if self.down_in_a_row >= self.limit:
            raise TeacherError(f"teacher unreachable or failing: {self.limit} requests in a row got no answer "
                               f"(teacher.max_failures_in_a_row); last: {err}")
        if not self.answered and self.failed >= self.limit:
            raise TeacherError(f"teacher refuses the requests: the first {self.failed} all failed, none was "
                               f"answered; last: {err}")

    def end_round(self) -> None:
        if not self.answered and self.failed:
            raise TeacherError(f"teacher refuses the requests: all {self.failed} of the round failed, none was "
                               f"answered; last: {self.last}")


def cached_tokens(usage: dict) -> int:
    """Prompt tokens the server read from its prompt cache (a part of `prompt_tokens`)."""
    return min((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0, usage.get("prompt_tokens") or 0)


def _usd(entry: dict) -> float:
    """Spend by the answering model's price (the body's model when the server names an alias): cached prompt
    tokens at the cached-input price where the model has one, and half of it all for a Batch API answer
    (`batch` in the entry). The offline teacher and models without a price cost nothing."""
    resp = entry["response"]
    model = resp.get("model")
    if model != "offline" and model not in PRICES:
        model = entry["body"]["model"]
    price = PRICES.get(model)
    if price is None:
        return 0.0
    usage = resp.get("usage") or {}
    cached = cached_tokens(usage)
    usd = (((usage.get("prompt_tokens") or 0) - cached) * price.input
           + cached * (price.input if price.cached_input is None else price.cached_input)
           + (usage.get("completion_tokens") or 0) * price.output)
    return usd * BATCH_DISCOUNT if entry.get("batch") else usd


async def _all(coros) -> list:
    """gather, but the first error cancels the other requests instead of leaving them running."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _gather(params: Params, requests: list[dict], backend, journal: Journal,
                  store: Optional[ResponseStore], stats: Counter, breaker: Breaker) -> dict:
    from tqdm import tqdm

    t = params.teacher
    who = origin(params)
    state = {r["id"]: {"req": r, "needed": r["body"]["n"], "max_tokens": r["body"][limit_key(r["body"])],
                       "completions": [], "rounds": 0, "valid": 0} for r in requests}
    sem = asyncio.Semaphore(t.max_concurrency)

    async def ask(body: dict, salt: str, key: str, qid: str, bar) -> Optional[dict]:
        entry = journal.get(key)
        if entry is not None:
            stats["from_journal"] += 1
        elif store is not None and (entry := store.get(key)) is not None:
            journal.put(entry)  # paid in another run, experiment or checkout: the journal records it too
            stats["from_store"] += 1
        else:
            try:
                async with sem:
                    resp = await backend.complete(body, key, qid, salt)
            except RequestFailed as e:
                if breaker.failed < _LOGGED_FAILURES:
                    tqdm.write(f"teacher: no answer for {qid} ({salt}): {e}", file=sys.stderr)
                elif breaker.failed == _LOGGED_FAILURES:
                    tqdm.write("teacher: further unanswered requests are only counted "
                               "(metrics/teacher_request.json)", file=sys.stderr)
                breaker.fail(e)
                bar.update(1)
                return None
            entry = {"key": key, "origin": who, "round": salt, "body": body, "response": resp,
                     **backend.provenance(key)}
            if store is not None:
                entry = store.put(entry)  # first: outlives the workspace, whatever happens to it next
            journal.put(entry)  # a kill after this line loses nothing paid for
            stats["sent"] += 1
            stats["usd_micro_sent"] += round(1e6 * _usd(entry))
        breaker.ok()
        resp = entry["response"]
        usage = resp.get("usage") or {}
        stats["prompt_tokens"] += usage.get("prompt_tokens") or 0
        stats["cached_prompt_tokens"] += cached_tokens(usage)
        stats["completion_tokens"] += usage.get("completion_tokens") or 0
        stats["usd_micro"] += round(1e6 * _usd(entry))
        bar.update(1)
        bar.set_postfix(sent=stats["sent"], cached=stats["from_journal"] + stats["from_store"],
                        tokens=stats["prompt_tokens"] + stats["completion_tokens"],
                        usd=f"{stats['usd_micro'] / 1e6:.2f}", refresh=False)
        return resp

    from ..data.tasks import get_task

    rounds = t.rounds or get_task(params.dataset.name).teacher.rounds
    for rnd in range(1, rounds + 1):
        todo = [s for s in state.values() if s["needed"] > 0]
        if not todo:
            break
        jobs = []
        for s in todo:
            body = {**s["req"]["body"], "n": s["needed"], limit_key(s["req"]["body"]): s["max_tokens"]}
            # Round (and repeat index) salt the key: the same body asked again later is a new request.
            parts = ([({**body, "n": 1}, f"round{rnd}/repeat{i}") for i in range(s["needed"])] if t.repeat_n
                     else [(body, f"round{rnd}")])
            jobs += [(s, b, salt, request_key(b, salt, who)) for b, salt in parts]
        label = f"teacher round {rnd}/{rounds}"
        if backend.batched:
            missing = [(b, salt, k) for _, b, salt, k in jobs
                       if journal.get(k) is None and (store is None or store.get(k) is None)]
            if await backend.prepare_round(missing, label):
                breaker.ok()  # the server answers: a failed line is that request's problem, not a refusal of all
        with tqdm(total=len(jobs), desc=label, unit="req", mininterval=1.0) as bar:
            responses = await _all(ask(b, salt, k, s["req"]["id"], bar) for s, b, salt, k in jobs)
        backend.finish_round()
        breaker.end_round()
        got: dict[str, list[dict]] = {}
        for (s, *_), resp in zip(jobs, responses):
            mine = got.setdefault(s["req"]["id"], [])
            for c in (resp or {}).get("choices", []):
                mine.append({"content": (c.get("message") or {}).get("content") or "",
                             "finish_reason": c.get("finish_reason")})
        for s in todo:
            mine = got.get(s["req"]["id"], [])
            _, double, cands = filter_answer(mine, len(s["req"]["options"]))
            valid = sum(is_complete(c, s["req"]["options"]) for c in cands)
            s["completions"] += mine
            s["rounds"] = rnd
            s["valid"] += valid
            s["needed"] = max(0, s["needed"] - valid)
            if double:
                s["max_tokens"] *= 2  # spec 3.2 step 3: a completion cut off by length gets twice the room
    return state


async def _run(params: Params, requests: list[dict], backend, journal: Journal, store: Optional[ResponseStore],
               stats: Counter, breaker: Breaker) -> dict:
    try:
        return await _gather(params, requests, backend, journal, store, stats, breaker)
    finally:
        await backend.close()


def request(params: Params, paths: Paths) -> dict:
    """Run the rounds; write completions.jsonl and metrics/teacher_request.json; return the metrics.
    Raises TeacherError (and writes neither) when the teacher fails or `teacher.min_coverage` is not met."""
    t = params.teacher
    requests = read_jsonl(paths.requests)
    stats: Counter = Counter()
    breaker = Breaker(t.max_failures_in_a_row)
    store = None
    if t.mode == "batch":  # params refuse batch with the offline teacher
        from .batch import BatchBackend

        store = ResponseStore(store_dir())
        backend = BatchBackend(params, stats, store, origin(params))  # raises on a missing key
    elif t.backend == "offline":
        if params.dataset.name != "synthetic":
            raise TeacherError(f"teacher.backend: offline answers only dataset.name=synthetic, not "
                               f"{params.dataset.name!r}; use teacher.backend=openai")
        backend = OfflineBackend({r["id"]: r for r in read_jsonl(paths.split("train"))}, params.seed,
                                 t.offline_fault_rate, t.offline_wrong_fact_rate)
    else:
        backend = OpenAIBackend(t, stats)  # raises on a missing key before anything is sent
        store = ResponseStore(store_dir())
    with Journal(paths.journal) as journal:
        if store is not None:  # a pulled (or older) journal feeds the store: its answers serve every checkout
            for entry in journal:
                if "origin" in entry and entry["key"] not in store:
                    store.put(entry)
                    stats["journal_entries_stored"] += 1
        try:
            state = asyncio.run(_run(params, requests, backend, journal, store, stats, breaker))
        except TeacherError as e:
            raise TeacherError(f"{str(e).rstrip('.')}. {_kept(stats, store)}") from None
    covered = sum(s["valid"] > 0 for s in state.values())
    need = math.ceil(t.min_coverage * len(state) - 1e-9)
    if covered < need:
        raise TeacherError(
            f"teacher: {covered} of {len(state)} training questions got a valid completion, teacher.min_coverage="
            f"{t.min_coverage:g} needs {need}"
            + (f"; {breaker.failed + breaker.deferred} requests unanswered, last: {breaker.last.rstrip('.')}"
               if breaker.failed or breaker.deferred else "")
            + f". {_kept(stats, store)}")
    write_jsonl(paths.completions, ({"id": qid, "gt": s["req"]["gt"], "options": s["req"]["options"],
                                     "user": s["req"]["body"]["messages"][-1]["content"],
                                     "completions": s["completions"], "rounds": s["rounds"]}
                                    for qid, s in state.items()))
    complete = sum(s["needed"] == 0 for s in state.values())
    metrics = {
        "questions": len(state), "questions_complete": complete, "questions_incomplete": len(state) - complete,
        "questions_covered": covered,  # with at least one valid completion (what teacher.min_coverage counts)
        "completions": sum(len(s["completions"]) for s in state.values()),
        "requests_sent": stats["sent"], "requests_from_journal": stats["from_journal"],
        "requests_from_store": stats["from_store"], "journal_entries_stored": stats["journal_entries_stored"],
        "usd": round(stats["usd_micro"] / 1e6, 4),  # of every response used, sent now or stored before
        "usd_this_run": round(stats["usd_micro_sent"] / 1e6, 4),
        **{k: stats[k] for k in ("retries", "rate_limited", "server_errors", "timeouts_or_connection_errors",
                                 "malformed_responses", "rejected_requests", "failed_requests",
                                 "prompt_tokens", "cached_prompt_tokens", "completion_tokens",
                                 # batch mode (batch.py): batches sent now, running ones taken up again,
                                 # error-file lines, requests an expired or cancelled batch left unanswered
                                 "batches_submitted", "batches_resumed", "batch_requests_failed",
                                 "batch_requests_expired")}}
    write_json(paths.metric("teacher_request"), metrics)
    return metrics


def _kept(stats: Counter, store: Optional[ResponseStore]) -> str:
    if not stats["sent"]:
        return "No answer arrived in this run"
    where = f"the response store {store.root} and the journal" if store is not None else "the journal"
    n = stats["sent"]
    return (f"The {n} answer{'s' * (n != 1)} received in this run {'is' if n == 1 else 'are'} kept in {where}; "
            "a rerun sends only the rest")
