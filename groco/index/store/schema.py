"""The tables of ``meta.sqlite``, as SQL, and the rows read from them.

Table ``files`` holds one row per image file seen under the images root:

    id        INTEGER PRIMARY KEY   the FAISS id of the file's embedding
    path      TEXT UNIQUE           POSIX path relative to the images root
    size      INTEGER               bytes, from the file's ``stat``
    mtime_ns  INTEGER               modification time in ns, from the file's ``stat``
    hash      TEXT                  blake2b (8-byte digest, 16 hex) of the bytes; '' if unread
    label     TEXT                  first subfolder under the root (NULL directly in it)
    status    TEXT                  'embedded' | 'broken'
    shard     INTEGER               embedded: number of the shard file holding the vector
    shard_row INTEGER               embedded: row of the vector in that shard
    error     TEXT                  broken: the one-line reason

Table ``retired`` holds the rows an update deleted (same columns, plus ``retired_at``, the
generation they left at), for as long as an index file that still holds their vectors
may be searched: a reader of the previous index state resolves its ids through them, so
it answers at that state while an update runs. They are purged once the state after the
next one is current (:meth:`groco.index.store.Store.purge_retired`).

Table ``info`` holds key/value facts of the directory (images root, encoder hash, the
slice of a sharded build, a ``generation`` counter bumped by every commit that changes
``files``, so a reader can tell whether ``index.faiss`` is behind the metadata).
"""

from __future__ import annotations

from dataclasses import dataclass

DB_NAME = "meta.sqlite"
EMBEDDED, BROKEN = "embedded", "broken"

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id        INTEGER PRIMARY KEY,
    path      TEXT NOT NULL UNIQUE,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    hash      TEXT NOT NULL,
    label     TEXT,
    status    TEXT NOT NULL CHECK (status IN ('embedded', 'broken')),
    shard     INTEGER,
    shard_row INTEGER,
    error     TEXT,
    CHECK ((status = 'embedded') = (shard IS NOT NULL AND shard_row IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS files_shard ON files (shard);
CREATE TABLE IF NOT EXISTS retired (
    id         INTEGER PRIMARY KEY,
    path       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    hash       TEXT NOT NULL,
    label      TEXT,
    status     TEXT NOT NULL,
    shard      INTEGER,
    shard_row  INTEGER,
    error      TEXT,
    retired_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
COLUMNS = "id, path, size, mtime_ns, hash, label, status, shard, shard_row, error"


@dataclass(frozen=True)
class FileRow:
    """One row of ``files`` (see the module docstring for the columns)."""

    id: int
    path: str
    size: int
    mtime_ns: int
    hash: str
    label: str | None
    status: str
    shard: int | None = None
    shard_row: int | None = None
    error: str | None = None

    def as_tuple(self) -> tuple:
        return (self.id, self.path, self.size, self.mtime_ns, self.hash, self.label,
                self.status, self.shard, self.shard_row, self.error)


@dataclass(frozen=True)
class FileState:
    """What change detection needs of a recorded file."""

    id: int
    size: int
    mtime_ns: int
    hash: str
    status: str

