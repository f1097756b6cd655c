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

The stage stops (exit 2, the server's message on the last line, nothing written but the answers received); from
the moment it knows, nothing new is sent, and the requests already in flight finish and are kept (`Rounds.halt`):
- on 401/403/404 (key, access, model or URL) and on a 429 `insufficient_quota`;
- when the response store or the journal cannot be written (a full disk): the answer still reaches the other;
- when the server is down: `teacher.max_failures_in_a_row` requests in a row ran out of their retry budget
  (`teacher.max_retries` attempts within `teacher.max_retry_seconds`) on 5xx, 408, 409, 429, timeouts or lost
  connections;
- when requests cannot succeed as sent: nothing of this run has an answer yet (sent now, or found in the
  journal or store) and `teacher.max_failures_in_a_row` requests, or every request of the first round, ended
  unanswered, refused (other 4xx) or out of retries;
- at the spend cap `teacher.max_usd` (cost.py): a request whose worst case does not fit under the cap, beside
  what this request set has paid (in this run and, by the response store, before it) and what is in flight, is
  not sent, nor is any after it; the requests in flight finish and are stored, and the stage stops at the end of
  the round with one line: spent, cap, questions left. Requests not sent for the cap are no failures.
After any answer a refused request is that request's problem (a content filter, one over-long prompt):
logged, counted and asked again in the next round; whether the run is good enough is then decided by
`teacher.min_coverage`, the share of training questions that must end with a valid completion.
"""
from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
from collections import Counter
from typing import Optional

from ..io import DataError, Interrupted, describe_os_error, read_jsonl, write_json, write_jsonl
from ..params import Params
from ..paths import Paths, store_dir
from .backend import Backend, RequestFailed, TeacherError, origin
from .claims import Claims
from .cost import (CapReached, SpendCap, SpendCapReached, _usd, batch_share, cached_tokens, check_prices, paid_for,
                   counted_at_worst, price_of, usage_problem)
from .parse import completions, count_valid
from .prompts import _tiktoken_counter, approx_tokens, limit_key, message_tokens, read_requests
from .store import Journal, ResponseStore, read_journal, request_key

_LOGGED_FAILURES = 10  # unanswered requests reported one line each; the rest are only counted
_CLAIM_POLL = 0.5  # seconds between two looks for the answer to a request another process is buying


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


async def _all(coros) -> list:
    """gather, but the first error cancels the other requests instead of leaving them running."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _round_requests(body: dict, rnd: int, repeat_n: bool) -> list[tuple[dict, str]]:
    """(body, salt) of a question's requests in round `rnd`: one for its n samples, or n single-sample repeats.
    Round (and repeat index) salt the key: the same body asked again later is a new request."""
    if repeat_n:
        return [({**body, "n": 1}, f"round{rnd}/repeat{i}") for i in range(body["n"])]
    return [(body, f"round{rnd}")]


class Rounds:
    """The re-ask rounds of one run. Every answer is kept as it arrives (the store, then the journal); `used` collects
    the key of every answer the data use (sent now, or found stored). An error after which no new request may be
    sent (quota, a refused key, a server down, a full disk) halts the run: nothing new is sent, the requests
    already in flight finish and keep their answers (they are paid for), then the error is raised."""

    def __init__(self, params: Params, backend, journal: Journal, store: Optional[ResponseStore], stats: Counter,
                 breaker: Breaker, cap: SpendCap, stopping: asyncio.Event, used: set[str]):
        t = params.teacher
        self.params, self.backend, self.journal, self.store, self.stats = params, backend, journal, store, stats
        self.breaker, self.cap, self.stopping, self.used = breaker, cap, stopping, used
        self.who = origin(params)
        self.sem = asyncio.Semaphore(t.max_concurrency)
        # Another process sharing the store (a parallel experiment) may be buying a request this run needs: the
        # first to send it owns it, the others wait for its answer (claims.py).
        self.claims = (Claims(store.root, t.timeout * (t.max_retries + 1) + t.max_retry_seconds)
                       if store is not None else None)
        self.halted: Optional[Exception] = None

    def halt(self, err: Exception) -> None:
        """No new request from now on; `err` (the first such) is raised once those in flight are kept."""
        if self.halted is None:
            self.halted = err
        self.stopping.set()

    def found(self, key: str) -> Optional[dict]:
        entry = self.journal.get(key)
        if entry is not None:
            self.stats["from_journal"] += 1
        elif self.store is not None and (entry := self.store.get(key)) is not None:
            self.journal.put(entry)  # paid in another run, experiment or checkout: the journal records it too
            self.stats["from_store"] += 1
        return entry

    def keep(self, entry: dict) -> Optional[dict]:
        """The store first (it outlives the workspace), then the journal. An answer one of them cannot take (a
        full disk) still reaches the other, and the run halts naming the one that failed; None when neither
        could take it."""
        in_store = False
        if self.store is not None:
            try:
                entry, in_store = self.store.put(entry), True
            except OSError as e:
                self.halt(_disk_error(e, "the response store", self.store.root, self.journal.path))
        try:
            self.journal.put(entry)  # a kill after this line loses nothing paid for
        except OSError as e:
            self.halt(_disk_error(e, "the journal", self.journal.path, self.store.root if in_store else None))
            return entry if in_store else None
        return entry

    async def claim(self, key: str) -> Optional[dict]:
        """Wait until this process owns `key` (None), or another's answer to it is stored (returned)."""
        while not self.claims.take(key):
            if self.stopping.is_set():
                return None
            await asyncio.sleep(_CLAIM_POLL)
            if self.store.get(key) is not None:
                return self.found(key)
        if self.store.get(key) is not None:  # the owner stored it and let go just before this claim
            self.claims.release(key)
            return self.found(key)
        return None

    async def send(self, body: dict, salt: str, key: str, qid: str) -> tuple[Optional[dict], bool]:
        """(the answer, stored or None, whether it was asked at all: not after a signal, a halt or the cap)."""
        from tqdm import tqdm

        try:
            async with self.sem:
                if self.stopping.is_set():  # a signal or a halt: nothing new is sent
                    raise Stopped()
                resp = await self.backend.complete(body, key, qid, salt)
        except Stopped:
            self.stats["requests_not_sent_stopping"] += 1
            return None, False
        except CapReached:  # not sent: the round ends with what is in flight, then the stage stops
            self.stats["requests_capped"] += 1
            return None, False
        except TeacherError as e:  # quota, key, access: no new request can succeed
            self.halt(e)
            return None, True
        except RequestFailed as e:
            self._log_failure(qid, salt, e)
            try:
                self.breaker.fail(e)
            except TeacherError as down:
                self.halt(down)
            return None, True
        entry = self.keep({"key": key, "origin": self.who, "round": salt, "body": body, "response": resp,
                           **self.backend.provenance(key)})
        if entry is not None and (why := counted_at_worst(entry, self.params.teacher.price)) is not None:
            self.stats["usage_impossible"] += 1
            tqdm.write(f"teacher: {self.who} reported impossible usage for {qid} ({why}); counted at the "
                       "request's worst case", file=sys.stderr)
        if entry is not None:
            self.stats["sent"] += 1
            self.stats["usd_micro_sent"] += round(1e6 * _usd(entry, self.params.teacher.price))
        return entry, True

    def _log_failure(self, qid: str, salt: str, e: RequestFailed) -> None:
        from tqdm import tqdm

        if self.breaker.failed < _LOGGED_FAILURES:
            tqdm.write(f"teacher: no answer for {qid} ({salt}): {e}", file=sys.stderr)
        elif self.breaker.failed == _LOGGED_FAILURES:
            tqdm.write("teacher: further unanswered requests are only counted "
                       "(metrics/teacher_request.json)", file=sys.stderr)

    async def ask(self, body: dict, salt: str, key: str, qid: str, bar) -> Optional[dict]:
        entry = self.found(key)
        if entry is None and self.claims is not None:
            try:
                entry = await self.claim(key)
            except OSError as e:  # the claim file cannot be written (a full disk): nothing sent for it
                self.halt(_disk_error(e, "a claim in the response store", self.claims.dir, None))
                return None
        if entry is None:
            try:
                entry, asked = await self.send(body, salt, key, qid)
            finally:  # answered and stored, or failed: a waiting process may go on
                if self.claims is not None:
                    self.claims.release(key)
            if entry is None:
                if asked:  # a request never sent is not progress
                    bar.update(1)
                return None
        self.breaker.ok()
        self.used.add(key)
        self._count(entry, bar)
        return entry["response"]

    def _count(self, entry: dict, bar) -> None:
        usage = entry["response"].get("usage")
        usage = usage if isinstance(usage, dict) and usage_problem(entry) is None else {}
        stats = self.stats
        stats["prompt_tokens"] += usage.get("prompt_tokens") or 0
        stats["cached_prompt_tokens"] += cached_tokens(usage)
        stats["completion_tokens"] += usage.get("completion_tokens") or 0
        stats["usd_micro"] += round(1e6 * _usd(entry, self.params.teacher.price))
        bar.update(1)
        bar.set_postfix(sent=stats["sent"], cached=stats["from_journal"] + stats["from_store"],
                        tokens=stats["prompt_tokens"] + stats["completion_tokens"],
                        usd=f"{stats['usd_micro'] / 1e6:.2f}", refresh=False)

    def _jobs(self, todo: list[dict], rnd: int) -> list[tuple]:
        jobs = []
        for s in todo:
            body = {**s["req"]["body"], "n": s["needed"], limit_key(s["req"]["body"]): s["max_tokens"]}
            jobs += [(s, b, salt, request_key(b, salt, self.who))
                     for b, salt in _round_requests(body, rnd, self.params.teacher.repeat_n)]
        return jobs

    async def _ask_all(self, jobs: list[tuple], label: str) -> list[Optional[dict]]:
        from tqdm import tqdm

        if self.backend.batched:
            missing = [(b, salt, k) for _, b, salt, k in jobs
                       if self.journal.get(k) is None and (self.store is None or self.store.get(k) is None)]
            if await self.backend.prepare_round(missing, label):
                self.breaker.ok()  # the server answers: a failed line is that request's problem, not a refusal
        with tqdm(total=len(jobs), desc=label, unit="req", mininterval=1.0) as bar:
            responses = await _all(self.ask(b, salt, k, s["req"]["id"], bar) for s, b, salt, k in jobs)
        self.backend.finish_round()
        return responses

    async def run(self, state: dict) -> dict:
        from ..data.tasks import get_task

        t = self.params.teacher
        rounds = t.rounds or get_task(self.params.dataset.name).teacher.rounds
        for rnd in range(1, rounds + 1):
            todo = [s for s in state.values() if s["needed"] > 0]
            if not todo:
                break
            jobs = self._jobs(todo, rnd)
            responses = await self._ask_all(jobs, f"teacher round {rnd}/{rounds}")
            if self.halted is not None:  # what was in flight is kept: now the error
                raise self.halted
            if self.stopping.is_set():  # a signal: what was in flight is stored, stop before the round's verdicts
                raise Stopped()
            self.breaker.end_round()
            _tally(todo, jobs, responses, rnd)
            if self.cap.reached:
                raise SpendCapReached(_cap_message(self.cap, state))
        return state


def _tally(todo: list[dict], jobs: list[tuple], responses: list[Optional[dict]], rnd: int) -> None:
    """A round's answers into each question's state: valid completions counted, the rest needed again."""
    got: dict[str, list[dict]] = {}
    for (s, *_), resp in zip(jobs, responses):
        got.setdefault(s["req"]["id"], []).extend(completions(resp))
    for s in todo:
        mine = got.get(s["req"]["id"], [])
        valid, double = count_valid(mine, s["req"]["options"])
        s["completions"] += mine
        s["rounds"] = rnd
        s["valid"] += valid
        s["needed"] = max(0, s["needed"] - valid)
        if double:
            s["max_tokens"] *= 2  # spec 3.2 step 3: a completion cut off by length gets twice the room


def _disk_error(e: OSError, what: str, path, kept_in) -> TeacherError:
    """One line for a write that failed on disk: the path (`path` where the error names none), the system's
    words, where the answers are instead."""
    if e.filename is None:
        e = OSError(e.errno, e.strerror or str(e), str(path))
    where = (f"the answers received are also kept in {kept_in}, and a rerun " if kept_in is not None else
             "a rerun ")
    return TeacherError(f"{describe_os_error(e)} (writing {what}); {where}buys nothing already kept: "
                        "free space there (or fix the path) and rerun")


def _cap_message(cap: SpendCap, state: dict) -> str:
    done = sum(s["needed"] == 0 for s in state.values())
    unsure = (f", ${cap.unsure:.4f} of it attempts that timed out, counted at their worst case" if cap.unsure
              else "")
    return (f"teacher spend cap reached: ${cap.spent:.4f} spent of teacher.max_usd={cap.max_usd:g} "
            f"(${cap.spent_now:.4f} of it in this run{unsure}); {done} of {len(state)} training questions have "
            f"their valid completions, {len(state) - done} left; raise teacher.max_usd and rerun: the answers "
            "bought are kept and not bought again")


class Stopped(Exception):
    """A signal stopped the rounds: nothing new was sent, what was in flight is stored."""


async def _run(params: Params, requests: list[dict], backend, journal: Journal, store: Optional[ResponseStore],
               stats: Counter, breaker: Breaker, cap: SpendCap, signals: list[int], used: set[str]) -> dict:
    """The rounds under Ctrl-C / SIGTERM / SIGHUP (a closed terminal) handling: the first signal stops sending,
    waits up to `teacher.timeout` for the requests in flight and keeps their answers (paid for), then stops the
    stage; a second one exits at once (what was stored stays stored: every answer is fsync'd as it arrives)."""
    loop = asyncio.get_running_loop()
    stopping, main = asyncio.Event(), asyncio.current_task()

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            print(f"\nteacher: {signal.Signals(signum).name} again: exiting now", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        signals.append(signum)
        stopping.set()
        print(f"\nteacher: {signal.Signals(signum).name}: no new requests; waiting up to teacher.timeout="
              f"{params.teacher.timeout:g} s for those in flight to store their answers (again to exit now)",
              file=sys.stderr, flush=True)
        loop.call_later(params.teacher.timeout, main.cancel)

    backend.stopping = stopping
    handled = [s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if _can_handle(loop, s, on_signal)]
    state = {r["id"]: {"req": r, "needed": r["body"]["n"], "max_tokens": r["body"][limit_key(r["body"])],
                       "completions": [], "rounds": 0, "valid": 0} for r in requests}
    try:
        return await Rounds(params, backend, journal, store, stats, breaker, cap, stopping, used).run(state)
    except asyncio.CancelledError:
        if not stopping.is_set():
            raise
        raise Stopped() from None  # in flight past teacher.timeout: given up, unpaid or never answered
    finally:
        for s in handled:
            loop.remove_signal_handler(s)
        await backend.close()


def _can_handle(loop, signum: int, handler) -> bool:
    try:  # only the main thread of a process may install signal handlers (tests call the stage in threads too)
        loop.add_signal_handler(signum, handler, signum)
        return True
    except (RuntimeError, ValueError):
        return False


def open_backend(params: Params, paths: Paths, stats: Counter,
                 cap: Optional[SpendCap] = None) -> tuple[Backend, Optional[ResponseStore]]:
    """The one place that picks the teacher's kind, and the response store that paid answers go to (none for the
    free offline teacher); a paid teacher reserves every request against `cap`. Raises TeacherError on a missing
    key before anything is sent."""
    t = params.teacher
    if t.mode == "batch":  # params refuse batch with the offline teacher
        from .batch import BatchBackend

        store = ResponseStore(store_dir())
        return BatchBackend(params, stats, store, origin(params), cap), store
    if t.backend == "offline":
        from .offline import OfflineBackend

        if params.dataset.name != "synthetic":
            raise TeacherError(f"teacher.backend: offline answers only dataset.name=synthetic, not "
                               f"{params.dataset.name!r}; use teacher.backend=openai")
        return OfflineBackend({r["id"]: r for r in read_jsonl(paths.split("train"))}, params.seed,
                              t.offline_fault_rate, t.offline_wrong_fact_rate), None
    from .live import OpenAIBackend

    return OpenAIBackend(t, stats, cap), ResponseStore(store_dir())


def _journal_into_store(journal: Journal, store: ResponseStore, stats: Counter) -> None:
    """Paid answers of the journal the store lacks (a pulled journal, a run whose store disk was full) go into it,
    so they serve every checkout; the offline teacher's free answers stay in the journal alone."""
    for entry in journal:
        if entry.get("origin", "offline").startswith("offline") or entry["key"] in store:
            continue
        try:
            store.put(entry)
        except OSError as e:
            raise _disk_error(e, "the response store", store.root, journal.path) from None
        stats["journal_entries_stored"] += 1


def request(params: Params, paths: Paths) -> dict:
    """Run the rounds; write completions.jsonl and metrics/teacher_request.json; return the metrics.
    Raises TeacherError (and writes neither) when the teacher fails, the spend cap is reached or
    `teacher.min_coverage` is not met."""
    t = params.teacher
    requests = read_requests(paths)
    check_prices(params, requests)  # a cap on a model of unknown price: refused before anything is opened
    stats: Counter = Counter()
    breaker = Breaker(t.max_failures_in_a_row)
    cap = SpendCap(t.max_usd, t.price)
    backend, store = open_backend(params, paths, stats, cap)
    with Journal(paths.journal) as journal:
        if store is not None:  # a pulled (or older) journal feeds the store: its answers serve every checkout
            _journal_into_store(journal, store, stats)
            # What this request set has cost before this run, in any round, run, experiment or workspace.
            cap.paid_before = paid_for(store.entries(), origin(params), requests, t.price)
        signals: list[int] = []
        used: set[str] = set()
        try:
            state = asyncio.run(_run(params, requests, backend, journal, store, stats, breaker, cap, signals, used))
        except SpendCapReached:
            raise
        except TeacherError as e:
            raise TeacherError(f"{str(e).rstrip('.')}. {_kept(stats, store)}") from None
        except Stopped:
            name = signal.Signals(signals[0]).name
            raise Interrupted(f"teacher: stopped by {name}. {_kept(stats, store)}", 128 + signals[0]) from None
    covered = sum(s["valid"] > 0 for s in state.values())
    need = math.ceil(t.min_coverage * len(state) - 1e-9)
    if covered < need:
        raise TeacherError(
            f"teacher: {covered} of {len(state)} training questions got a valid completion, teacher.min_coverage="
            f"{t.min_coverage:g} needs {need}"
            + (f"; {breaker.failed + breaker.deferred} requests unanswered, last: {breaker.last.rstrip('.')}"
               if breaker.failed or breaker.deferred else "")
            + f". {_kept(stats, store, unusable=True)}")
    write_jsonl(paths.completions, ({"id": qid, "gt": s["req"]["gt"], "options": s["req"]["options"],
                                     "user": s["req"]["body"]["messages"][-1]["content"],
                                     "completions": s["completions"], "rounds": s["rounds"]}
                                    for qid, s in state.items()))
    metrics = _metrics(params, state, stats, used, cap)
    write_json(paths.metric("teacher_request"), metrics)
    return metrics


def _metrics(params: Params, state: dict, stats: Counter, used: set[str], cap: SpendCap) -> dict:
    """metrics/teacher_request.json: coverage, where the answers came from, what they cost, what went wrong."""
    t = params.teacher
    complete = sum(s["needed"] == 0 for s in state.values())
    covered = sum(s["valid"] > 0 for s in state.values())
    return {
        "questions": len(state), "questions_complete": complete, "questions_incomplete": len(state) - complete,
        "questions_covered": covered,  # with at least one valid completion (what teacher.min_coverage counts)
        "completions": sum(len(s["completions"]) for s in state.values()),
        # the distinct requests whose answers the data use, however many runs bought them (the headline's count)
        "requests_answered": len(used),
        "requests_sent": stats["sent"], "requests_from_journal": stats["from_journal"],
        "requests_from_store": stats["from_store"], "journal_entries_stored": stats["journal_entries_stored"],
        "usd": round(stats["usd_micro"] / 1e6, 4),  # of every response used, sent now or stored before
        "usd_this_run": round(stats["usd_micro_sent"] / 1e6, 4),
        "max_usd": t.max_usd,  # the spend cap (teacher.max_usd), null: none
        # every answer of this request set the response store holds, bought in this run or before it
        "usd_paid_for_request_set": round(cap.paid_before + stats["usd_micro_sent"] / 1e6, 4),
        **{k: stats[k] for k in ("retries", "rate_limited", "server_errors", "timeouts_or_connection_errors",
                                 "malformed_responses", "rejected_requests", "failed_requests", "usage_impossible",
                                 "prompt_tokens", "cached_prompt_tokens", "completion_tokens",
                                 # batch mode (batch.py): batches sent now, running ones taken up again,
                                 # error-file lines, requests an expired or cancelled batch left unanswered
                                 "batches_submitted", "batches_resumed", "batch_requests_failed",
                                 "batch_requests_expired")}}


def _kept(stats: Counter, store: Optional[ResponseStore], unusable: bool = False) -> str:
    """What became of the answers, and what a rerun does. `unusable`: the answers came but too few were valid, so a
    rerun would be served the same ones: say how to have them asked anew."""
    where = f"the response store {store.root} and the journal" if store is not None else "the journal"
    n = stats["sent"]
    kept = ("No answer arrived in this run" if not n else
            f"The {n} answer{'s' * (n != 1)} received in this run {'is' if n == 1 else 'are'} kept in {where}")
    if not unusable:
        return kept + ("; a rerun sends only the rest" if n else "")
    return (f"{kept}, and a rerun uses every stored answer again: to ask anew, raise teacher.rounds, or forget the "
            "answers that gave no valid completion with `tinythinker forget-answers` (try --dry-run first)")


def dry_run(params: Params, paths: Paths) -> dict:
    """What `request` would send now for round 1, after the journal and the response store answer what they
    can (and a batch an earlier run submitted, in batch mode), with its worst-case and expected cost, what this
    request set has paid, and the cap. Sends nothing, writes nothing (the journal is only read). Later rounds
    re-ask only what round 1 leaves without valid completions, so they are not counted."""
    t = params.teacher
    requests = _planned_requests(params, paths)
    check_prices(params, requests)  # as the run would refuse
    who = origin(params)
    journal = read_journal(paths.journal)
    store = ResponseStore(store_dir()) if t.backend == "openai" else None
    batch = t.mode == "batch"
    jobs = {request_key(b, salt, who): b for r in requests for b, salt in _round_requests(r["body"], 1, t.repeat_n)}
    answered = {k for k in jobs if k in journal or (store is not None and k in store)}
    running: set[str] = set()
    if batch and store is not None:
        for record in store.pending_batches():
            if record["origin"] == who:
                running |= set(record["custom_ids"]) & (jobs.keys() - answered)
    send = [b for k, b in jobs.items() if k not in answered and k not in running]
    plan = {"backend": t.backend, "mode": t.mode, "round_requests": len(jobs), "answered": len(answered),
            "in_submitted_batch": len(running), "requests": len(send), "max_usd": t.max_usd,
            "usd_worst": None, "usd_expected": None, "usd_paid": 0.0, "fit_under_cap": None,
            "tokens_counted_by": None, "unpriced_model": None}
    if t.backend == "offline":  # free
        plan.update(usd_worst=0.0, usd_expected=0.0, fit_under_cap=len(send) if t.max_usd is not None else None)
        return plan
    stored = list(store.entries()) if store is not None else []
    have = {e["key"] for e in stored}
    plan["usd_paid"] = paid_for(stored + [e for k, e in journal.items() if k not in have], who, requests, t.price)
    unpriced = sorted({b["model"] for b in send if price_of(b["model"], t.price) is None})
    if unpriced:
        plan["unpriced_model"] = unpriced[0]
        return plan
    cap = SpendCap(t.max_usd, t.price)
    share = batch_share(t.price) if batch else 1.0
    count = _tiktoken_counter(t.model)
    plan["tokens_counted_by"] = "tiktoken" if count is not None else "characters/4"
    count = count or approx_tokens
    worst = [cap.worst(b, batch) for b in send]
    expected = 0.0
    for b in send:
        price = price_of(b["model"], t.price)
        expected += share * (message_tokens(b["messages"], count) * price.input
                             + b["n"] * b[limit_key(b)] * price.output)
    plan.update(usd_worst=sum(worst), usd_expected=expected)
    if t.max_usd is not None:
        room, fit = t.max_usd - plan["usd_paid"], 0
        for w in worst:  # the prefix the run would send before the cap stops it (nothing in flight settled)
            if w > room:
                break
            room -= w
            fit += 1
        plan["fit_under_cap"] = fit
    return plan


def _planned_requests(params: Params, paths: Paths) -> list[dict]:
    """The request set as the `prompt` stage writes it, or, before it ran (a fresh clone), as it would write it
    from the prepared training split; without that either, the command that makes them."""
    if paths.requests.exists() or not paths.split("train").exists():
        if not paths.requests.exists():
            raise DataError(f"{paths.requests}: no such file, nor the training split it is built from; "
                            "`dvc repro prompt` makes both (download, prepare, prompt: nothing is sent to the "
                            "teacher), then look again")
        return read_requests(paths)
    from ..data.prepare import read_split
    from .prompts import build_requests

    return build_requests(params, read_split(paths, "train"))


def describe(plan: dict) -> str:
    """`tinythinker request --dry-run`'s few lines."""
    n = plan["requests"]
    lines = [f"teacher round 1 would send {n} request{'s' * (n != 1)} ({plan['mode']}): {plan['answered']} of "
             f"{plan['round_requests']} are answered by the journal or the response store"
             + (f", {plan['in_submitted_batch']} are in a submitted batch (resumed, not sent again)"
                if plan["in_submitted_batch"] else "")]
    if plan["backend"] == "offline":
        lines.append("cost: $0 (the offline teacher is free)")
    elif plan["unpriced_model"] is not None:
        lines.append(f"cost: unknown, no price for teacher.model={plan['unpriced_model']!r} "
                     "(set teacher.price to see it)")
    else:
        price = " at the batch price" if plan["mode"] == "batch" else ""
        lines.append(f"cost of those{price}: at most ${plan['usd_worst']:.4f} (prompts counted as UTF-8 bytes, every "
                     f"sample at the max-tokens limit), expected ${plan['usd_expected']:.4f} (prompt tokens counted "
                     f"by {plan['tokens_counted_by']}, every sample at the max-tokens limit)")
    lines.append(f"already paid for this request set: ${plan['usd_paid']:.4f}")
    if plan["max_usd"] is None:
        lines.append("cap: none (teacher.max_usd=null)")
    else:
        left = plan["max_usd"] - plan["usd_paid"]
        fit = plan["fit_under_cap"]
        lines.append(f"cap: teacher.max_usd={plan['max_usd']:g}, ${max(left, 0.0):.4f} left"
                     + ("" if fit is None else f"; {fit} of the {n} fit under it at their worst case"))
    lines.append("nothing was sent or written; later rounds re-ask only what round 1 leaves without valid completions")
    return "\n".join(lines)
