"""SQLite's errors as an index directory's: a connection whose every call, and every row
read, turns ``sqlite3.Error`` into one line.

A locked or busy database gives :class:`groco.index.manifest.IndexDirError` ("another
process holds it; try again"); a file SQLite cannot read gives
:class:`groco.index.manifest.DamagedFileError` naming it and ``groco index repair``,
never ``sqlite3.DatabaseError``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..manifest import IndexDirError, damaged


def sqlite_error(path: Path, error: sqlite3.Error) -> IndexDirError:
    """One-line error for what SQLite raised on ``path``."""
    message = " ".join(str(error).split())
    if isinstance(error, sqlite3.OperationalError) and ("locked" in message
                                                        or "busy" in message):
        return IndexDirError(f"{path}: {message} (another process holds it); try again")
    if isinstance(error, sqlite3.OperationalError) and "unable to open" in message:
        return IndexDirError(f"{path}: {message}")
    return damaged(path, message, path.parent)


@contextlib.contextmanager
def sqlite_errors(path: Path) -> Iterator[None]:
    """Raise :func:`sqlite_error`'s one line for any ``sqlite3.Error`` inside."""
    try:
        yield
    except sqlite3.Error as error:
        raise sqlite_error(path, error) from error


class Guarded:
    """A ``sqlite3.Connection`` whose errors (on a call or while reading rows) become
    :func:`sqlite_error`'s."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._connection, self._path = connection, path

    def execute(self, sql: str, params: Iterable = ()) -> Rows:
        with sqlite_errors(self._path):
            return Rows(self._connection.execute(sql, tuple(params)), self._path)

    def executemany(self, sql: str, params: Iterable) -> Rows:
        with sqlite_errors(self._path):
            return Rows(self._connection.executemany(sql, params), self._path)

    def executescript(self, sql: str) -> None:
        with sqlite_errors(self._path):
            self._connection.executescript(sql)

    def close(self) -> None:
        self._connection.close()


class Rows:
    """A cursor read under :func:`sqlite_errors` (a damaged page may show up mid-read)."""

    def __init__(self, cursor: sqlite3.Cursor, path: Path) -> None:
        self._cursor, self._path = cursor, path
        self.rowcount = cursor.rowcount

    def fetchone(self) -> tuple | None:
        with sqlite_errors(self._path):
            return self._cursor.fetchone()

    def fetchall(self) -> list[tuple]:
        with sqlite_errors(self._path):
            return self._cursor.fetchall()

    def __iter__(self) -> Iterator[tuple]:
        with sqlite_errors(self._path):
            yield from self._cursor


class Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception)."""

    def __init__(self, db: Guarded) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
