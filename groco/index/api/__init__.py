"""The one read API of an index directory: what every client (the web app, ``groco
search``) reads of an index comes from here, so a client imports no other index module.

- :class:`IndexReader`: open an index directory (with its encoder check), search it by
  image, vector or indexed item with a label filter done inside the index, read its
  items, collection pages, label counts, duplicate groups and map;
- the values it returns: :class:`Result` (a neighbour), :class:`FileRow` (an item's
  metadata; ``status == EMBEDDED`` for a searchable one), :class:`Page`,
  :class:`DuplicateGroup` / :class:`DuplicateScan`, :class:`MapData`;
- :class:`Collection` (the paging of ids, for a client that lists its own) and
  :data:`ORDERS`, :data:`DEFAULT_THRESHOLD`;
- the errors an open or a read raises beyond ``ValueError``/``KeyError``:
  :class:`IndexDirError`, :class:`IndexMismatchError` (both ``ValueError``).
"""

from ..dupes import DEFAULT_THRESHOLD, DuplicateGroup, DuplicateScan
from ..manifest import IndexDirError, IndexMismatchError
from ..map import MapData
from ..search import Result
from ..store import EMBEDDED, FileRow
from .pages import ORDERS, Collection, Page
from .reader import IndexReader

__all__ = [
    "DEFAULT_THRESHOLD", "EMBEDDED", "ORDERS", "Collection", "DuplicateGroup", "DuplicateScan",
    "FileRow", "IndexDirError", "IndexMismatchError", "IndexReader", "MapData", "Page",
    "Result",
]
