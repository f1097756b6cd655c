"""Stage `request`: ask the teacher for rationales, in re-ask rounds, never paying twice (spec 2.7, 3.1).

Teachers (backend.py, one module per kind, picked in `open_backend`): `openai` (live.py: the official SDK
against api.openai.com or any OpenAI-compatible server), `offline` (offline.py: the synthetic task's teacher)
and `teacher.mode=batch` (batch.py). All go through the same journal, rounds and parser. Each request is keyed by
a hash of who answers (backend and normalised server), its full body (model included) and its round; a
rerun — after a crash, a SIGKILL, a failed or finished run — rebuilds the same rounds and sends only what
neither the journal nor the response store holds. That works because each round's requests depend only on
the answers of earlier rounds. A paid response goes to the machine's response store first, then to the
journal (see store.py); the offline teacher's free answers are journaled only. With `teacher.mode=batch`
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
import sys
from collections import Counter
from typing import Optional

from ..io import read_jsonl, write_json, write_jsonl
from ..params import Params
from ..paths import Paths, store_dir
from .backend import Backend, RequestFailed, TeacherError, origin
from .parse import filter_answer, is_complete
from .prompts import BATCH_DISCOUNT, PRICES, limit_key
from .store import Journal, ResponseStore, request_key

_LOGGED_FAILURES = 10  # unanswered requests reported one line each; the rest are only counted


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


def open_backend(params: Params, paths: Paths, stats: Counter) -> tuple[Backend, Optional[ResponseStore]]:
    """The one place that picks the teacher's kind, and the response store that paid answers go to (none for the
    free offline teacher). Raises TeacherError on a missing key before anything is sent."""
    t = params.teacher
    if t.mode == "batch":  # params refuse batch with the offline teacher
        from .batch import BatchBackend

        store = ResponseStore(store_dir())
        return BatchBackend(params, stats, store, origin(params)), store
    if t.backend == "offline":
        from .offline import OfflineBackend

        if params.dataset.name != "synthetic":
            raise TeacherError(f"teacher.backend: offline answers only dataset.name=synthetic, not "
                               f"{params.dataset.name!r}; use teacher.backend=openai")
        return OfflineBackend({r["id"]: r for r in read_jsonl(paths.split("train"))}, params.seed,
                              t.offline_fault_rate, t.offline_wrong_fact_rate), None
    from .live import OpenAIBackend

    return OpenAIBackend(t, stats), ResponseStore(store_dir())


def request(params: Params, paths: Paths) -> dict:
    """Run the rounds; write completions.jsonl and metrics/teacher_request.json; return the metrics.
    Raises TeacherError (and writes neither) when the teacher fails or `teacher.min_coverage` is not met."""
    t = params.teacher
    requests = read_jsonl(paths.requests)
    stats: Counter = Counter()
    breaker = Breaker(t.max_failures_in_a_row)
    backend, store = open_backend(params, paths, stats)
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
