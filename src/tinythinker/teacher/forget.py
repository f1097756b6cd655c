"""`tinythinker forget-answers`: forget the teacher answers of this request set that gave no valid completion.

Answers are kept forever so that none is paid twice; the price is that a teacher which once answered badly
(a wrong model, a server answering "I am not sure." to everything) keeps serving those answers from the response
store and the journal after it is fixed. This forgets them, and only them: answers of this request set (same
server, model and messages) none of whose completions passes the checks of spec 3.3 (`parse`). The next run of
the request stage asks for them anew. `--dry-run` says what would go and what it cost.
"""
from __future__ import annotations

import json

from ..io import write_text
from ..params import Params
from ..paths import Paths, store_dir
from .backend import origin
from .cost import _usd, signature
from .parse import completions, count_valid
from .prompts import read_requests
from .store import ResponseStore, read_journal


def forget_rejected(params: Params, paths: Paths, dry_run: bool = False) -> dict:
    """Find (and unless `dry_run`, remove from the response store and the journal) the answers of this request set
    that gave no valid completion; return what was found."""
    requests = {signature(r["body"]): r for r in read_requests(paths)}
    who = origin(params)
    store = ResponseStore(store_dir()) if params.teacher.backend != "offline" else None
    journal = read_journal(paths.journal)
    entries = {e["key"]: e for e in (store.entries() if store is not None else ())} | journal
    mine = {k: e for k, e in entries.items()
            if e.get("origin") == who and isinstance(e.get("body"), dict) and signature(e["body"]) in requests}
    rejected = {k: e for k, e in mine.items()
                if not count_valid(completions(e["response"]), requests[signature(e["body"])]["options"])[0]}
    found = {"answers": len(mine), "rejected": len(rejected),
             "usd": round(sum(_usd(e, params.teacher.price) for e in rejected.values()), 4),
             "forgotten": 0, "dry_run": dry_run}
    if dry_run or not rejected:
        return found
    if store is not None:
        for key in rejected:
            store.forget(key)
    if paths.journal.exists():  # rewritten whole (it may be a link into the DVC cache: never edited in place)
        lines = paths.journal.read_text(encoding="utf-8").splitlines(keepends=True)
        write_text(paths.journal, "".join(line for line in lines if _key(line) not in rejected))
    found["forgotten"] = len(rejected)
    return found


def _key(line: str):
    try:
        return json.loads(line).get("key")
    except (ValueError, AttributeError):
        return None


def describe(found: dict) -> str:
    what = "would forget" if found["dry_run"] else "forgot"
    n = found["rejected"] if found["dry_run"] else found["forgotten"]
    return (f"{found['answers']} answers of this request set in the response store and the journal; "
            f"{found['rejected']} gave no valid completion (${found['usd']:.4f} paid for them); {what} {n}"
            + ("; the next `dvc repro` asks for them anew" if n and not found["dry_run"] else ""))
