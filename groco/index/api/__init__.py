"""The one read API of an index directory: what every client (the web app, ``groco
search``) reads of an index comes from here, so a client imports no other index module.

- :class:`IndexReader`: open an index directory (with its encoder check), search it by
  image, vector or indexed item with a label filter done inside the index, read its
  items, collection pages, label counts, duplicate groups and map;
- :class:`ShardUnion`: several index directories built with one encoder, searched as one;
- the values it returns: :class:`Result` (a neighbour), :class:`FileRow` (an item's
  metadata; ``status == EMBEDDED`` for a searchable one), :class:`Page`,
  :class:`DuplicateGroup` / :class:`DuplicateScan`, :class:`MapData`;
- curation: :class:`CuratedFile`, :class:`SampleReport`, the review list's
  :class:`ReviewEntry`, :data:`KEEP_RULES`, :func:`review_csv`, the outlier
  :data:`SCORES` and :data:`DEFAULT_SCORE`;
- :class:`Collection` (the paging of ids, for a client that lists its own) and
  :data:`ORDERS`, :data:`DEFAULT_THRESHOLD`;
- the errors an open or a read raises beyond ``ValueError``/``KeyError``:
  :class:`IndexDirError`, :class:`IndexMismatchError` (both ``ValueError``).
"""

from ..curate import DEFAULT_SCORE, SCORES, CuratedFile, SampleReport
from ..curate.review import KEEP_RULES, ReviewEntry, review_csv
from ..dupes import DEFAULT_THRESHOLD, DuplicateGroup, DuplicateScan
from ..manifest import IndexDirError, IndexMismatchError
from ..map import MapData
from ..search import Result
from ..store import EMBEDDED, FileRow
from .pages import ORDERS, Collection, Page
from .reader import IndexReader
from .union import ID_STRIDE, ShardUnion

__all__ = [
    "DEFAULT_SCORE", "DEFAULT_THRESHOLD", "EMBEDDED", "ID_STRIDE", "KEEP_RULES", "ORDERS",
    "SCORES",
    "Collection", "CuratedFile", "DuplicateGroup", "DuplicateScan", "FileRow",
    "IndexDirError", "IndexMismatchError", "IndexReader", "MapData", "Page", "Result",
    "ReviewEntry", "SampleReport", "ShardUnion", "review_csv",
]
