"""Append-only journal of teacher responses: paid for once, kept forever, keyed by a hash of the request.

One JSON line per answered request, ``{"key", "body", "response"}``, appended and fsync'd as the response
arrives. A process killed mid-write leaves at most one torn last line; the next open drops it (that one
request is asked again) so later appends start on a clean line.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Optional

from .io import DataError


def request_key(body: dict, salt: str = "") -> str:
    """sha256 of the canonical JSON body; `salt` tells apart bodies that must legitimately be re-asked
    (the same request in a later round, or the n single-sample repeats of one request)."""
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{salt}\n{canonical}".encode()).hexdigest()


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, dict] = {}
        if self.path.exists():
            self._detach()
            self._load()
        self._fh = self.path.open("a", encoding="utf-8")

    def _detach(self) -> None:
        # A checkout from the DVC cache may be a link into it; appending would then corrupt the cache.
        if self.path.is_symlink() or self.path.stat().st_nlink > 1:
            tmp = self.path.with_name(self.path.name + ".detach")
            shutil.copyfile(self.path, tmp)
            os.replace(tmp, self.path)

    def _load(self) -> None:
        raw = self.path.read_bytes()
        cut = raw.rfind(b"\n") + 1
        tail = raw[cut:]
        if tail.strip():
            try:  # a complete entry whose newline never reached the disk is still a paid response
                json.loads(tail)
                tail += b"\n"
            except ValueError:
                tail = b""
            with self.path.open("r+b") as f:
                f.truncate(cut)
                f.seek(cut)
                f.write(tail)
                f.flush()
                os.fsync(f.fileno())
            raw = raw[:cut] + tail
        for lineno, line in enumerate(raw.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                self._entries[entry["key"]] = entry
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{self.path}:{lineno}: not a journal entry; the journal is append-only, "
                                "restore it from the DVC remote or remove the line") from None

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[dict]:
        return iter(self._entries.values())

    def get(self, key: str) -> Optional[dict[str, Any]]:
        entry = self._entries.get(key)
        return entry["response"] if entry else None

    def put(self, key: str, body: dict, response: dict) -> None:
        entry = {"key": key, "body": body, "response": response}
        # One write call per line: a kill can tear only this line, never interleave two.
        self._fh.write(json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._entries[key] = entry

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
