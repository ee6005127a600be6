"""Atomic file writes: a reader never sees a half-written file, a crash never loses the
previous version (write to a temporary file beside the target, fsync, rename)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary file (``.{name}.*.tmp`` in the same folder) is fsynced, renamed onto
    ``path``, and the folder is fsynced so the rename survives a power cut. On an
    exception the temporary file is removed and ``path`` is left untouched; a process
    killed meanwhile leaves only the temporary file (``.*.tmp``), which its owner may
    delete on its next start.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
    fsync_dir(path.parent)


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder (a rename or unlink in it becomes durable); a no-op where the
    platform cannot open folders."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` through :func:`atomic_path`."""
    atomic_write_bytes(path, text.encode("utf-8"))
