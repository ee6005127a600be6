"""Reading rows back from a damaged ``meta.sqlite`` (``groco index repair``, step 1).

Three ways, each returning what it could read and never raising on damage:

- :func:`recover_with_shell`: the ``sqlite3`` shell's ``.recover`` into a new database,
  where that program is installed and works;
- :func:`read_back`: the ``info`` table and the ``files`` rows by id ranges through
  Python's ``sqlite3`` (a range whose pages are unreadable is retried id by id, then
  skipped);
- :func:`with_new_header`: a copy whose 100-byte header (destroyed: "file is not a
  database") is that of a new empty database, for :func:`read_back` to read again.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
from pathlib import Path

from .schema import COLUMNS

SALVAGE_CHUNK = 256
"""Ids read per query by :func:`read_back` (a failing range is retried id by id)."""
RECOVER_TIMEOUT_S = 600


def recover_with_shell(damaged_db: Path, scratch: Path) -> bool:
    """``sqlite3 damaged_db .recover | sqlite3 scratch``; False when it cannot run."""
    program = shutil.which("sqlite3")
    if program is None:
        return False
    try:
        dump = subprocess.run([program, str(damaged_db), ".recover"], capture_output=True,
                              timeout=RECOVER_TIMEOUT_S, check=False)
        if dump.returncode != 0 or not dump.stdout:
            return False
        load = subprocess.run([program, str(scratch)], input=dump.stdout,
                              capture_output=True, timeout=RECOVER_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return load.returncode == 0 and scratch.is_file()


def read_back(source: Path, top_id: int) -> tuple[dict[str, str], list[tuple]]:
    """``(info, files rows)`` read from ``source`` by id ranges up to ``top_id`` (or the
    largest id it still tells), skipping unreadable ones; rows are tuples in the column
    order of :class:`groco.index.store.FileRow`."""
    info: dict[str, str] = {}
    rows: list[tuple] = []
    try:
        db = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    except sqlite3.Error:
        return info, rows
    with contextlib.closing(db):
        with contextlib.suppress(sqlite3.Error):
            info = {str(k): str(v) for k, v in db.execute("SELECT key, value FROM info")}
        with contextlib.suppress(sqlite3.Error, TypeError):
            top_id = max(top_id, int(db.execute("SELECT MAX(id) FROM files").fetchone()[0]))
        query = f"SELECT {COLUMNS} FROM files WHERE id BETWEEN ? AND ?"
        for start in range(0, top_id + 1, SALVAGE_CHUNK):
            try:
                rows.extend(db.execute(query, (start, start + SALVAGE_CHUNK - 1)).fetchall())
            except sqlite3.Error:
                for i in range(start, start + SALVAGE_CHUNK):
                    with contextlib.suppress(sqlite3.Error):
                        rows.extend(db.execute(query, (i, i)).fetchall())
    return info, rows


def with_new_header(damaged_db: Path, copy: Path, page_size: int) -> bool:
    """Copy ``damaged_db`` to ``copy`` with the 100-byte SQLite header of a new empty
    database of ``page_size`` (database size set from the file size); False if the
    file's size is not a multiple of the page size."""
    size = damaged_db.stat().st_size
    if size < page_size or size % page_size:
        return False
    template = copy.with_suffix(".template")
    with contextlib.closing(sqlite3.connect(template)) as db:
        db.execute(f"PRAGMA page_size = {int(page_size)}")
        db.execute("CREATE TABLE t (x)")
        db.commit()
    header = bytearray(template.read_bytes()[:100])
    header[28:32] = (size // page_size).to_bytes(4, "big")  # the "in-header database size"
    shutil.copyfile(damaged_db, copy)
    with open(copy, "r+b") as f:
        f.write(header)
    return True
