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

from ..io import Interrupted, read_jsonl, write_json, write_jsonl
from ..params import Params
from ..paths import Paths, store_dir
from .backend import Backend, RequestFailed, TeacherError, origin
from .claims import Claims
from .cost import (CapReached, SpendCap, SpendCapReached, _usd, batch_share, cached_tokens, check_prices, paid_for,
                   price_of)
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


async def _gather(params: Params, requests: list[dict], backend, journal: Journal,
                  store: Optional[ResponseStore], stats: Counter, breaker: Breaker, cap: SpendCap,
                  stopping: asyncio.Event, used: set[str]) -> dict:
    """The rounds; `used` collects the key of every answer the data use (sent now, or found stored)."""
    from tqdm import tqdm

    t = params.teacher
    who = origin(params)
    state = {r["id"]: {"req": r, "needed": r["body"]["n"], "max_tokens": r["body"][limit_key(r["body"])],
                       "completions": [], "rounds": 0, "valid": 0} for r in requests}
    sem = asyncio.Semaphore(t.max_concurrency)
    # Another process sharing the store (a parallel experiment) may be buying a request this run needs: the first
    # to send it owns it, the others wait for its answer (claims.py).
    claims = Claims(store.root, t.timeout * (t.max_retries + 1) + t.max_retry_seconds) if store is not None else None

    def found(key: str) -> Optional[dict]:
        entry = journal.get(key)
        if entry is not None:
            stats["from_journal"] += 1
        elif store is not None and (entry := store.get(key)) is not None:
            journal.put(entry)  # paid in another run, experiment or checkout: the journal records it too
            stats["from_store"] += 1
        return entry

    def keep(entry: dict) -> dict:
        """The store first (it outlives the workspace), then the journal; an answer one of them cannot take (a
        full disk) still reaches the other, and the error names the one that failed."""
        failed = None
        if store is not None:
            try:
                entry = store.put(entry)
            except OSError as e:
                failed = _named(e, store.root)
        try:
            journal.put(entry)  # a kill after this line loses nothing paid for
        except OSError as e:
            raise _named(e, journal.path) from None
        if failed is not None:
            raise failed
        return entry

    async def claim(key: str) -> Optional[dict]:
        """Wait until this process owns `key`, or another's answer to it is stored (returned)."""
        while not claims.take(key):
            if stopping.is_set():
                return None
            await asyncio.sleep(_CLAIM_POLL)
            if store.get(key) is not None:
                return found(key)
        if store.get(key) is not None:  # the owner stored it and let go just before this claim
            claims.release(key)
            return found(key)
        return None

    async def send(body: dict, salt: str, key: str, qid: str) -> Optional[dict]:
        """The answer, stored; None when none came (a failure, the spend cap, a signal)."""
        try:
            async with sem:
                if stopping.is_set():  # a signal came: nothing new is sent
                    raise Stopped()
                resp = await backend.complete(body, key, qid, salt)
        except Stopped:
            stats["requests_not_sent_interrupted"] += 1
            return None
        except CapReached:  # not sent: the round ends with what is in flight, then the stage stops
            stats["requests_capped"] += 1
            return None
        except RequestFailed as e:
            if breaker.failed < _LOGGED_FAILURES:
                tqdm.write(f"teacher: no answer for {qid} ({salt}): {e}", file=sys.stderr)
            elif breaker.failed == _LOGGED_FAILURES:
                tqdm.write("teacher: further unanswered requests are only counted "
                           "(metrics/teacher_request.json)", file=sys.stderr)
            breaker.fail(e)
            return None
        entry = keep({"key": key, "origin": who, "round": salt, "body": body, "response": resp,
                      **backend.provenance(key)})
        stats["sent"] += 1
        stats["usd_micro_sent"] += round(1e6 * _usd(entry, t.price))
        return entry

    async def ask(body: dict, salt: str, key: str, qid: str, bar) -> Optional[dict]:
        entry = found(key)
        if entry is None and claims is not None:
            entry = await claim(key)
        if entry is None:
            try:
                entry = await send(body, salt, key, qid)
            finally:  # answered and stored, or failed: a waiting process may go on
                if claims is not None:
                    claims.release(key)
            if entry is None:
                bar.update(1)
                return None
        breaker.ok()
        used.add(key)
        resp = entry["response"]
        usage = resp.get("usage") or {}
        stats["prompt_tokens"] += usage.get("prompt_tokens") or 0
        stats["cached_prompt_tokens"] += cached_tokens(usage)
        stats["completion_tokens"] += usage.get("completion_tokens") or 0
        stats["usd_micro"] += round(1e6 * _usd(entry, t.price))
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
            jobs += [(s, b, salt, request_key(b, salt, who)) for b, salt in _round_requests(body, rnd, t.repeat_n)]
        label = f"teacher round {rnd}/{rounds}"
        if backend.batched:
            missing = [(b, salt, k) for _, b, salt, k in jobs
                       if journal.get(k) is None and (store is None or store.get(k) is None)]
            if await backend.prepare_round(missing, label):
                breaker.ok()  # the server answers: a failed line is that request's problem, not a refusal of all
        with tqdm(total=len(jobs), desc=label, unit="req", mininterval=1.0) as bar:
            responses = await _all(ask(b, salt, k, s["req"]["id"], bar) for s, b, salt, k in jobs)
        backend.finish_round()
        if stopping.is_set():  # what was in flight is stored: stop before the round's verdicts
            raise Stopped()
        breaker.end_round()
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
        if cap.reached:
            raise SpendCapReached(_cap_message(cap, state))
    return state


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
    """The rounds under Ctrl-C / SIGTERM handling: the first signal stops sending, waits up to `teacher.timeout`
    for the requests in flight and keeps their answers (paid for), then stops the stage; a second one exits at
    once (what was stored stays stored: every answer is fsync'd as it arrives)."""
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
    handled = [s for s in (signal.SIGINT, signal.SIGTERM) if _can_handle(loop, s, on_signal)]
    try:
        return await _gather(params, requests, backend, journal, store, stats, breaker, cap, stopping, used)
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


def _named(e: OSError, path) -> OSError:
    """`e` naming `path` where it names no file or a temporary (a full disk reports no file name)."""
    if e.filename is not None and str(e.filename) == str(path):
        return e
    return OSError(e.errno, e.strerror or str(e), str(path))


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
            for entry in journal:
                if "origin" in entry and entry["key"] not in store:
                    store.put(entry)
                    stats["journal_entries_stored"] += 1
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
    complete = sum(s["needed"] == 0 for s in state.values())
    metrics = {
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
                                 "malformed_responses", "rejected_requests", "failed_requests",
                                 "prompt_tokens", "cached_prompt_tokens", "completion_tokens",
                                 # batch mode (batch.py): batches sent now, running ones taken up again,
                                 # error-file lines, requests an expired or cancelled batch left unanswered
                                 "batches_submitted", "batches_resumed", "batch_requests_failed",
                                 "batch_requests_expired")}}
    write_json(paths.metric("teacher_request"), metrics)
    return metrics


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
    requests = read_requests(paths)
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
