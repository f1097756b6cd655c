"""Fakes the teacher tests share: a scripted OpenAI-compatible chat server (`Teacher`), an in-memory Batch API
(`BatchAPI`), both on 127.0.0.1 through real HTTP, and the small roots the request stage runs on. Not a test
module: the tests import it, and tests/teacher/conftest.py turns the server makers into fixtures."""
import json
import secrets
import socket
import struct
import threading
import time
from collections import Counter
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from tinythinker.data import synthetic
from tinythinker.io import write_jsonl
from tinythinker.params import Params, load, to_dict
from tinythinker.paths import Paths
from tinythinker.teacher.backend import KEY_HEADER
from tinythinker.teacher.prompts import build_requests, prompt

API_KEY = f"test-key-{secrets.token_hex(8)}"
REPO = Path(__file__).resolve().parents[2]
BASE = load(REPO / "params.yaml")  # params.yaml holds every value


def completion_for(user: str, i: int) -> str:
    """A well-formed rationale answering the rationalisation template in `user`."""
    lines = user.split("\n")
    verdicts = [l.replace("Explanations: ", "").replace(" Because", "") for l in lines[3:]]
    body = [f"{v} Because reason {i} about option {v[0]}." for v in verdicts]
    return f"Key Information: fact {i} of {lines[0]}\nExplanations: " + "\n".join(body)


# Error answers as OpenAI sends them: (status, error object). "401" echoes the Authorization header back.
ERRORS = {
    "429": (429, {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}),
    "500": (500, {"message": "The server had an error while processing your request. Sorry about that!",
                  "type": "server_error", "code": None}),
    "400": (400, {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                             "Use 'max_completion_tokens' instead.", "type": "invalid_request_error",
                  "param": "max_tokens", "code": "unsupported_parameter"}),
    "quota": (429, {"message": "You exceeded your current quota, please check your plan and billing details.",
                    "type": "insufficient_quota", "code": "insufficient_quota"}),
    "401": (401, {"message": "Incorrect API key provided: {auth}.", "type": "invalid_request_error",
                  "code": "invalid_api_key"}),
}


class QuietServer(ThreadingHTTPServer):
    """A client that gave up (a timeout, a kill) breaks the pipe of an answer: the server's business, not the
    output of the stage under test."""
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


class Handler(BaseHTTPRequestHandler):
    """Hands every GET and POST to its server's `route(handler, method)`."""

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.server.route(self, "GET")

    def do_POST(self):
        self.server.route(self, "POST")


def serve(route) -> tuple[QuietServer, str]:
    """A server on a free port of 127.0.0.1 answering through `route`, in a daemon thread; (server, its /v1 URL)."""
    httpd = QuietServer(("127.0.0.1", 0), Handler)
    httpd.route = route
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"


def send_json(h, payload: bytes, status: int = 200, headers: dict | None = None) -> None:
    """One HTTP answer of a test server: `payload` (bytes) as application/json, with `headers`."""
    h.send_response(status)
    headers = {"Content-Type": "application/json", **(headers or {})}
    h.send_header("Content-Length", str(len(payload)))
    for name, value in headers.items():
        h.send_header(name, value)
    h.end_headers()
    h.wfile.write(payload)
    h.wfile.flush()


