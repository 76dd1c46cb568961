"""Atomic writes: a file is written under a temporary name in its own folder, then renamed onto its name, so a
reader never sees half a file; if writing fails (a full disk, a kill between the two steps) the temporary file is
removed and the old file, if any, is kept. Every writer of the package goes through `atomic_path`.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (its folder is created); on a clean exit it is renamed onto `path`,
    on an error it is removed and the error goes on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path, data: bytes, fsync: bool = False) -> Path:
    """`data` into `path`, atomically; `fsync`: on disk before the rename (a record that must survive a crash)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_text(path, text: str, fsync: bool = False) -> Path:
    return write_bytes(path, text.encode(), fsync)


def write_json(path, obj, indent: int | None = 1, fsync: bool = False) -> Path:
    """`obj` as JSON (and a final newline) into `path`, atomically."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n", fsync)
