"""An open ``meta.sqlite``: :class:`Store`, whose methods are every query a build, an
update, a merge, a search and a repair run on it (the SQL of the schema:
:mod:`groco.index.store.schema`).

Writes go through :meth:`Store.commit`, one transaction per embedding shard: the shard
file is written (atomically) *before* the rows that reference it are committed, which
is what makes a build resumable after ``kill -9`` (see :mod:`groco.index.pipeline`).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..manifest import DamagedFileError, damaged
from .guard import Guarded, Transaction, sqlite_errors
from .schema import COLUMNS, SCHEMA, FileRow, FileState


class Store:
    """An open ``meta.sqlite`` (created with its schema if missing).

    One connection, usable from several threads in turn (``check_same_thread=False``;
    callers serialise access, e.g. :class:`groco.index.search.Searcher` holds a lock).
    ``readonly=True`` opens an existing file without creating or migrating anything.
    """

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly and not self.path.is_file():
            raise FileNotFoundError(f"no metadata database at {self.path}")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite_errors(self.path):
            connection = sqlite3.connect(self.path, check_same_thread=False,
                                         isolation_level=None)
        self._db = Guarded(connection, self.path)
        try:
            if readonly:
                self._db.execute("PRAGMA query_only = ON")
            else:
                self._db.execute("PRAGMA journal_mode = WAL")
                # NORMAL: a commit survives a killed process (WAL is in the OS cache); on a
                # power cut the last commits may be lost, which leaves shard files that no
                # row references: they are deleted and re-embedded, never duplicated.
                self._db.execute("PRAGMA synchronous = NORMAL")
                self._db.executescript(SCHEMA)
            tables = {name for (name,) in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except BaseException:
            connection.close()
            raise
        if "files" not in tables or "info" not in tables:
            connection.close()
            raise damaged(self.path, "not a groco metadata database (no files/info table)",
                          self.path.parent)
        self._has_retired = "retired" in tables  # not in directories of older versions

    # -- lifecycle

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- info

    def get_info(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM info WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def info(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM info"))

    def set_info(self, values: dict[str, object]) -> None:
        """Set several ``info`` entries in one transaction (values stored as strings)."""
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO info (key, value) VALUES (?, ?)",
                                 [(k, str(v)) for k, v in values.items()])

    @property
    def generation(self) -> int:
        """Bumped by every commit that changes ``files``."""
        return int(self.get_info("generation", "0") or 0)

    # -- writing

    def _transaction(self):
        return Transaction(self._db)

    def commit(
        self,
        insert: Iterable[FileRow] = (),
        delete_ids: Iterable[int] = (),
        touch: Iterable[tuple[int, int, int]] = (),
    ) -> None:
        """One transaction: delete ``delete_ids``, insert ``insert``, and set new
        ``(size, mtime_ns)`` on unchanged-content rows given as ``(id, size, mtime_ns)``;
        bump ``generation`` if anything changed."""
        rows = [r.as_tuple() for r in insert]
        deletes = [(int(i),) for i in delete_ids]
        touches = [(int(s), int(m), int(i)) for i, s, m in touch]
        if not (rows or deletes or touches):
            return
        with self._transaction():
            self._retire("id = ?", deletes)
            self._db.executemany("DELETE FROM files WHERE id = ?", deletes)
            self._db.executemany(f"INSERT INTO files ({COLUMNS}) VALUES "
                                 "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.executemany("UPDATE files SET size = ?, mtime_ns = ? WHERE id = ?",
                                 touches)
            if rows:
                top = max(r[0] for r in rows) + 1
                self._db.execute(
                    "INSERT INTO info (key, value) VALUES ('next_id', ?) ON CONFLICT(key) "
                    "DO UPDATE SET value = CAST(MAX(CAST(value AS INTEGER), "
                    "CAST(excluded.value AS INTEGER)) AS TEXT)", (str(top),))
            self._bump()

    def delete_shards(self, shards: Iterable[int]) -> int:
        """Delete the rows stored in ``shards``; returns how many went."""
        numbers = [(int(s),) for s in shards]
        if not numbers:
            return 0
        with self._transaction():
            before = self.count()
            self._retire("shard = ?", numbers)
            self._db.executemany("DELETE FROM files WHERE shard = ?", numbers)
            gone = before - self.count()
            if gone:
                self._bump()
        return gone

    def _retire(self, where: str, params: list[tuple[int]]) -> None:
        """Copy the ``files`` rows matching ``where`` into ``retired`` (inside a transaction)."""
        generation = self.generation
        self._db.executemany(
            f"INSERT OR REPLACE INTO retired ({COLUMNS}, retired_at) "
            f"SELECT {COLUMNS}, {generation} FROM files WHERE {where}", params)

    def purge_retired(self, before_generation: int) -> int:
        """Forget the retired rows that left before ``before_generation``; returns how many."""
        with self._transaction():
            cursor = self._db.execute("DELETE FROM retired WHERE retired_at < ?",
                                      (int(before_generation),))
        return cursor.rowcount

    def integrity_errors(self) -> list[str]:
        """SQLite's ``PRAGMA quick_check`` messages; empty when the file is sound."""
        messages = [m for (m,) in self._db.execute("PRAGMA quick_check")]
        return [] if messages == ["ok"] else messages

    def _bump(self) -> None:
        self._db.execute(
            "INSERT INTO info (key, value) VALUES ('generation', '1') ON CONFLICT(key) "
            "DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)")

    # -- reading

    def count(self, status: str | None = None) -> int:
        if status is None:
            return self._db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM files WHERE status = ?",
                                (status,)).fetchone()[0]

    def next_id(self) -> int:
        """The first id never used: ids of deleted rows are not given out again (a stale
        ``index.faiss`` may still hold them)."""
        top = self._db.execute("SELECT COALESCE(MAX(id) + 1, 0) FROM files").fetchone()[0]
        return max(top, int(self.get_info("next_id", "0") or 0))

    def referenced_shards(self) -> dict[int, int]:
        """``{shard number: number of rows in it}`` over embedded rows, retired ones included
        (a reader of the previous index state may still read their vectors)."""
        retired = ("UNION ALL SELECT shard FROM retired WHERE shard IS NOT NULL"
                   if self._has_retired else "")
        return dict(self._db.execute(
            f"SELECT shard, COUNT(*) FROM (SELECT shard FROM files WHERE shard IS NOT NULL "
            f"{retired}) GROUP BY shard"))

    def paths(self) -> set[str]:
        return {p for (p,) in self._db.execute("SELECT path FROM files")}

    def states(self) -> dict[str, FileState]:
        """``{path: FileState}`` of every row, for change detection."""
        return {p: FileState(i, s, m, h, st) for i, p, s, m, h, st in self._db.execute(
            "SELECT id, path, size, mtime_ns, hash, status FROM files")}

    def embedded_locations(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, shards, shard_rows)`` of every embedded row, ordered by id (int64)."""
        rows = self._db.execute("SELECT id, shard, shard_row FROM files "
                                "WHERE status = 'embedded' ORDER BY id").fetchall()
        table = np.array(rows, dtype=np.int64).reshape(-1, 3)
        return table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy()

    def rows(self, ids: Iterable[int]) -> dict[int, FileRow]:
        """``{id: FileRow}`` for those of ``ids`` that exist, in ``files`` or else among the
        retired rows (the ids of an index state an update is replacing)."""
        wanted = [int(i) for i in ids]
        out: dict[int, FileRow] = {}
        for table in ("files", "retired") if self._has_retired else ("files",):
            missing = [i for i in wanted if i not in out]
            for start in range(0, len(missing), 500):
                chunk = missing[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for values in self._db.execute(
                        f"SELECT {COLUMNS} FROM {table} WHERE id IN ({marks})", chunk):
                    out[values[0]] = FileRow(*values)
        return out

    def row_by_path(self, path: str) -> FileRow | None:
        values = self._db.execute(f"SELECT {COLUMNS} FROM files WHERE path = ?",
                                  (path,)).fetchone()
        return None if values is None else FileRow(*values)

    def iter_rows(self, status: str | None = None) -> Iterator[FileRow]:
        """Every row (optionally of one status), ordered by id."""
        if status is None:
            cursor = self._db.execute(f"SELECT {COLUMNS} FROM files ORDER BY id")
        else:
            cursor = self._db.execute(f"SELECT {COLUMNS} FROM files WHERE status = ? "
                                      "ORDER BY id", (status,))
        for values in cursor:
            yield FileRow(*values)

    def same_hash_ids(self) -> list[list[int]]:
        """The ids of embedded rows sharing a content hash (byte-identical files), one
        sorted list per hash held by two or more rows; rows without a hash are left out."""
        groups = self._db.execute(
            "SELECT GROUP_CONCAT(id) FROM files WHERE status = 'embedded' AND hash != '' "
            "GROUP BY hash HAVING COUNT(*) > 1")
        return [sorted(int(i) for i in ids.split(",")) for (ids,) in groups]

    def count_unhashed(self) -> int:
        """Embedded rows without a content hash (none from groco's builds, which hash every
        file they read)."""
        return self._db.execute("SELECT COUNT(*) FROM files WHERE status = 'embedded' AND "
                                "hash = ''").fetchone()[0]

    def labels(self, ids: np.ndarray) -> list[str | None]:
        """The label of each id in ``ids`` (``None`` for an unknown id or no label)."""
        found = {i: r.label for i, r in self.rows(ids.tolist()).items()}
        return [found.get(int(i)) for i in ids]


def nothing_stored(db: Path) -> bool:
    """True when ``db`` holds nothing a build or merge wrote: a process killed while it
    created the database left it without its tables, or without any info or row."""
    try:
        with Store(db, readonly=True) as store:
            return not store.info() and store.count() == 0
    except DamagedFileError:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as db_:
                return db_.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
        except sqlite3.Error:
            return False
