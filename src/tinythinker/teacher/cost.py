"""What the teacher costs: the price of a model, the spend of an answer, the worst case of a request, and the spend
cap of the request stage (`teacher.max_usd`).

Prices are the table `prompts.PRICES` (USD per token, by model snapshot) unless `teacher.price` gives them (USD
per 1M tokens), which then prices everything: the cap and the `usd` of metrics/teacher_request.json alike.

The cap holds because every request is reserved at its worst case before it leaves (`SpendCap.hold`): its prompt
at the input price, counted as the UTF-8 bytes of every message's role and content plus the chat format's
per-message overhead (`prompts.message_tokens`), an upper bound because a BPE token is at least one byte; plus
`n` x the body's output-token limit at the output price; a Batch API request at the batch share of both. An
answer settles its reservation at the usage it reports (`_usd`); a request refused or never answered gives it
back; an attempt that timed out may still be billed, so its reservation stays spent. What this request set paid
before the run (`paid_for`, from the response store) counts against the cap too, so a rerun gets no fresh cap.
"""
from __future__ import annotations

import hashlib
import json
import threading
from typing import Iterable, Optional

from ..params import Params, PriceParams
from .backend import TeacherError
from .prompts import BATCH_DISCOUNT, PRICES, Price, limit_key, message_tokens


def price_of(model: str, given: Optional[PriceParams] = None) -> Optional[Price]:
    """USD per token, live: `teacher.price` when given, else the table's for `model`, else None (unknown)."""
    if given is None:
        return PRICES.get(model)
    return Price(given.input / 1e6, given.output / 1e6,
                 None if given.cached_input is None else given.cached_input / 1e6)


def batch_share(given: Optional[PriceParams] = None) -> float:
    """The share of the live price a Batch API answer costs."""
    return BATCH_DISCOUNT if given is None else given.batch_discount


