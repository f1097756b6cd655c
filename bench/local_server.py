"""A chat-completions stand-in on 127.0.0.1 for the benchmarks: an HTTP server in a daemon thread."""
from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer


class LocalServer:
    """Serves `handler` (a BaseHTTPRequestHandler class) on a free port; `url` is the OpenAI base URL.

    `backlog` is the listen queue: the teacher opens up to teacher.max_concurrency (64) connections at once,
    and the default of 5 refuses some, which the client would count as connection errors and retries."""

    def __init__(self, handler, backlog: int = 5):
        class Server(ThreadingHTTPServer):
            request_queue_size = backlog
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
