"""One open index directory and everything a client reads of it: search (by image, vector
or indexed item, with a label filter done inside the index), its items' metadata,
collection pages, label counts, duplicate groups and the map.

:class:`IndexReader` wraps :class:`groco.index.search.Searcher` (the index, the metadata
and the encoder, loaded once, with its encoder check) and calls into the modules that do
each job: :mod:`.filtered` (the label filter), :mod:`.pages` (pages and label counts),
:mod:`groco.index.dupes` and :mod:`groco.index.map`. No torch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..curate import DEFAULT_SCORE, CuratedFile, SampleReport, find_outliers, pick_sample
from ..curate.calibrate import read_calibration
from ..curate.review import ReviewEntry, review_list
from ..distinct import collapse_near_copies, pool_size
from ..dupes import DEFAULT_THRESHOLD, DuplicateGroup, DuplicateScan, scan_duplicates
from ..expansion import POOL
from ..faiss.query import search
from ..faiss.source import as_unit_vectors, positions_of
from ..manifest import IndexDirError, read_manifest
from ..map import MapData, has_map, iter_map_items, map_path, read_map
from ..search import QueryImage, Result, Searcher
from ..shards import gather
from ..store import DB_NAME, EMBEDDED, FileRow, Store
from ..stored import ShardSource
from .batcher import QueryBatcher
from .filtered import search_subset
from .pages import Collection, Page


class IndexReader:
    """A loaded index directory, ready to answer every read a client makes (thread-safe).

    Opening checks what :class:`~groco.index.search.Searcher` checks: ``encoder_path``
    defaults to the encoder recorded in the manifest, one whose hash differs raises
    :class:`~groco.index.manifest.IndexMismatchError`, a missing, unfinished or damaged
    directory :class:`~groco.index.manifest.IndexDirError`. The listing of the embedded
    items (ids, labels and where their vectors are stored: 20 bytes an image) is read from
    the metadata on first use (a page, a label count or a label filter), once.
    """

    def __init__(self, index_dir: str | Path, encoder_path: str | Path | None = None,
                 providers: list[str] | None = None, batch_queries: bool = True,
                 spinning: bool = False) -> None:
        self._searcher = Searcher(index_dir, encoder_path, providers, spinning)
        self._opening = (encoder_path, providers, spinning)
        self._previous: Searcher | None = None
        self.generation = 0
        """How many newer index states this reader has switched to (:meth:`refresh`)."""
        self.index_dir: Path = self._searcher.index_dir
        self.root: Path = self._searcher.root
        """The images root recorded in the manifest (a result's ``path`` is under it)."""
        self.encoder = self._searcher.encoder
        self.stale: bool = self._searcher.stale
        self._lock = threading.Lock()
        self._collection: Collection | None = None
        self._locations: tuple[np.ndarray, np.ndarray] | None = None
        self._batcher: QueryBatcher | None = None
        self.batch_queries = batch_queries
        """Queries from several threads embedded together (:mod:`.batcher`); off: each
        in its own call."""

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
        self._searcher.close()
        if self._previous is not None:
            self._previous.close()

    def refresh(self) -> bool:
        """Switch to the directory's newest state when ``groco index update`` (or a
        rebuild) has written one since this reader opened its own; True when it switched.

        A state is named by the manifest's ``index_file``; an unreadable or half-written
        directory leaves the reader on its state. The state before stays open until the
        next switch, so a query that started on it finishes (an update keeps the previous
        state's files for such readers). The encoder is checked as on opening."""
        try:
            manifest = read_manifest(self.index_dir)
        except (IndexDirError, OSError):
            return False
        if manifest.get("index_file") == self._searcher.manifest.get("index_file"):
            return False
        newer = Searcher(self.index_dir, *self._opening)
        with self._lock:
            older, self._previous = self._previous, self._searcher
            self._searcher = newer
            self.root, self.encoder, self.stale = newer.root, newer.encoder, newer.stale
            self._collection, self._locations = None, None
            self.generation += 1
        if older is not None:
            older.close()
        return True

    def __enter__(self) -> IndexReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- search

    def embed_image(self, image: QueryImage) -> np.ndarray:
        """The ``(dim,)`` unit embedding of a path, bytes, file object or PIL image
        (:class:`groco.images.ImageError` for one that cannot be decoded). Decoded and
        preprocessed in the calling thread; queries from several threads at once are
        embedded together (:mod:`.batcher`)."""
        if not self.batch_queries:
            return self._searcher.embed_image(image)
        return self._embedder().embed(self._searcher.preprocess_image(image))

    def _embedder(self) -> QueryBatcher:
        with self._lock:
            if self._batcher is None:
                self._batcher = QueryBatcher(lambda arrays: self.encoder.embed_arrays(arrays))
            return self._batcher

    def search_vector(self, vector: np.ndarray, k: int = 10, *, label: str | None = None,
                      exclude: int | None = None, min_score: float | None = None,
                      distinct: bool = False,
                      near_copy: float | None = None) -> list[Result]:
        """The ``k`` nearest neighbours of a ``(dim,)`` embedding, best first.

        ``label``: only items of that folder label, searched inside the index
        (:mod:`.filtered`): ``min(k, items of the label)`` come back, however rare the
        label; ``ValueError`` for a label the index does not have. ``exclude``: an id left
        out. ``min_score``: results below this cosine similarity are left out (fewer come
        back then). ``distinct``: near copies (cosine ``>= near_copy``, by default
        :meth:`near_copy_threshold`) collapsed, each group shown once by its best-ranked member
        with ``copies`` counting the rest (:mod:`..distinct`).
        """
        if not distinct:
            return self._search_vector(vector, k, label, exclude, min_score)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        candidates = self._search_vector(vector, pool_size(k), label, exclude, min_score)
        if not candidates:
            return []
        if near_copy is None:
            near_copy = self.near_copy_threshold()
        return collapse_near_copies(candidates, self._stored_vectors([r.id for r in candidates]),
                                    k, near_copy)

    def _stored_vectors(self, ids: list[int]) -> np.ndarray:
        """The stored unit embeddings of embedded items ``ids``, in that order: one read of
        the shards at the locations the listing holds (no metadata lookup per item)."""
        collection = self._listing()
        shard_numbers, rows = self._locations  # read with the collection
        positions = positions_of(collection.ids, np.asarray(ids, np.int64))
        if (positions < 0).any():  # found in a state the listing has not read yet
            return as_unit_vectors(np.stack([self._searcher.vector_of(i) for i in ids]))
        return as_unit_vectors(gather(self.index_dir, shard_numbers[positions],
                                      rows[positions]))

    def _search_vector(self, vector: np.ndarray, k: int, label: str | None,
                       exclude: int | None, min_score: float | None) -> list[Result]:
        if label is None:
            return self._searcher.search_vector(vector, k, exclude=exclude,
                                                min_score=min_score)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if min_score is not None and not -1.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [-1, 1] (cosine similarity), got "
                             f"{min_score:g}")
        index = self._searcher.index
        query = as_unit_vectors(vector, "query")
        if query.shape != (1, index.d):
            raise ValueError(f"vector has shape {query.shape[1:]}, the index dim {index.d}")
        collection = self._listing()
        positions = collection.positions(label)
        ids = collection.ids[positions]
        shards, rows = self._locations  # read with the collection
        expansion = self._searcher.expansion
        want = k + (exclude is not None)
        expanded = None
        if expansion is not None:  # expanded from the whole collection, as unfiltered
            pool = (search(index, query, min(max(POOL, want), index.ntotal))[1][0]
                    if expansion.expands_queries else np.empty(0, np.int64))
            expanded = expansion.expand(query[0], pool, exclude)
        scores, found = search_subset(
            index, query, want if expansion is None else max(POOL, want), ids,
            lambda: ShardSource(self.index_dir, ids, shards[positions], rows[positions]))
        return self._searcher.results(expanded, scores[0], found[0], k, exclude, min_score)

    def search_image(self, image: QueryImage, k: int = 10, *, label: str | None = None,
                     min_score: float | None = None, distinct: bool = False,
                     near_copy: float | None = None) -> list[Result]:
        """The ``k`` indexed images most similar to ``image`` (as :meth:`search_vector`);
        an image that is itself indexed comes back first with a score of ~1."""
        return self.search_vector(self.embed_image(image), k, label=label,
                                  min_score=min_score, distinct=distinct, near_copy=near_copy)

    def more_like(self, item: int | str | Path, k: int = 10, *, label: str | None = None,
                  min_score: float | None = None, distinct: bool = False,
                  near_copy: float | None = None) -> list[Result]:
        """The ``k`` images most similar to an indexed one (id or path), *itself left out*,
        from its stored embedding (as :meth:`search_vector`); ``KeyError`` for an unknown
        item, ``ValueError`` for a broken one."""
        row = self._searcher.row(item)
        return self.search_vector(self._searcher.vector_of(row), k, label=label,
                                  exclude=row.id, min_score=min_score, distinct=distinct,
                                  near_copy=near_copy)

    # -- items and the collection

    def row(self, item: int | str | Path) -> FileRow:
        """The metadata row of an id or a path (relative or absolute); ``KeyError`` if none."""
        return self._searcher.row(item)

    def stored_vector(self, item: int | str | Path) -> np.ndarray:
        """The stored ``(dim,)`` embedding of an indexed item (id or path); ``KeyError``
        for an unknown one."""
        return self._searcher.vector_of(item)

    def embedded_files(self) -> list[tuple[Path, str]]:
        """(absolute path, content hash) of every embedded image."""
        return self._searcher.embedded_files()

    def label_counts(self) -> dict[str, int]:
        """How many embedded images each folder label has, by label (files in the root:
        no label)."""
        return self._listing().label_counts()

    def page(self, number: int, per_page: int, folder: str | None = None,
             order: str = "random", seed: int = 0) -> Page:
        """Page ``number`` (1-based, clamped) of ``per_page`` embedded items, of the whole
        collection or one folder, in ``order`` (see :data:`.pages.ORDERS`); ``ValueError``
        (one line) for an unknown folder or order."""
        return self._listing().page(number, per_page, folder, order, seed)

    def facts(self) -> dict[str, Any]:
        """What a UI shows about the index (counts, encoder, index type, build date, dim)."""
        return self._searcher.facts()

    def _listing(self) -> Collection:
        """The embedded items (read once): the :class:`Collection`, and in
        ``_locations`` the shard and row of each one's stored vector."""
        with self._lock:
            if self._collection is None:
                ids, labels, shards, rows = [], [], [], []
                with Store(self.index_dir / DB_NAME, readonly=True) as store:
                    for row in store.iter_rows(EMBEDDED):
                        ids.append(row.id)
                        labels.append(row.label)
                        shards.append(row.shard)
                        rows.append(row.shard_row)
                self._locations = (np.array(shards, np.int32), np.array(rows, np.int32))
                self._collection = Collection(np.array(ids, np.int64), labels)
            return self._collection

    # -- duplicates

    def near_copy_threshold(self) -> float:
        """The cosine from which two items are near copies: the index's calibration for
        its encoder (``groco index dupes --calibrate``), else the duplicate default."""
        found = read_calibration(self.index_dir, self.encoder.hash)
        return found.near if found is not None else DEFAULT_THRESHOLD

    def duplicate_scan(self, floor: float = DEFAULT_THRESHOLD) -> DuplicateScan:
        """The candidate pairs scoring ``>= floor``, groupable at any threshold from
        ``floor`` to 1 (:func:`groco.index.dupes.scan_duplicates` over the loaded index)."""
        return scan_duplicates(self._searcher, floor)

    def duplicate_groups(self, threshold: float = DEFAULT_THRESHOLD) -> list[DuplicateGroup]:
        """The near-duplicate groups at cosine ``threshold``, largest first (byte copies
        always grouped); as ``groco index dupes``."""
        return self.duplicate_scan(threshold).groups(threshold)

    def review(self, groups: list[DuplicateGroup], rule: str = "pixels",
               similar_groups: list[DuplicateGroup] | None = None) -> list[ReviewEntry]:
        """The review list of duplicate ``groups``: each keeps one file by ``rule``
        (:mod:`groco.index.curate.review`); ``ValueError`` for an unknown rule."""
        return review_list(groups, rule, similar_groups)

    # -- curation

    def outliers(self, count: int, score: str = DEFAULT_SCORE) -> list[CuratedFile]:
        """The ``count`` most unusual items (:mod:`groco.index.curate`), read from the
        stored neighbour graph: :class:`IndexDirError` naming ``groco index graph`` when
        the index has no current one (a reader does not write it)."""
        return find_outliers(self.index_dir, count, score, store_graph=False)

    def sample(self, count: int, seed: int = 0) -> SampleReport:
        """``count`` items that cover the collection, with the coverage radius reached
        beside a random sample's (:mod:`groco.index.curate`)."""
        return pick_sample(self.index_dir, count, seed)

    # -- the map

    def has_map(self) -> bool:
        """Whether the index has a map (``groco index map``)."""
        return has_map(self.index_dir)

    def map_stamp(self) -> float | None:
        """The modification time of the stored map, ``None`` without one: a changed stamp
        means the map was written again."""
        try:
            return map_path(self.index_dir).stat().st_mtime
        except FileNotFoundError:
            return None

    def read_map(self) -> MapData:
        """The stored map; :class:`~groco.index.manifest.IndexDirError` without one."""
        return read_map(self.index_dir)

    def map_items(self, data: MapData | None = None) -> Iterator[dict[str, Any]]:
        """Each mapped item as ``{"id", "path", "relpath", "x", "y", "cluster", "label"}``
        (``path`` absolute), in id order."""
        return iter_map_items(self.index_dir, data)
