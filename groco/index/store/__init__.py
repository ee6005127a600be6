"""The metadata of an index directory: one SQLite file, ``meta.sqlite`` (WAL mode), and the
one home of every SQL statement groco runs on it.

- :mod:`.schema`: the tables (``files``, ``retired``, ``info``) and the rows read from them;
- :mod:`.database`: :class:`Store`, an open database and its queries;
- :mod:`.guard`: SQLite's errors as one-line :class:`groco.index.manifest.DamagedFileError`
  / :class:`groco.index.manifest.IndexDirError`, never ``sqlite3.DatabaseError``;
- :mod:`.salvage`: rows read back from a damaged file (``groco index repair``).

No torch here (nothing under ``groco.index`` imports it).
"""

from .database import Store, nothing_stored
from .salvage import read_back, recover_with_shell, with_new_header
from .schema import BROKEN, DB_NAME, EMBEDDED, FileRow, FileState

__all__ = ["BROKEN", "DB_NAME", "EMBEDDED", "FileRow", "FileState", "Store", "nothing_stored",
           "read_back", "recover_with_shell", "with_new_header"]
