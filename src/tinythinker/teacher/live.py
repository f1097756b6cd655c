"""The live teacher: the official OpenAI SDK against api.openai.com or any OpenAI-compatible server, one request at a
time under request and token rate limits, with retries the stage counts."""
from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from typing import Optional

from ..params import TeacherParams
from .backend import KEY_HEADER, Backend, RequestFailed, TeacherError, server_url
from .cost import SpendCap
from .parse import response_problem
from .prompts import limit_key, message_tokens

_FATAL_STATUS = (401, 403, 404)  # wrong key, no access, wrong model or URL: no request can succeed
# What the SDK's APIConnectionError / APITimeoutError wrap when the request never left: nothing can be billed.
_NEVER_SENT = ("ConnectError", "ConnectTimeout", "PoolTimeout")


def check_key(key: str) -> None:
    """An API key that cannot be sent as an HTTP header (a newline from a file, a space, a control character) is
    refused before anything is sent, naming where it goes wrong but never the key."""
    bad = next((i for i, c in enumerate(key) if c.isspace() or not c.isprintable() or not c.isascii()), None)
    if bad is not None:
        what = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", " ": "a space"}.get(key[bad],
                                                                                         "a character")
        raise TeacherError(f"OPENAI_API_KEY holds {what} at position {bad + 1} of {len(key)} (no HTTP header can "
                           "carry it; a key read from a file keeps its newline): set it to the key alone; "
                           "nothing was sent")


def _chat_completion(resp) -> dict:
    """The SDK's answer as JSON, or ValueError when a 200 carried something else (a proxy's HTML page comes back
    as a str, a JSON body of another shape as a model without its fields)."""
    if not hasattr(resp, "model_dump"):
        raise ValueError(f"a {type(resp).__name__} body ({str(resp)[:60]!r}), not a chat completion")
    answer = resp.model_dump(mode="json", exclude_none=True, warnings=False)
    problem = response_problem(answer)
    if problem is not None:
        raise ValueError(f"not a chat completion: {problem}")
    return answer


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


class OpenAIBackend(Backend):
    """AsyncOpenAI with our own retries (429 honouring Retry-After, 5xx, timeouts, lost connections) under
    request and token rate limits. The SDK's own retries are off so that every attempt is counted and paced.
    Every attempt is reserved against the spend cap (`cost.SpendCap`) before it is sent."""

    def __init__(self, t: TeacherParams, stats: Counter, cap: Optional[SpendCap] = None):
        import openai

        key = os.environ.get("OPENAI_API_KEY")
        if not key:
            raise TeacherError("teacher.backend=openai needs the OPENAI_API_KEY environment variable "
                               "(any non-empty value for a local server without auth); nothing was sent")
        check_key(key)
        self.openai, self.t, self.stats, self.key = openai, t, stats, key
        self.cap = cap if cap is not None else SpendCap(None)
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
            cause = err.__cause__
            if type(cause).__name__ in _NEVER_SENT:
                msg = f"no connection to {self.server}: {cause or err}"
            else:  # sent, then the connection was reset or closed before an answer came
                msg = (f"connection to {self.server} lost before an answer ("
                       f"{type(cause).__name__ if cause is not None else 'closed'}{f': {cause}' if str(cause or '') else ''})")
        elif isinstance(err, RecursionError):
            msg = f"malformed response from {self.server}: JSON nested too deep to read"
        elif isinstance(err, json.JSONDecodeError):  # a 200 whose body is not JSON
            msg = f"malformed response from {self.server}: not JSON ({err})"
        elif isinstance(err, ValueError):  # not a chat completion (`_chat_completion`)
            msg = f"malformed response from {self.server}: {err}"
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
        """The response, or RequestFailed; TeacherError when no request can succeed (key, access, quota);
        CapReached when an attempt's worst case does not fit under the spend cap (that attempt is not sent)."""
        o = self.openai
        cost = message_tokens(body["messages"]) + body["n"] * body[limit_key(body)]
        start = time.monotonic()
        reserved: Optional[float] = None  # the attempt's worst case, held against the spend cap until it settles
        try:
            for attempt in range(self.t.max_retries + 1):
                if self.stopping is not None and self.stopping.is_set():  # a retry after Ctrl-C: not sent
                    raise RequestFailed("not sent: the stage is stopping", transient=False, deferred=True)
                if reserved is None:
                    reserved = self.cap.hold(body)  # CapReached: not sent
                charged = await self.limiter.acquire(cost)
                try:
                    resp = await self.client.chat.completions.create(**body, extra_headers={KEY_HEADER: key})
                    answer = _chat_completion(resp)
                except o.APIStatusError as e:  # an error status: nothing billed, the reservation stays for a retry
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
                    if type(e.__cause__).__name__ not in _NEVER_SENT:  # the server may have answered and billed it
                        self.cap.maybe_billed(reserved)
                        reserved = None
                    self.stats["timeouts_or_connection_errors"] += 1
                    why, delay = self._message(e), self._delay(attempt, e)
                except (o.APIResponseValidationError, ValueError, RecursionError) as e:  # a 200 the SDK cannot
                    # read: not JSON, JSON nested past the parser's depth, not a chat completion
                    self.cap.maybe_billed(reserved)  # answered, so billed, but its usage cannot be read
                    reserved = None
                    self.stats["malformed_responses"] += 1
                    why, delay = self._message(e), self._delay(attempt, None)
                else:
                    self.cap.settle(reserved, {"body": body, "response": answer})
                    reserved = None
                    return answer
                if attempt == self.t.max_retries or time.monotonic() - start + delay > self.t.max_retry_seconds:
                    break
                self.stats["retries"] += 1
                await asyncio.sleep(delay)
        finally:
            if reserved is not None:  # refused, out of retries, or cancelled: nothing billed for it
                self.cap.release(reserved)
        self.stats["failed_requests"] += 1
        raise RequestFailed(f"{why} (gave up after {attempt + 1} attempts in {time.monotonic() - start:.1f} s)",
                            transient=True)

    async def close(self) -> None:
        await self.client.close()
