"""One writer at a time on an index directory: an exclusive ``flock`` on ``.writer.lock``.

``groco index build``, ``update``, ``merge`` and ``repair`` hold :func:`writer_lock` on the
directory they write for as long as they write it. A second writer stops at once with
:class:`IndexBusyError`, one line naming the process that holds the lock (its pid, the
command, since when). Readers (``groco search``, ``index eval``, the web app) never take
it and are never blocked: they read the state the last writer made current (the
manifest and the index file it names; see :mod:`groco.index.indexfile`).

The lock is the kernel's (``fcntl.flock``): it goes when its process ends, however it ends
(``kill -9`` included), so a crashed writer never leaves the directory locked. The file
itself stays (deleting a lock file races with the next writer opening it); its content,
``pid command start-time`` while held (emptied on release), is only what the message
shows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .manifest import IndexDirError

LOCK_NAME = ".writer.lock"
HOLDER_WAIT_S = 1.0
"""How long a refused writer waits for the holder's line to name it (see :func:`_holder`)."""


class IndexBusyError(IndexDirError):
    """Another process is writing the index directory (one-line message naming it)."""


@contextlib.contextmanager
def writer_lock(index_dir: str | Path, command: str) -> Iterator[None]:
    """Hold the directory's writer lock while the ``with`` body runs (creating the directory).

    ``command`` (e.g. ``"groco index update"``) is recorded for the message another
    writer gets. Raises :class:`IndexBusyError` at once if another process holds it.
    """
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    path = index_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexBusyError(f"{index_dir} is being written by {_holder(fd)}; wait for "
                                 "it to finish (or stop that process) and run this again"
                                 ) from None
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command} {started}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # only a killed holder leaves its line (a dead pid)
    finally:
        os.close(fd)  # releases the lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def _holder(fd: int) -> str:
    """``process 1234 (groco index build, since 2026-...)`` from the lock file's content.

    The holder writes its line just after taking the lock and empties the file before
    letting it go, so a writer that starts at the same moment may read an empty file, or
    the line of a holder killed before (a process that is gone): the file is read again,
    for up to :data:`HOLDER_WAIT_S`, until it names a live process.
    """
    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        except OSError:
            text = ""
        pid, _, rest = text.partition(" ")
        if (pid.isdigit() and _alive(int(pid))) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if not pid.isdigit():
        return "another process"
    command, _, since = rest.rpartition(" ")
    return f"process {pid} ({command or 'groco'}, since {since})" if since else f"process {pid}"