class Teacher:
    """A scripted chat-completions server. `script(question, attempt, body)` picks a behaviour per request:
    ok | hang | reset | notjson | length | malformed | garbage (no choice parses) | a key of ERRORS; `attempt`
    counts the requests for the same key."""

    def __init__(self, script=lambda q, a, b: "ok", delay: float = 0.0, hang: float = 2.5):
        self.script, self.delay, self.hang = script, delay, hang
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self.httpd, self.url = serve(lambda h, method: self.handle(h))

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, h):
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        key = h.headers.get(KEY_HEADER)
        user = body["messages"][-1]["content"]
        question = user.split("\n")[0]
        with self.lock:
            attempt = sum(e["key"] == key for e in self.events)
            behaviour = self.script(question, attempt, body)
            event = {"t": time.monotonic(), "key": key, "question": question, "n": body["n"],
                     "max_tokens": body.get("max_tokens", body.get("max_completion_tokens")),
                     "fields": sorted(body), "auth": h.headers.get("Authorization"),
                     "behaviour": behaviour, "answered": False}
            self.events.append(event)
        if behaviour == "hang":
            time.sleep(self.hang)  # the client has timed out and gone; no answer counts
            return
        if behaviour == "reset":  # the connection reset after the request arrived (RST, no answer)
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            return
        if behaviour == "notjson":  # a 200 from a proxy in the way: an HTML page
            send_json(h, b"<html><body>502 Bad Gateway</body></html>")
            return
        if behaviour == "html":  # the same page, sent as what it is
            send_json(h, b"<html><body>Sign in to the proxy</body></html>", headers={"Content-Type": "text/html"})
            return
        if behaviour.startswith("raw:"):  # a 200 with this JSON body, whatever its shape: billed as made
            with self.lock:
                event["answered"] = True
            send_json(h, behaviour[4:].encode())
            return
        if behaviour.startswith("reply:"):  # reply:<status>|<content type>|<body>: any answer at all
            status, kind, payload = behaviour[6:].split("|", 2)
            send_json(h, payload.encode(), int(status), {"Content-Type": kind})
            return
        if behaviour == "close":  # the connection closed after the request arrived, no answer, no RST
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if behaviour == "stall":  # headers and half a body, then nothing until the client gives up
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", "1000")
            h.end_headers()
            h.wfile.write(b'{"id": "chatcmpl-1", "choi')
            h.wfile.flush()
            time.sleep(self.hang)
            return
        if behaviour in ERRORS:
            status, error = ERRORS[behaviour]
            error = {**error, "message": error["message"].format(auth=h.headers.get("Authorization"))}
            send_json(h, json.dumps({"error": error}).encode(), status,
                      {"Retry-After": "1"} if behaviour == "429" else None)
            return
        time.sleep(self.delay)
        choices = []
        for i in range(body["n"]):
            content, finish = completion_for(user, len(self.events) * 10 + i), "stop"
            if i == 0 and behaviour == "length":
                content, finish = content[:30], "length"
            if (i == 0 and behaviour == "malformed") or behaviour == "garbage":
                content = "Sure! I believe the answer is the first one."
            choices.append({"index": i, "message": {"role": "assistant", "content": content},
                            "finish_reason": finish, "logprobs": None})
        payload = json.dumps({"id": f"chatcmpl-{len(self.events)}", "object": "chat.completion",
                              "created": int(time.time()), "model": body["model"], "choices": choices,
                              "usage": self.usage(body)}).encode()
        with self.lock:  # billed once the answer is made, whether or not the client is still there to read it
            event["answered"] = True
        send_json(h, payload)

    def usage(self, body: dict):
        """What the server reports it used (a test may report the impossible)."""
        return {"prompt_tokens": 100, "completion_tokens": 20 * body["n"], "total_tokens": 100 + 20 * body["n"]}

    def answered(self) -> Counter:
        with self.lock:
            return Counter(e["key"] for e in self.events if e["answered"])


def outage_after(answers: int):
    """(script, state): the server answers `answers` requests, then every request gets a 500 until the test
    sets ``state["answers"] = None`` (the server is back)."""
    state = {"answers": answers}

    def script(q, attempt, body):
        if state["answers"] is None:
            return "ok"
        state["answers"] -= 1
        return "ok" if state["answers"] >= 0 else "500"
    return script, state


def records(k: int) -> list[dict]:
    return [{"id": f"q{i}", "question": f"Question {i}?", "answer": "ABCD"[i % 4],
             "choices": [{"label": l, "text": f"option {l}{i}"} for l in "ABCD"]} for i in range(k)]


def setup_root(root: Path, server: Teacher, k: int, **teacher) -> Params:
    overrides = {"teacher.backend": "openai", "teacher.base_url": server.url, "teacher.samples": 3,
                 "teacher.max_tokens": 64, "teacher.timeout": 1.0, "teacher.max_retries": 4,
                 **{f"teacher.{key}": v for key, v in teacher.items()}}
    params = BASE.replace(**overrides)
    paths = Paths(root)
    train = records(k)
    write_jsonl(paths.split("train"), train)
    write_jsonl(paths.requests, build_requests(params, train))
    (root / "params.yaml").write_text(yaml.safe_dump(to_dict(params), sort_keys=False))
    return params


def assert_key_never_written(root: Path, *texts: str):
    for path in root.rglob("*"):
        if path.is_file():
            assert API_KEY not in path.read_text(errors="replace"), path
    for text in texts:
        assert API_KEY not in text


def closing_servers(cls):
    """A fixture's body: a maker of `cls` servers, every one closed when the test ends."""
    servers = []

    def make(*a, **kw):
        servers.append(cls(*a, **kw))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


BASE = load(Path(__file__).resolve().parents[2] / "params.yaml")  # params.yaml holds every value

SMALL = {"dataset.synthetic.num_train": 30, "dataset.synthetic.num_valid": 5, "dataset.synthetic.num_test": 5,
         "teacher.offline_fault_rate": 0.3}


