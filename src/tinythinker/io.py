"""Atomic writes and line-checked reads: a killed stage never leaves a half-written output behind."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, Union

# What a row must hold: the field names, or the names with their JSON types (str, list, dict, ...).
Fields = Union[Sequence[str], Mapping[str, type]]


class DataError(ValueError):
    """Bad input data; the message names the file and, where there is one, the line."""


class Interrupted(Exception):
    """A stage stopped on a signal after putting what it had away; exits with `code` (128 + the signal)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


@contextlib.contextmanager
def naming(path: Path, temporaries: str) -> Iterator[None]:
    """An OSError that names no file (disk full does not) or a temporary of `path` is re-raised naming `path`."""
    try:
        yield
    except OSError as e:
        if (e.filename is None or str(e.filename).startswith(temporaries)
                or str(e.filename2 or "").startswith(temporaries)):  # a rename from or into a temporary
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `path` (file or directory) whole.

    A directory is swapped in two renames: the old one aside into the temporary directory, the new one in, then
    the old one deleted; a failure between them puts the old one back. What a killed earlier write of `path` left
    behind is put right first: an old directory still aside (the kill fell between the renames) goes back into
    place, temporaries are removed. An OSError (permission denied, disk full) names `path`, not the temporary.
    """
    path = Path(path)
    prefix = f".{path.name}.tmp-"
    with naming(path, str(path.parent / prefix)):
        clear_leftovers(path)
        tmp_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    try:
        with naming(path, str(path.parent / prefix)):
            tmp = tmp_dir / f"out{suffix}"
            yield tmp
            if path.is_dir() and not path.is_symlink():
                os.replace(path, tmp_dir / "old")
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(tmp_dir / "old", path)
                    raise
            else:
                os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if tmp_dir.exists():  # a file it could not remove: said now, and removed by the next write of `path`
            print(f"warning: could not remove all of {tmp_dir}; the next write of {path} removes it",
                  file=sys.stderr)


def clear_leftovers(path: str | Path) -> None:
    """Put right what a killed or failed earlier write of `path` left beside it: an old directory still aside
    (the kill fell between the renames) goes back into place, temporaries are removed. A stage that writes a
    directory calls it first, so leftovers go even when the stage then fails before writing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in sorted(path.parent.glob(glob.escape(f".{path.name}.tmp-") + "*")):
        if (stale / "old").exists() and not path.exists():
            os.replace(stale / "old", path)
        shutil.rmtree(stale)


def replace_dir(src: Path, dest: Path) -> None:
    """The directory `src` takes the place of `dest` whole (atomic_path's swap); `src` is gone after."""
    with atomic_path(dest) as tmp:
        shutil.move(str(src), tmp)


def describe_os_error(e: OSError) -> str:
    """One line for an OSError: the path first, then what the system said (`data/sft: No space left on device`)."""
    if e.filename is None:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    target = f" -> {e.filename2}" if e.filename2 is not None else ""
    return f"{e.filename}{target}: {e.strerror or e}"


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_text(path: str | Path, error: type[Exception] = DataError, what: str = "file") -> str:
    """A UTF-8 text file; a missing file or a byte that is not UTF-8 raises `error` naming the path (and line)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a {what}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x})") from None


def read_yaml(path: str | Path, error: type[Exception] = DataError, what: str = "file") -> Any:
    """Parsed YAML, read as DVC reads params.yaml (ruamel.yaml, YAML 1.2: `010` is 10, `yes` is a string,
    a repeated key is an error), so the value a stage runs with is the value `dvc params diff` shows."""
    from ruamel.yaml import YAML, YAMLError

    text = read_text(path, error, what)
    try:
        return YAML(typ="safe").load(text)
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{where}: not valid YAML: {problem}") from None


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deep to read") from None


def iter_jsonl(path: str | Path, fields: Fields = ()) -> Iterator[tuple[int, Any]]:
    """(line number, object) for each non-blank line; a line that is not UTF-8, not JSON, or (with `fields`)
    not an object holding every one of `fields` (of its type, when `fields` maps names to types) raises DataError
    naming the file, the line and the field."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON: {e.msg}") from None
            except RecursionError:
                raise DataError(f"{path}:{lineno}: JSON nested too deep to read") from None
            if fields:
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                missing = [k for k in fields if k not in obj]
                if missing:
                    raise DataError(f"{path}:{lineno}: missing field {', '.join(map(repr, missing))}")
                for k, kind in (fields.items() if isinstance(fields, Mapping) else ()):
                    if not isinstance(obj[k], kind) or isinstance(obj[k], bool) and kind is not bool:
                        raise DataError(f"{path}:{lineno}: field {k!r} must be a JSON {_JSON[kind]}, "
                                        f"not {json.dumps(obj[k])[:40]}")
            yield lineno, obj


_JSON = {str: "string", list: "array", dict: "object", int: "integer", float: "number", bool: "boolean"}


def read_jsonl(path: str | Path, fields: Fields = ()) -> list[Any]:
    return [obj for _, obj in iter_jsonl(path, fields)]
