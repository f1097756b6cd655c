"""The teacher seam: what the request rounds need of a teacher (`Backend`), how a request fails, and who answers.

Three kinds stand behind it, one module each: offline.py (the synthetic task's teacher), live.py (an OpenAI-compatible
server, one request at a time) and batch.py (the OpenAI Batch API); request.py picks one and runs the rounds.
"""
from __future__ import annotations

import os
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from ..io import DataError
from ..params import Params

KEY_HEADER = "X-TinyThinker-Request-Key"  # lets a server (or a test) tell rounds and repeats apart


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
    stopping = None  # an asyncio.Event the stage sets on Ctrl-C / SIGTERM: no new attempt is sent after it

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
