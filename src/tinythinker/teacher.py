"""Stage `request`: ask the teacher for rationales, in re-ask rounds, never paying twice (spec 2.7, 3.1).

Backends: `openai` (the official SDK against api.openai.com or any OpenAI-compatible server) and `offline`
(the synthetic task's teacher). Both go through the same journal, rounds and parser. Every response is
appended to the journal as it arrives, keyed by a hash of (round, request body); a rerun — after a crash,
a SIGKILL or a finished run — rebuilds the same rounds from the journal and sends only what is missing.
That works because each round's requests depend only on the answers of earlier rounds, which the journal
holds.
"""
from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from typing import Optional

from .io import DataError, read_jsonl, write_json, write_jsonl
from .journal import Journal, request_key
from .params import Params, TeacherParams
from .parse import filter_answer, is_complete
from .paths import Paths
from .prompts import PRICES, approx_tokens, message_tokens

KEY_HEADER = "X-TinyThinker-Request-Key"  # lets a server (or a test) tell rounds and repeats apart
_FATAL_STATUS = (401, 403, 404)  # wrong key, no access, wrong model or URL: no request can succeed


class TeacherError(DataError):
    """The teacher cannot be used (no key, rejected credentials); the message says what to fix."""


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

    async def acquire(self, tokens: int) -> None:
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
                    return
                wait = max((1 - self.level["req"]) / self.rate["req"],
                           (tokens - self.level["tok"]) / self.rate["tok"])
                await asyncio.sleep(max(wait, 0.001))


class OfflineBackend:
    """The synthetic task's teacher: deterministic per request key, with a share of realistic faults."""

    def __init__(self, records: dict[str, dict], seed: int, fault_rate: float, wrong_fact_rate: float):
        self.records, self.seed, self.fault_rate, self.wrong_fact_rate = records, seed, fault_rate, wrong_fact_rate

    async def complete(self, body: dict, key: str, qid: str) -> dict:
        from .synthetic import FAULTS, offline_completion

        record = self.records.get(qid)
        if record is None or "meta" not in record:
            raise DataError(f"question {qid}: not in data/prepared/train.jsonl with its synthetic meta; "
                            "the offline teacher answers synthetic questions only")
        rng = random.Random(f"{self.seed}:{key}")
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

    async def close(self) -> None:
        pass


class OpenAIBackend:
    """AsyncOpenAI with our own retries (429 honouring Retry-After, 5xx, timeouts, lost connections) under
    request and token rate limits. The SDK's own retries are off so that every attempt is counted and paced."""

    def __init__(self, t: TeacherParams, stats: Counter):
        import openai

        key = os.environ.get("OPENAI_API_KEY")
        if not key:
            raise TeacherError("teacher.backend=openai needs the OPENAI_API_KEY environment variable "
                               "(any non-empty value for a local server without auth); nothing was sent")
        self.openai, self.t, self.stats = openai, t, stats
        # base_url None lets the SDK read OPENAI_BASE_URL, else api.openai.com.
        self.client = openai.AsyncOpenAI(api_key=key, base_url=t.base_url, max_retries=0, timeout=t.timeout)
        self.limiter = RateLimiter(t.requests_per_minute, t.tokens_per_minute)

    @staticmethod
    def _delay(attempt: int, err: Exception) -> float:
        resp = getattr(err, "response", None)
        headers = resp.headers if resp is not None else {}
        for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
            try:
                return min(120.0, float(headers[name]) * scale)
            except (KeyError, TypeError, ValueError):
                pass
        return min(60.0, 0.5 * 2.0 ** attempt) * (0.5 + random.random() / 2)  # backoff with jitter

    async def complete(self, body: dict, key: str, qid: str) -> Optional[dict]:
        o = self.openai
        cost = message_tokens(body["messages"]) + body["n"] * body["max_tokens"]
        for attempt in range(self.t.max_retries + 1):
            await self.limiter.acquire(cost)
            try:
                resp = await self.client.chat.completions.create(**body, extra_headers={KEY_HEADER: key})
                return resp.model_dump(mode="json", exclude_none=True)
            except o.RateLimitError as e:
                self.stats["rate_limited"] += 1
                delay = self._delay(attempt, e)
                self.limiter.pause(delay)
            except o.APIStatusError as e:
                if e.status_code in _FATAL_STATUS:
                    raise TeacherError(f"teacher request refused ({e.status_code}); check OPENAI_API_KEY, "
                                       f"teacher.model and teacher.base_url: {e.message}") from None
                if e.status_code < 500 and e.status_code not in (408, 409):
                    self.stats["rejected_requests"] += 1  # this request only (e.g. 400); others go on
                    return None
                self.stats["server_errors"] += 1
                delay = self._delay(attempt, e)
            except (o.APITimeoutError, o.APIConnectionError) as e:
                self.stats["timeouts_or_connection_errors"] += 1
                delay = self._delay(attempt, e)
            except o.APIResponseValidationError:
                self.stats["malformed_responses"] += 1
                delay = self._delay(attempt, None)
            if attempt < self.t.max_retries:
                self.stats["retries"] += 1
                await asyncio.sleep(delay)
        self.stats["failed_requests"] += 1
        return None  # given up for this round; the question is asked again in the next one

    async def close(self) -> None:
        await self.client.close()


def _usd(body: dict, resp: dict) -> float:
    """Spend by the answering model's price (the body's model when the server names an alias); the
    offline teacher costs nothing."""
    model = resp.get("model")
    if model != "offline" and model not in PRICES:
        model = body["model"]
    pin, pout = PRICES.get(model, (0.0, 0.0))
    usage = resp.get("usage") or {}
    return (usage.get("prompt_tokens") or 0) * pin + (usage.get("completion_tokens") or 0) * pout


