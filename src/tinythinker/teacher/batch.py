"""Teacher mode `batch`: each round's missing requests through the OpenAI Batch API, at half the live price.

A round's requests that neither the journal nor the response store holds are written as Batch input JSONL,
one line per request: ``{"custom_id": <request key>, "method": "POST", "url": "/v1/chat/completions",
"body": <the chat request>}`` (the format `vllm run-batch` reads too), split at the API's limits (50,000
requests, 200 MB, one model per file). Each file is uploaded (`files.create(purpose="batch")`), submitted
(`batches.create(..., completion_window="24h")`) and polled every `teacher.batch_poll_seconds`; the output
and error files are then read back and matched by `custom_id`. An answered line becomes a journal entry like
a live answer (same key, so either mode serves the other), marked ``"batch": <batch id>`` for its price.

Never paying twice: a record of each batch is written to the response store (store.py) after the upload
and again once the batch exists, before it is polled. A stage killed while a batch runs finds the record on
its next run and polls that batch instead of submitting the requests again; a record with no batch id yet
(killed between `batches.create` and the record) is matched against the server's batches by the input
file's hash in the batch metadata. Answers go to the store before the record is retired, so a rerun after
completion finds them there and downloads nothing.

The spend cap (`teacher.max_usd`, cost.py): before an input file is uploaded each of its requests is reserved at
its worst case at the batch price; when the round's requests do not all fit, only the prefix that fits is
uploaded, and the rest is not sent (the stage then stops at the cap). A batch an earlier run submitted is paid
either way, so its requests are reserved whatever the cap. Read back, an answer settles its reservation at its
usage and a line without an answer gives it back.

Error-file lines and the requests an expired or cancelled batch left unanswered go to the next round, or with
`teacher.batch_fallback: live` straight to live requests in the same round. Loud failures, exit 2 with the
server's words: a batch that fails validation; 401/403/404 and `insufficient_quota` (on any call, or on a
line); a batch API call still failing after `teacher.max_retries` retries (a submitted batch keeps running,
and a rerun resumes it).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from collections import Counter
from typing import Optional

from ..params import Params
from .backend import Backend, RequestFailed, TeacherError
from .cost import CapReached, SpendCap
from .live import OpenAIBackend
from .parse import response_problem
from .store import ResponseStore

# The API's limits on one input file; module constants so that tests can lower them.
MAX_REQUESTS = 50_000
MAX_BYTES = 200_000_000  # "200 MB": the decimal reading, the smaller one
ENDPOINT = "/v1/chat/completions"
WINDOW = "24h"  # the only completion window the API offers
TERMINAL = ("completed", "failed", "expired", "cancelled")
META_KEY = "tinythinker_input"  # batch metadata: the input file's sha256, to find a batch whose id was lost
_FIND_SLACK = 600  # seconds: how far before a record's time `batches.list` is searched for its batch


def input_files(missing: list[tuple[dict, str, str]]) -> list[tuple[str, list[str], bytes]]:
    """(model, keys, JSONL bytes) per input file: one model per file, each within MAX_REQUESTS and MAX_BYTES."""
    by_model: dict[str, list[tuple[str, bytes]]] = {}
    for body, _salt, key in missing:
        line = json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body},
                          ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_BYTES:
            raise TeacherError(f"teacher: one batch request is {len(line):,} bytes, over the Batch API's "
                               f"{MAX_BYTES:,}-byte input file limit; use teacher.mode=live")
        by_model.setdefault(body["model"], []).append((key, line))
    files = []
    for model, lines in by_model.items():
        keys: list[str] = []
        chunk: list[bytes] = []
        size = 0
        for key, line in lines:
            if chunk and (len(chunk) == MAX_REQUESTS or size + len(line) > MAX_BYTES):
                files.append((model, keys, b"".join(chunk)))
                keys, chunk, size = [], [], 0
            keys.append(key)
            chunk.append(line)
            size += len(line)
        files.append((model, keys, b"".join(chunk)))
    return files


def _error_text(line: dict) -> tuple[str, str]:
    """(code, one-line message) of an error-file line: an HTTP error the request got, or a batch-level error
    (`batch_expired`, `batch_cancelled`) for a request that never ran."""
    resp = line.get("response") if isinstance(line.get("response"), dict) else {}
    err = line.get("error") or ((resp.get("body") or {}).get("error") if isinstance(resp.get("body"), dict) else None)
    err = err if isinstance(err, dict) else {"message": str(err or resp.get("body") or "no answer")}
    code = str(err.get("code") or err.get("type") or "")
    head = " ".join(filter(None, (f"HTTP {resp['status_code']}" if resp.get("status_code") else "", code)))
    return code, " ".join(f"{head or 'error'}: {err.get('message') or ''}".split())[:500]


class BatchBackend(Backend):
    """The Batch API behind the teacher's `complete`: `prepare_round` answers a round's missing requests as
    batches, `complete` hands each answer out (or its failure, or a live request with batch_fallback=live)."""

    batched = True

    @property
    def stopping(self):
        return self.live.stopping

    @stopping.setter
    def stopping(self, event) -> None:  # Ctrl-C: the live fallback sends nothing new either
        self.live.stopping = event

    def __init__(self, params: Params, stats: Counter, store: ResponseStore, origin: str,
                 cap: Optional[SpendCap] = None):
        self.t, self.stats, self.store, self.origin = params.teacher, stats, store, origin
        self.cap = cap if cap is not None else SpendCap(None)
        # the key check, the error wording, the live fallback (under the same cap)
        self.live = OpenAIBackend(self.t, stats, self.cap)
        self.openai = self.live.openai
        # Retries are ours (`_call`), as in live mode: the SDK's would retry a 429 insufficient_quota and could
        # submit a batch twice. Room for a 200 MB upload.
        self.client = self.live.client.with_options(timeout=max(self.t.timeout, 600.0))
        self.answers: dict[str, tuple[dict, str]] = {}  # key -> (response, batch id)
        self.failures: dict[str, RequestFailed] = {}
        self.read: list[dict] = []  # records of the round's batches, retired once the teacher stored their answers
        self.quota = ""  # an error-file line's insufficient_quota: the stage stops once the round's answers are kept
        self.warned: set[str] = set()
        self.held: dict[str, float] = {}  # key -> its worst case, reserved against the spend cap until read back
        self.capped: set[str] = set()  # the round's requests left out of its input files by the spend cap

    # --- the teacher's interface ------------------------------------------------------------------------
    async def prepare_round(self, missing: list[tuple[dict, str, str]], label: str) -> bool:
        self.answers, self.failures, self.read, self.quota = {}, {}, [], ""
        self.held, self.capped = {}, set()
        want = {key: (body, salt) for body, salt, key in missing}
        # Two questions with the same text and options make the same request, but a custom_id must be unique.
        missing = [(body, salt, key) for key, (body, salt) in want.items()]
        records, covered = [], set()
        for record in self.store.pending_batches():
            if record["origin"] != self.origin:
                continue
            ids = set(record["custom_ids"])
            # Read back by a run that stopped before retiring the record (killed, or stopped by a refusal): once
            # its answers are stored there is nothing left to fetch; its failures are asked again, as live ones.
            if all(k in self.store for k in record.get("answered", ids)):
                self.store.finish_batch(record)
            elif ids & want.keys():
                records.append(record)
                covered |= ids
                self.stats["batches_resumed"] += 1
                for key in ids & want.keys() - self.held.keys():  # submitted before: paid, cap or no cap
                    self.held[key] = self.cap.hold(want[key][0], batch=True, force=True)
            elif record["name"] not in self.warned:  # another run's (other params): paid, so never forgotten
                self.warned.add(record["name"])
                print(f"teacher: batch {record.get('batch_id') or record['input_file_id']} (submitted "
                      f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(record.get('created', 0)))}) holds none of "
                      f"this run's requests; it stays recorded in {self.store.root / 'batches' / 'pending'}",
                      file=sys.stderr)
        if not missing:
            return False
        todo = [(b, s, k) for b, s, k in missing if k not in covered]
        fits = 0
        for body, _salt, key in todo:  # the prefix whose worst case fits under the spend cap
            try:
                self.held[key] = self.cap.hold(body, batch=True)
            except CapReached:
                self.capped = {k for _, _, k in todo[fits:]}
                break
            fits += 1
        fresh = set()  # uploaded now: no batch can exist for them yet
        for model, keys, data in input_files(todo[:fits]):
            records.append(await self._upload(model, keys, data))
            fresh.add(records[-1]["name"])
        if not records:
            return False
        for i, record in enumerate(records):
            if not record.get("batch_id"):
                records[i] = await self._create(record, search=record["name"] not in fresh)
        batches = await self._wait(records, label)
        self.read = [await self._read_back(record, batch, want) for record, batch in zip(records, batches)]
        for key, reserved in self.held.items():
            if key in self.answers:
                resp, batch_id = self.answers[key]
                self.cap.settle(reserved, {"body": want[key][0], "response": resp, "batch": batch_id})
            else:  # an error-file line, or never run: not billed
                self.cap.release(reserved)
        self.held = {}
        return bool(self.answers)

    def finish_round(self) -> None:
        for record in self.read:
            self.store.finish_batch(record)
        self.read = []
        if self.quota:  # retired first: a rerun (with the quota raised) submits the refused requests again
            raise TeacherError(f"teacher out of quota, not retried: {self.quota}")

    def provenance(self, key: str) -> dict:
        return {"batch": self.answers[key][1]} if key in self.answers else {}

    async def complete(self, body: dict, key: str, qid: str, salt: str) -> dict:
        if key in self.answers:
            return self.answers[key][0]
        if key in self.capped:
            raise CapReached()
        if self.t.batch_fallback == "live":
            return await self.live.complete(body, key, qid, salt)
        raise self.failures.get(key) or RequestFailed("in no batch of this round", transient=False, deferred=True)

    async def close(self) -> None:
        await self.live.close()

    # --- batches ----------------------------------------------------------------------------------------
    async def _call(self, what: str, fn, *args, before_retry=None, **kwargs):
        """A Batch API call, retried on 5xx, 408, 409, 429, timeouts and lost connections within
        `teacher.max_retries` and `teacher.max_retry_seconds`; `before_retry()`, if it returns something, is
        the result instead of a retry. What stops the stage is a TeacherError with the server's words."""
        o = self.openai
        start = time.monotonic()
        for attempt in range(self.t.max_retries + 1):
            if attempt and before_retry is not None and (found := await before_retry()) is not None:
                return found
            try:
                return await fn(*args, **kwargs)
            except (o.APIStatusError, o.APIConnectionError, o.APIResponseValidationError) as e:
                if (fatal := self.live.refusal(e)) is not None:
                    raise TeacherError(f"{fatal}; while {what}") from None
                why, delay = self.live._message(e), self.live._delay(attempt, e)
                if isinstance(e, o.APIStatusError) and e.status_code < 500 and e.status_code not in (408, 409, 429):
                    break  # refused as sent: retrying cannot help
            if attempt == self.t.max_retries or time.monotonic() - start + delay > self.t.max_retry_seconds:
                break
            self.stats["retries"] += 1
            await asyncio.sleep(delay)
        raise TeacherError(f"batch API: {what} failed: {why}")

    async def _upload(self, model: str, keys: list[str], data: bytes) -> dict:
        name = hashlib.sha256(data).hexdigest()
        f = await self._call("uploading the input file", self.client.files.create,
                             file=(f"tinythinker-{name[:16]}.jsonl", data, "application/jsonl"), purpose="batch")
        record = {"name": name, "origin": self.origin, "model": model, "input_file_id": f.id, "batch_id": None,
                  "status": "uploaded", "created": time.time(), "requests": len(keys), "bytes": len(data),
                  "custom_ids": keys}
        self.store.put_batch(record)  # before the batch exists: a kill from here on cannot lose it
        return record

    async def _create(self, record: dict, search: bool) -> dict:
        """The record's batch: with `search` (a record an earlier run left without a batch id) the one a killed
        run created before it could record the id, if any; else created now from the uploaded file."""
        batch = await self._find(record) if search else None
        if batch is None:
            # A create that timed out may have made the batch: look for it before each retry.
            batch = await self._call("submitting the batch", self.client.batches.create,
                                     input_file_id=record["input_file_id"], endpoint=ENDPOINT,
                                     completion_window=WINDOW, metadata={META_KEY: record["name"]},
                                     before_retry=lambda: self._find(record))
            self.stats["batches_submitted"] += 1
        record = {**record, "batch_id": batch.id, "status": "submitted"}
        self.store.put_batch(record)
        return record

    async def _find(self, record: dict) -> Optional[object]:
        """The server's batch made from this record's input file, if any (newest first, back to the record's time)."""
        page = await self._call("listing batches", self.client.batches.list, limit=100)
        while True:
            for batch in page.data:
                if batch.created_at < record.get("created", 0) - _FIND_SLACK:
                    return None
                if ((batch.metadata or {}).get(META_KEY) == record["name"]
                        or batch.input_file_id == record["input_file_id"]):
                    return batch
            if not page.has_next_page():
                return None
            page = await self._call("listing batches", page.get_next_page)

    async def _wait(self, records: list[dict], label: str) -> list:
        """Poll until every batch is finished, with a progress bar of status and completed/failed/total."""
        from tqdm import tqdm

        total = sum(r["requests"] for r in records)
        latest: dict[str, object] = {}
        with tqdm(total=total, desc=f"{label} (batch)", unit="req", mininterval=1.0) as bar:
            while True:
                for r in records:
                    if r["batch_id"] not in latest or latest[r["batch_id"]].status not in TERMINAL:
                        latest[r["batch_id"]] = await self._call(
                            f"polling batch {r['batch_id']}, recorded in "
                            f"{self.store.root / 'batches' / 'pending' / (r['name'] + '.json')} (a running batch "
                            "keeps running and a rerun resumes it; one unknown to this server and key is "
                            "submitted again once its record is removed)",
                            self.client.batches.retrieve, r["batch_id"])
                batches = [latest[r["batch_id"]] for r in records]
                counts = [b.request_counts for b in batches if b.request_counts is not None]
                done, failed = sum(c.completed for c in counts), sum(c.failed for c in counts)
                bar.n = min(total, done + failed)
                status = Counter(b.status for b in batches)
                bar.set_postfix(status=",".join(f"{k}:{v}" if len(batches) > 1 else k for k, v in status.items()),
                                completed=done, failed=failed, total=total, refresh=False)
                bar.refresh()
                if all(b.status in TERMINAL for b in batches):
                    return batches
                await asyncio.sleep(self.t.batch_poll_seconds)

    async def _read_back(self, record: dict, batch, want: dict[str, tuple[dict, str]]) -> dict:
        """The batch's answers and failures, for `complete`; the teacher stores the answers as it does live
        ones, and `finish_round` then retires the record (a kill before that reads the batch back again)."""
        if batch.status == "failed":
            errors = [f"{e.code or 'error'}" + (f" (line {e.line})" if e.line else "") + f": {e.message}"
                      for e in ((batch.errors.data or []) if batch.errors else [])]
            self.store.finish_batch({**record, "status": "failed", "errors": errors})
            raise TeacherError(f"batch {batch.id} failed: {'; '.join(errors) or 'no reason given'} "
                               f"(input file {record['input_file_id']})")
        lines = []
        for what, file_id in (("output", batch.output_file_id), ("error", batch.error_file_id)):
            if file_id:
                content = await self._call(f"downloading the {what} file of batch {batch.id}",
                                           self.client.files.content, file_id)
                lines += [(what, line) for line in content.content.splitlines() if line.strip()]
        for what, raw in lines:
            try:
                line = json.loads(raw)
                key = line["custom_id"]
            except (ValueError, KeyError, TypeError, RecursionError):
                raise TeacherError(f"batch {batch.id}: a line of its {what} file is not a batch result: "
                                   f"{raw[:200]!r}") from None
            if key not in want:
                continue  # answered meanwhile (another run), or never ours
            resp = line.get("response") if isinstance(line.get("response"), dict) else {}
            problem = response_problem(resp.get("body"))
            if resp.get("status_code") == 200 and not line.get("error") and problem is None:
                self.answers[key] = (resp["body"], batch.id)
            elif resp.get("status_code") == 200 and not line.get("error"):
                self.stats["malformed_responses"] += 1
                self.failures[key] = RequestFailed(f"batch {batch.id}: malformed answer: {problem}", transient=False)
            else:
                code, message = _error_text(line)
                expired = code in ("batch_expired", "batch_cancelled")
                self.stats["batch_requests_expired" if expired else "batch_requests_failed"] += 1
                self.failures[key] = RequestFailed(f"batch {batch.id}: {message}", transient=False, deferred=expired)
                if code == "insufficient_quota":
                    self.quota = message
        for key in record["custom_ids"]:  # what an expired or cancelled batch never reached
            if key in want and key not in self.answers and key not in self.failures:
                self.stats["batch_requests_expired"] += 1
                self.failures[key] = RequestFailed(f"batch {batch.id} {batch.status} before answering it",
                                                   transient=False, deferred=True)
        # What the store must hold before the record can go, should this run stop before `finish_round`.
        record = {**record, "status": batch.status, "answered": [k for k in record["custom_ids"] if k in self.answers]}
        self.store.put_batch(record)
        return record