def cached_tokens(usage: dict) -> int:
    """Prompt tokens the server read from its prompt cache (a part of `prompt_tokens`)."""
    return min((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0, usage.get("prompt_tokens") or 0)


def _usd(entry: dict, given: Optional[PriceParams] = None) -> float:
    """Spend of one answer (a journal entry): by `teacher.price` when given, else by the answering model's price in
    the table (the body's model when the server names an alias): cached prompt tokens at the cached-input price
    where there is one, and the batch share of it all for a Batch API answer (`batch` in the entry). The offline
    teacher and models without a price cost nothing."""
    resp = entry["response"]
    if given is None:
        model = resp.get("model")
        if model != "offline" and model not in PRICES:
            model = entry["body"]["model"]
        price = PRICES.get(model)
    else:
        price = price_of("", given)
    if price is None:
        return 0.0
    usage = resp.get("usage") or {}
    cached = cached_tokens(usage)
    usd = (((usage.get("prompt_tokens") or 0) - cached) * price.input
           + cached * (price.input if price.cached_input is None else price.cached_input)
           + (usage.get("completion_tokens") or 0) * price.output)
    return usd * batch_share(given) if entry.get("batch") else usd


def prompt_tokens_bound(messages: list[dict]) -> int:
    """At least the prompt tokens a server can bill for `messages`: a BPE token is at least one UTF-8 byte."""
    return message_tokens(messages, lambda text: len(text.encode()))


def worst_usd(body: dict, price: Price, share: Optional[float] = None) -> float:
    """The most `body` can cost: the prompt bound at the input price (or the cached-input one, should it be
    higher), every one of the `n` samples at the output limit; times `share` for a Batch API request."""
    prompt = prompt_tokens_bound(body["messages"]) * max(price.input, price.cached_input or 0.0)
    usd = prompt + body["n"] * body[limit_key(body)] * price.output
    return usd if share is None else usd * share


def request_set(requests: list[dict]) -> set[str]:
    """What tells this request set's answers from others: model and messages of each request (later rounds change
    only `n` and the output-token limit)."""
    return {signature(r["body"]) for r in requests}


def signature(body: dict) -> str:
    """A request of this set, whatever round asked it: sha256 of its model and messages."""
    canonical = json.dumps([body.get("model"), body.get("messages")], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def paid_for(entries: Iterable[dict], who: str, requests: list[dict], given: Optional[PriceParams] = None) -> float:
    """USD of every answer in `entries` (the response store's) that `who` gave to a request of this set, in any
    round, run, experiment or workspace."""
    mine = request_set(requests)
    return sum(_usd(e, given) for e in entries
               if e.get("origin") == who and isinstance(e.get("body"), dict) and signature(e["body"]) in mine)


def check_prices(params: Params, requests: list[dict]) -> None:
    """A cap needs a price for every model of the request set (the offline teacher is free): a TeacherError naming
    the key otherwise, raised before the backend is opened and anything is sent."""
    t = params.teacher
    if t.max_usd is None or t.backend == "offline":
        return
    unknown = sorted({r["body"]["model"] for r in requests if price_of(r["body"]["model"], t.price) is None})
    if unknown:
        raise TeacherError(f"teacher.max_usd: no price known for teacher.model={unknown[0]!r}; set teacher.price "
                           "(input, cached_input, output per 1M tokens, batch_discount)")


class CapReached(Exception):
    """A request not sent because the spend cap is reached: neither an answer nor a failure of the teacher."""


class SpendCapReached(TeacherError):
    """The stage stopped at the spend cap; the message is the whole story (spent, cap, what is left, what to do)."""


class SpendCap:
    """`teacher.max_usd` against what this request set paid before the run (`paid_before`), what this run paid
    (`paid`), what timed-out attempts may have cost (`unsure`, at their worst case) and the worst case of what is
    in flight (`held`). Once a request does not fit, no new one is sent (`reached`), whatever frees up later.
    Every method is synchronous (no await inside), so the event loop cannot interleave a check and its update;
    a lock guards them against threads too."""

    def __init__(self, max_usd: Optional[float], given: Optional[PriceParams] = None):
        self.max_usd, self.given = max_usd, given
        self.paid_before = self.paid = self.unsure = self.held = 0.0
        self.reached = False
        self._lock = threading.Lock()

    def worst(self, body: dict, batch: bool = False) -> float:
        price = price_of(body["model"], self.given)
        if price is None:  # `check_prices` refused this at the start; an answer of this model costs nothing here
            return 0.0
        return worst_usd(body, price, batch_share(self.given) if batch else None)

    def hold(self, body: dict, batch: bool = False, force: bool = False) -> float:
        """Reserve the worst case of `body`; return the amount to settle or release. Raises CapReached if it does
        not fit. `force`: reserve even over the cap (a batch an earlier run submitted: it is paid either way)."""
        if self.max_usd is None:
            return 0.0
        usd = self.worst(body, batch)
        with self._lock:
            if not force and (self.reached or self.committed + usd > self.max_usd):
                self.reached = True
                raise CapReached()
            self.held += usd
        return usd

    def settle(self, reserved: float, entry: dict) -> float:
        """An answer arrived: its reservation becomes what it cost. Returns that."""
        usd = _usd(entry, self.given)
        with self._lock:
            self.held -= reserved
            self.paid += usd
        return usd

    def release(self, reserved: float) -> None:
        """No answer and nothing billed (refused, never reached the server, not run by its batch)."""
        with self._lock:
            self.held -= reserved

    def maybe_billed(self, reserved: float) -> None:
        """An attempt timed out: the server may have answered and billed it, so its worst case stays spent."""
        with self._lock:
            self.held -= reserved
            self.unsure += reserved

    @property
    def committed(self) -> float:
        return self.paid_before + self.paid + self.unsure + self.held

    @property
    def spent(self) -> float:
        return self.paid_before + self.paid + self.unsure

    @property
    def spent_now(self) -> float:
        return self.paid + self.unsure
