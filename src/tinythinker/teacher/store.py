"""Where paid teacher responses live: the machine's response store and the workspace journal.

Both hold entries ``{"key", "origin", "round", "body", "response"}``, keyed by `request_key`.

The **store** (`ResponseStore`, outside every workspace, `paths.store_dir()`) is written first: a response
that reached it outlives anything that happens to the workspace (a failed `dvc exp run --temp` or queued run,
whose temporary copy is deleted; a `git checkout -- . && dvc checkout` that rolls the journal back).

The **journal** (`data/teacher/journal.jsonl`) is the DVC-tracked copy of the responses one run used, which
`dvc push` shares: one JSON line per response, appended and fsync'd as it arrives. A process killed
mid-write leaves at most one torn last line; the next open drops it (that request is then found in the
store, or asked again) so later appends start on a clean line.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

from ..io import DataError, naming


def request_key(body: dict, salt: str = "", origin: str = "") -> str:
    """sha256 of what makes an answer: who answers (`origin`: backend and server), the canonical JSON body
    (model included), and `salt`, which tells apart bodies that must legitimately be re-asked (the same
    request in a later round, or the n single-sample repeats of one request)."""
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    who = f"{origin}\n" if origin else ""  # without an origin: the key of journals before origins were keyed
    return hashlib.sha256(f"{who}{salt}\n{canonical}".encode()).hexdigest()


def _line(entry: dict) -> bytes:
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class ResponseStore:
    """One file per response, ``<root>/<key[:2]>/<key>.json``, written whole and fsync'd, then hard-linked
    into place. A record is complete or absent, concurrent writers (two queued experiments) cannot corrupt
    each other, the first answer stored for a key is never replaced, and a lookup reads one small file
    rather than a store that grows with every experiment ever run on the machine."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def __contains__(self, key: str) -> bool:
        return self._path(key).exists()  # a stat, not a read: checked for every journal entry of every run

    def get(self, key: str) -> Optional[dict]:
        try:
            entry = json.loads(self._path(key).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError):  # unreadable (a disk fault, a hand edit): absent, replaced
            # by the next answer
            return None
        ok = isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("response"), dict)
        return entry if ok else None

    def entries(self) -> Iterator[dict]:
        """Every readable response in the store, in no particular order: a read of every file, for what a request
        set has cost in all (cost.paid_for), once per run."""
        for path in self.root.glob("??/*.json"):
            entry = self.get(path.stem)
            if entry is not None:
                yield entry

    def forget(self, key: str) -> None:
        """Remove the answer to `key` (forget.py: an answer that gave no valid completion)."""
        self._path(key).unlink(missing_ok=True)

    def put(self, entry: dict) -> dict:
        """Store `entry` unless the key already holds an answer; return the entry the store keeps."""
        path = self._path(entry["key"])
        if _durable(path, _line(entry), replace=False):
            return entry
        kept = self.get(entry["key"])
        if kept is not None:
            return kept
        _durable(path, _line(entry))  # what was there is unreadable (see `get`): this answer replaces it
        return entry

    # Batches (batch.py): a record per submitted Batch API batch, written before the batch is polled, so that a
    # stage killed while a batch runs resumes it rather than paying for the same requests again. A record is
    # pending (`batches/pending/<name>.json`, name = the input file's sha256) until its answers are in this
    # store, then moved to `batches/done/` as the history of what was submitted. Unlike responses a record
    # changes (uploaded, then submitted), so it is replaced, still whole and fsync'd.
    def _batch_path(self, name: str, done: bool = False) -> Path:
        return self.root / "batches" / ("done" if done else "pending") / f"{name}.json"

    def put_batch(self, record: dict) -> None:
        _durable(self._batch_path(record["name"]), _line(record))

    def pending_batches(self) -> list[dict]:
        """Every pending record, oldest first; one that cannot be read is an error naming its file, since a
        silently skipped record could mean paying for a running batch twice."""
        records = []
        for path in sorted((self.root / "batches" / "pending").glob("*.json")):
            try:
                record = json.loads(path.read_bytes())
                ok = isinstance(record, dict) and {"name", "origin", "custom_ids", "input_file_id"} <= record.keys()
            except (ValueError, RecursionError):
                ok = False
            if not ok:
                raise DataError(f"{path}: not a batch record; look the batch up on the server (its input file "
                                "is the one named in the record) and remove the file")
            records.append(record)
        return sorted(records, key=lambda r: r.get("created", 0))

    def finish_batch(self, record: dict) -> None:
        """Move a record to the history once every answer of its batch is stored (or it can give none)."""
        name = f"{record['name']}-{record['batch_id']}" if record.get("batch_id") else record["name"]
        _durable(self._batch_path(name, done=True), _line(record))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._batch_path(record["name"]))


def _durable(path: Path, data: bytes, replace: bool = True) -> bool:
    """Write `data` whole to `path`, fsync'd, then renamed (`replace`) or hard-linked (never replacing) into
    place; the directory is fsync'd so the name itself survives a power cut. False: `path` existed and was
    kept (only without `replace`). An OSError (a full disk, a directory in the way) names `path`."""
    with naming(path, str(path.parent / ".")):
        return _write_durable(path, data, replace)


def _write_durable(path: Path, data: bytes, replace: bool) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic and never replacing: two processes answered at once, the first stays
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links
                os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return True


def read_journal(path: str | Path) -> dict[str, dict]:
    """The journal's entries by key, read only (a torn or unreadable line is skipped, nothing is repaired or
    written): for `tinythinker request --dry-run`."""
    entries: dict[str, dict] = {}
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return entries
    for line in raw.split(b"\n"):
        try:
            entry = json.loads(line)
            entries[entry["key"]] = entry
        except (ValueError, KeyError, TypeError, RecursionError):
            pass
    return entries


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, dict] = {}
        if self.path.exists():
            self._detach()
            self._load()
        self._fh = self.path.open("ab")

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
            except (ValueError, RecursionError):
                tail = b""
            with self.path.open("r+b") as f:
                f.truncate(cut)
                f.seek(cut)
                f.write(tail)
                f.flush()
                os.fsync(f.fileno())
            raw = raw[:cut] + tail
        for lineno, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                self._entries[entry["key"]] = entry
            except (ValueError, KeyError, TypeError, RecursionError):
                raise DataError(f"{self.path}:{lineno}: not a journal entry; the journal is append-only, "
                                "restore it from the DVC remote or remove the line") from None

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[dict]:
        return iter(list(self._entries.values()))

    def get(self, key: str) -> Optional[dict]:
        return self._entries.get(key)

    def put(self, entry: dict) -> None:
        # One write call per line: a kill can tear only this line, never interleave two.
        self._fh.write(_line(entry))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._entries[entry["key"]] = entry

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