async def _gather(params: Params, requests: list[dict], backend, journal: Journal, stats: Counter) -> dict:
    from tqdm import tqdm

    t = params.teacher
    state = {r["id"]: {"req": r, "needed": r["body"]["n"], "max_tokens": r["body"]["max_tokens"],
                       "completions": [], "rounds": 0} for r in requests}
    sem = asyncio.Semaphore(t.max_concurrency)

    async def ask(body: dict, key: str, qid: str, bar) -> Optional[dict]:
        resp = journal.get(key)
        if resp is not None:
            stats["from_journal"] += 1
        else:
            async with sem:
                resp = await backend.complete(body, key, qid)
            if resp is not None:
                journal.put(key, body, resp)  # first thing: a kill after this line loses nothing paid for
                stats["sent"] += 1
                stats["usd_micro_sent"] += round(1e6 * _usd(body, resp))
        if resp is not None:
            usage = resp.get("usage") or {}
            stats["prompt_tokens"] += usage.get("prompt_tokens") or 0
            stats["completion_tokens"] += usage.get("completion_tokens") or 0
            stats["usd_micro"] += round(1e6 * _usd(body, resp))
        bar.update(1)
        bar.set_postfix(sent=stats["sent"], cached=stats["from_journal"],
                        tokens=stats["prompt_tokens"] + stats["completion_tokens"],
                        usd=f"{stats['usd_micro'] / 1e6:.2f}", refresh=False)
        return resp

    from .tasks import get_task

    rounds = t.rounds or get_task(params.dataset.name).teacher.rounds
    for rnd in range(1, rounds + 1):
        todo = [s for s in state.values() if s["needed"] > 0]
        if not todo:
            break
        jobs = []
        for s in todo:
            body = {**s["req"]["body"], "n": s["needed"], "max_tokens": s["max_tokens"]}
            # Round (and repeat index) salt the key: the same body asked again later is a new request.
            parts = ([({**body, "n": 1}, f"round{rnd}/repeat{i}") for i in range(s["needed"])] if t.repeat_n
                     else [(body, f"round{rnd}")])
            jobs += [(s, b, request_key(b, salt)) for b, salt in parts]
        with tqdm(total=len(jobs), desc=f"teacher round {rnd}/{rounds}", unit="req", mininterval=1.0) as bar:
            responses = await asyncio.gather(*(ask(b, k, s["req"]["id"], bar) for s, b, k in jobs))
        got: dict[str, list[dict]] = {}
        for (s, _, _), resp in zip(jobs, responses):
            mine = got.setdefault(s["req"]["id"], [])
            for c in (resp or {}).get("choices", []):
                mine.append({"content": (c.get("message") or {}).get("content") or "",
                             "finish_reason": c.get("finish_reason")})
        for s in todo:
            mine = got.get(s["req"]["id"], [])
            _, double, cands = filter_answer(mine, len(s["req"]["options"]))
            s["completions"] += mine
            s["rounds"] = rnd
            s["needed"] = max(0, s["needed"] - sum(is_complete(c, s["req"]["options"]) for c in cands))
            if double:
                s["max_tokens"] *= 2  # spec 3.2 step 3: a completion cut off by length gets twice the room
    return state


async def _run(params: Params, requests: list[dict], backend, journal: Journal, stats: Counter) -> dict:
    try:
        return await _gather(params, requests, backend, journal, stats)
    finally:
        await backend.close()


def request(params: Params, paths: Paths) -> dict:
    """Run the rounds; write completions.jsonl and metrics/teacher_request.json; return the metrics."""
    t = params.teacher
    requests = read_jsonl(paths.requests)
    stats: Counter = Counter()
    if t.backend == "offline":
        if params.dataset.name != "synthetic":
            raise TeacherError(f"teacher.backend: offline answers only dataset.name=synthetic, not "
                               f"{params.dataset.name!r}; use teacher.backend=openai")
        backend = OfflineBackend({r["id"]: r for r in read_jsonl(paths.split("train"))}, params.seed,
                                 t.offline_fault_rate, t.offline_wrong_fact_rate)
    else:
        backend = OpenAIBackend(t, stats)  # raises on a missing key before anything is sent
    with Journal(paths.journal) as journal:
        state = asyncio.run(_run(params, requests, backend, journal, stats))
    write_jsonl(paths.completions, ({"id": qid, "gt": s["req"]["gt"], "options": s["req"]["options"],
                                     "user": s["req"]["body"]["messages"][-1]["content"],
                                     "completions": s["completions"], "rounds": s["rounds"]}
                                    for qid, s in state.items()))
    complete = sum(s["needed"] == 0 for s in state.values())
    metrics = {
        "questions": len(state), "questions_complete": complete, "questions_incomplete": len(state) - complete,
        "completions": sum(len(s["completions"]) for s in state.values()),
        "requests_sent": stats["sent"], "requests_from_journal": stats["from_journal"],
        "usd": round(stats["usd_micro"] / 1e6, 4),  # of every response used, sent now or journaled before
        "usd_this_run": round(stats["usd_micro_sent"] / 1e6, 4),
        **{k: stats[k] for k in ("retries", "rate_limited", "server_errors", "timeouts_or_connection_errors",
                                 "malformed_responses", "rejected_requests", "failed_requests",
                                 "prompt_tokens", "completion_tokens")}}
    write_json(paths.metric("teacher_request"), metrics)
    return metrics
