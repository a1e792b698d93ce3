"""Atomic file writing: an interrupted run never leaves a half-written result.

Every writer goes to a temporary file in the same directory and then
``os.replace``s it over the destination, which is atomic on POSIX and Windows.
No torch here: the device half uses these too.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; results should be readable
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]],
              columns: Sequence[str]) -> None:
    """Write dict rows as CSV with a fixed column order (missing keys stay empty)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
    write_text(path, buf.getvalue())


def read_csv(path: str | os.PathLike, *, with_header: bool = False) -> Any:
    """Rows of a CSV file as dicts (and the header, if asked).

    Unreadable, non-UTF-8 and malformed files (a field over csv's size limit, a NUL
    byte) become one-line LegrErrors naming the file and line.
    """
    from legr_edge.errors import LegrError

    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except FileNotFoundError:
        raise LegrError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise LegrError(f"{path}: not UTF-8 text (byte {e.start}); is this a CSV written by legr_edge?") from None
    except csv.Error as e:
        raise LegrError(f"{path}: malformed CSV ({e})") from None
    except OSError as e:
        raise LegrError(f"{path}: unreadable: {e.strerror or e}") from None
    for i, row in enumerate(rows, start=2):
        if None in row:  # more cells than header columns
            raise LegrError(f"{path} line {i}: more cells than the header has columns")
    return (header, rows) if with_header else rows


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10g}"
    return value


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
