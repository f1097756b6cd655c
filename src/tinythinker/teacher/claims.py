"""Claims on requests across processes: two experiments (`dvc queue start -j 2`, two `dvc exp run` at once) share the
machine's response store, and the first to send a request owns it; the others wait for its answer in the store
instead of buying it again.

A claim is a file `<store>/claims/<key>` created with O_EXCL (atomic on a local file system), holding its owner
(host, pid) and the time. The owner removes it once the answer is stored, or once the request has failed, so a
waiter takes the request over. A claim whose owner is gone (a killed run: the pid is not alive on this host, or
the claim is older than `stale_after` seconds) is taken over too.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path


class Claims:
    def __init__(self, store_root: Path, stale_after: float):
        self.dir = Path(store_root) / "claims"
        self.stale_after = stale_after
        self.host, self.pid = socket.gethostname(), os.getpid()

    def take(self, key: str) -> bool:
        """Claim `key`; False while another live process holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / key
        for _ in range(3):  # a stale claim is moved aside, then the claim is taken anew
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale(path):
                    return False
                try:  # one rename wins when several waiters find the same stale claim
                    os.replace(path, self.dir / f".stale-{key}-{self.pid}-{time.monotonic_ns()}")
                except FileNotFoundError:
                    pass
                for old in self.dir.glob(f".stale-{key}-{self.pid}-*"):
                    old.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": self.host, "pid": self.pid, "time": time.time()}, f)
            return True
        return False

    def release(self, key: str) -> None:
        """Give `key` up (its answer is stored, or the request failed); only a claim of this process."""
        path = self.dir / key
        if self._owner(path) == (self.host, self.pid):
            path.unlink(missing_ok=True)

    def _owner(self, path: Path) -> tuple[str, int] | None:
        try:
            claim = json.loads(path.read_text())
            return claim["host"], claim["pid"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _stale(self, path: Path) -> bool:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        try:
            claim = json.loads(path.read_text())
        except FileNotFoundError:
            return True
        except (OSError, ValueError):  # being written this instant, or unreadable: judged by its age alone
            return age > self.stale_after
        if age > self.stale_after:
            return True
        if claim.get("host") == self.host:
            return not _alive(claim.get("pid"))
        return False


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
