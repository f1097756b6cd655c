"""Teacher throughput: the request stage against a local OpenAI-compatible server that enforces a rate limit.

The server answers after an injected latency (base + jitter) and refuses with 429 (Retry-After) any
request beyond its declared requests-per-minute budget, like the OpenAI API. The client is the project's
real request stage (openai SDK, rate limiter, journal) told the same limit. A good client keeps the
server at its limit (achieved requests/min as a share of it, target >= 95%) without provoking 429s.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler
from unittest import mock

from local_server import LocalServer


class LimitedServer(LocalServer):
    def __init__(self, rpm: float, latency: float, jitter: float, seed: int = 0):
        self.rate, self.latency, self.jitter = rpm / 60.0, latency, jitter
        self.cap = max(1.0, self.rate)  # one second of burst
        self.level, self.t = self.cap, time.monotonic()
        self.accepted: list[float] = []
        self.refused: list[float] = []
        self.lock, self.rng = threading.Lock(), random.Random(seed)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real API

            def log_message(self, *a):
                pass

            def do_POST(self):
                owner.handle(self)

        super().__init__(Handler)

    def _admit(self) -> float:
        """0 when admitted, else seconds until the budget has room."""
        with self.lock:
            now = time.monotonic()
            self.level = min(self.cap, self.level + (now - self.t) * self.rate)
            self.t = now
            if self.level >= 1:
                self.level -= 1
                self.accepted.append(now)
                return 0.0
            self.refused.append(now)
            return (1 - self.level) / self.rate

    def handle(self, h):
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        wait = self._admit()
        if wait:
            payload, status = {"error": {"message": "Rate limit reached", "type": "requests"}}, 429
            headers = {"retry-after-ms": str(int(wait * 1000) + 1)}
        else:
            with self.lock:
                delay = self.latency + self.rng.uniform(-self.jitter, self.jitter)
            time.sleep(max(0.0, delay))
            text = "Key Information: a fact.\nExplanations: (A) is correct. Because it is."
            payload, status, headers = {
                "id": "bench", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                            for i in range(body.get("n", 1))],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}, 200, {}
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)


def run(params, paths, num_requests: int, rpm: float, latency: float, jitter: float) -> list[dict]:
    from tinythinker.io import read_jsonl, write_jsonl
    from tinythinker.paths import STORE_ENV, Paths
    from tinythinker.teacher.request import request

    root = paths.root / "teacher_bench"  # a fresh journal: the offline run's answers must not be reused
    shutil.rmtree(root, ignore_errors=True)
    mine = Paths(root)
    shutil.copytree(paths.prepared, mine.prepared)
    write_jsonl(mine.requests, read_jsonl(paths.requests)[:num_requests])

    server = LimitedServer(rpm, latency, jitter)
    p = params.replace(**{"teacher.backend": "openai", "teacher.base_url": server.url, "teacher.rounds": 1,
                          "teacher.requests_per_minute": int(rpm), "teacher.tokens_per_minute": 10**9,
                          "teacher.min_coverage": 0.0})  # its canned answer is not a valid rationale
    try:
        # The bench's answers are not worth keeping: a store of its own, not the machine's.
        env = {"OPENAI_API_KEY": "local-server-needs-no-key", STORE_ENV: str(root / "store")}
        with mock.patch.dict(os.environ, env):
            t0 = time.perf_counter()
            metrics = request(p, mine)
            wall = time.perf_counter() - t0
    finally:
        server.close()
    acc = server.accepted
    achieved = 60.0 * (len(acc) - 1) / (acc[-1] - acc[0]) if len(acc) > 1 else 0.0
    return [{"requests": len(acc), "declared_rpm": rpm, "latency_s": latency, "jitter_s": jitter,
             "achieved_rpm": round(achieved, 1), "share_of_limit": round(achieved / rpm, 3),
             "responses_429": len(server.refused), "client_retries": metrics["retries"],
             "failed_requests": metrics["failed_requests"], "wall_s": round(wall, 2)}]