def make_root(root, params):
    splits = synthetic.generate(params.dataset.synthetic, params.dataset.seed)
    paths = Paths(root)
    for name, rows in splits.items():
        write_jsonl(paths.split(name), rows)
    prompt(params, paths)
    return paths


BATCH = {"mode": "batch", "batch_poll_seconds": 0.02}


class BatchAPI:
    """An in-memory OpenAI Batch API. Each batch is `validating` at its first retrieve, then `in_progress`
    for `polls` retrieves (for as long as `hold` is set), then finishes as `finish(batch)` says (completed,
    expired, failed). `fate(question, body, batch_index)` decides each line: ok | length | 400 | quota, or
    `skip` (never run: only an expired or cancelled batch leaves such lines)."""

    def __init__(self, fate=lambda q, body, i: "ok", finish=lambda b: "completed", polls: int = 2,
                 prompt_tokens: int = 100, cached: int = 0, max_requests: int = 50_000):
        self.fate, self.finish, self.polls, self.max_requests = fate, finish, polls, max_requests
        self.prompt_tokens, self.cached = prompt_tokens, cached
        self.hold = threading.Event()
        # Scripted failures of API calls: (method, path) -> behaviours, one used per call: an ERRORS key (the
        # call is refused), or "500 after" (the call takes effect, then the answer is lost to a 500).
        self.faults: dict[tuple[str, str], list[str]] = {}
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.lock = threading.Lock()
        self.httpd, self.url = serve(self.handle)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- what tests look at ---
    def count(self, method: str, prefix: str) -> int:
        return sum(m == method and p.startswith(prefix) for m, p in self.calls)

    def created(self) -> list[dict]:
        return sorted(self.batches.values(), key=lambda b: b["index"])

    def input_lines(self, b: dict) -> list[dict]:
        return [json.loads(line) for line in self.files[b["input_file_id"]]["data"].splitlines()]

    # --- the API ---
    def handle(self, h, method: str):
        path = urlsplit(h.path).path
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        with self.lock:
            self.calls.append((method, path))
            queue = self.faults.get((method, path))
            fault = queue.pop(0) if queue else None
            try:
                if fault in ERRORS:
                    status, error = ERRORS[fault]
                    payload = {"error": {**error, "message": error["message"].format(auth="sk-...")}}
                else:
                    status, payload = self.route(h, method, path, raw)
                    if fault == "500 after":
                        status, payload = 500, {"error": ERRORS["500"][1]}
            except Exception as e:  # a bug in the test server shows up as a 500 with its message
                status, payload = 500, {"error": {"message": f"test server: {e!r}", "type": "server_error"}}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream" if isinstance(payload, bytes) else "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def route(self, h, method, path, raw):
        parts = path.strip("/").split("/")[1:]  # after v1
        if parts == ["files"] and method == "POST":
            return 200, self.upload(h, raw)
        if len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
            return 200, self.files[parts[1]]["data"]
        if parts == ["batches"] and method == "POST":
            return self.create(json.loads(raw))
        if parts == ["batches"] and method == "GET":
            data = [self.view(b) for b in sorted(self.batches.values(), key=lambda b: -b["index"])]
            return 200, {"object": "list", "data": data, "has_more": False,
                         "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
        if len(parts) == 2 and parts[0] == "batches" and method == "GET":
            return 200, self.view(self.advance(self.batches[parts[1]]))
        if len(parts) == 3 and parts[0] == "batches" and parts[2] == "cancel":
            b = self.batches[parts[1]]
            b["status"] = "cancelling"
            return 200, self.view(b)
        if parts == ["chat", "completions"]:
            body = json.loads(raw)
            return 200, self.answer(body, "ok")
        return 404, {"error": {"message": f"no route {method} {path}", "type": "invalid_request_error"}}

    def upload(self, h, raw):
        msg = BytesParser(policy=email_policy).parsebytes(
            f"Content-Type: {h.headers['Content-Type']}\r\n\r\n".encode() + raw)
        fields = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
        assert fields["purpose"].get_content() == "batch"
        fid = f"file-{len(self.files)}"
        data = fields["file"].get_payload(decode=True)
        self.files[fid] = {"data": data, "purpose": "batch"}
        return {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": fields["file"].get_filename(), "purpose": "batch", "status": "processed"}

    def create(self, req):
        if req["endpoint"] != "/v1/chat/completions" or req["completion_window"] != "24h":
            return 400, {"error": {"message": "bad endpoint or window", "type": "invalid_request_error"}}
        bid = f"batch_{len(self.batches)}"
        self.batches[bid] = {"id": bid, "index": len(self.batches), "input_file_id": req["input_file_id"],
                             "metadata": req.get("metadata"), "status": "validating", "polls": 0,
                             "created_at": int(time.time()), "errors": None, "output_file_id": None,
                             "error_file_id": None, "counts": {"total": 0, "completed": 0, "failed": 0}}
        return 200, self.view(self.batches[bid])

    def validate(self, b):
        """The API's own checks of an input file: the errors of a batch that fails validation."""
        lines = self.input_lines(b)
        errors = []
        if len(lines) > self.max_requests:
            errors.append({"code": "too_many_requests", "line": None,
                           "message": f"The batch input file has {len(lines)} requests, over {self.max_requests}."})
        if len({l["body"]["model"] for l in lines}) > 1:
            errors.append({"code": "mixed_models", "line": None, "message": "All requests must use one model."})
        if len({l["custom_id"] for l in lines}) < len(lines):
            errors.append({"code": "duplicate_custom_id", "line": None, "message": "custom_id must be unique."})
        for i, l in enumerate(lines, 1):
            if l.get("method") != "POST" or l.get("url") != "/v1/chat/completions":
                errors.append({"code": "invalid_url", "line": i, "message": "The URL provided for this request "
                               "does not match the batch endpoint."})
        return errors

    def advance(self, b):
        b["polls"] += 1
        if b["status"] == "validating":
            errors = self.validate(b) or ([] if self.finish(b) != "failed" else
                                          [{"code": "invalid_json_line", "line": 2,
                                            "message": "This line is not parseable as valid JSON."}])
            b["status"] = "failed" if errors else "in_progress"
            b["errors"] = {"object": "list", "data": errors} if errors else None
            b["counts"]["total"] = len(self.input_lines(b))
        elif b["status"] == "in_progress" and b["polls"] > 1 + self.polls and not self.hold.is_set():
            self.complete(b, self.finish(b))
        elif b["status"] == "in_progress":
            b["counts"]["completed"] = min(b["counts"]["total"], b["counts"]["completed"] + 1)
        elif b["status"] == "cancelling":
            self.complete(b, "cancelled")
        return b

    def answer(self, body, fate, n_event=0):
        user = body["messages"][-1]["content"]
        choices = []
        for i in range(body["n"]):
            content, finish = completion_for(user, n_event * 10 + i), "stop"
            if i == 0 and fate == "length":
                content, finish = content[:30], "length"
            choices.append({"index": i, "message": {"role": "assistant", "content": content},
                            "finish_reason": finish, "logprobs": None})
        p = self.prompt_tokens
        usage = {"prompt_tokens": p, "completion_tokens": 20 * body["n"], "total_tokens": p + 20 * body["n"]}
        if self.cached:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached}
        return {"id": f"chatcmpl-{n_event}", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"], "choices": choices, "usage": usage}

    def complete(self, b, status):
        """Finish `b` as `status`: answered lines to the output file, errors to the error file; an expired
        batch lists the lines it never ran as batch_expired, a cancelled one leaves them out."""
        out, err = [], []
        for j, line in enumerate(self.input_lines(b)):
            body = line["body"]
            fate = self.fate(body["messages"][-1]["content"].split("\n")[0], body, b["index"])
            base = {"id": f"batch_req_{b['index']}_{j}", "custom_id": line["custom_id"]}
            if fate == "skip" or (status == "cancelled" and j % 2):
                if status == "expired":
                    err.append({**base, "response": None, "error": {
                        "code": "batch_expired",
                        "message": "This request could not be executed before the completion window expired."}})
                continue
            if fate in ("400", "quota"):
                code = "invalid_prompt" if fate == "400" else "insufficient_quota"
                status_code = 400 if fate == "400" else 429
                err.append({**base, "response": {"status_code": status_code, "request_id": f"req_{j}", "body": {
                    "error": {"message": f"refused: {code}", "type": code, "code": code}}}, "error": None})
                continue
            out.append({**base, "response": {"status_code": 200, "request_id": f"req_{j}",
                                             "body": self.answer(body, fate, b["index"] * 1000 + j)}, "error": None})
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                fid = f"file-{len(self.files)}"
                self.files[fid] = {"data": "".join(json.dumps(r) + "\n" for r in rows).encode(),
                                   "purpose": "batch_output"}
                b[name] = fid
        b["status"] = status
        b["counts"] = {"total": b["counts"]["total"], "completed": len(out), "failed": len(err)}

    def view(self, b):
        return {"id": b["id"], "object": "batch", "endpoint": "/v1/chat/completions", "errors": b["errors"],
                "input_file_id": b["input_file_id"], "completion_window": "24h", "status": b["status"],
                "output_file_id": b["output_file_id"], "error_file_id": b["error_file_id"],
                "created_at": b["created_at"], "request_counts": b["counts"], "metadata": b["metadata"]}
