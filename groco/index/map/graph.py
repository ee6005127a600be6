"""The map's k-NN graph in UMAP's form, and new items' neighbours among the mapped ones.

The graph itself is the index's stored neighbour graph (:mod:`groco.index.neighbours`):
:func:`umap_graph` turns its rows into UMAP's ``(indices, distances)``: cosine similarity
``s`` becomes the Euclidean distance between unit vectors, ``d = sqrt(2 - 2 s)``; each
item is its own first neighbour (``d = 0``), as UMAP expects; a slot with no neighbour
holds position ``-1`` and distance ``inf``. Nothing holds an ``N x N`` matrix.
"""

from __future__ import annotations

from collections.abc import Iterator

import faiss
import numpy as np

from ..faiss.query import search
from ..faiss.source import positions_of
from ..manifest import IndexDirError
from ..neighbours import NeighbourGraph

KNN_CHUNK = 8192
"""Query rows per index search while placing new items."""


def distances(scores: np.ndarray) -> np.ndarray:
    """Euclidean distance between unit vectors from their cosine similarity."""
    return np.sqrt(np.maximum(0.0, 2.0 - 2.0 * scores)).astype(np.float32)


def chunks(n: int, size: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """``(lo, hi)`` row ranges of at most ``size`` rows covering ``start..n``."""
    for lo in range(start, n, size):
        yield lo, min(n, lo + size)


def umap_graph(graph: NeighbourGraph | None, ids: np.ndarray, k: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """UMAP's ``(indices, distances)`` (``N x k``, int32 / float32) of the items ``ids``
    (the graph's rows, in order) from the stored ``graph``: each item first, then its
    ``k - 1`` nearest (module docstring)."""
    if graph is None or not np.array_equal(graph.ids, ids):
        raise IndexDirError("the neighbour graph does not match the index's items")
    n = len(ids)
    others = graph.positions()[:, :k - 1]
    scores = graph.scores[:, :k - 1]
    idx = np.empty((n, k), np.int32)
    dist = np.empty((n, k), np.float32)
    idx[:, 0], dist[:, 0] = np.arange(n), 0.0
    idx[:, 1:] = others
    dist[:, 1:] = np.where(others >= 0, distances(scores), np.inf)
    return idx, dist


def _found_first(pos: np.ndarray, scores: np.ndarray, width: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``width`` columns of positions (int32) and distances: each row's valid neighbours
    (``pos >= 0``) in search order, then the empty slots (``-1``, ``inf``)."""
    keep = pos >= 0
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]  # stable: search order
    kept = np.take_along_axis(keep, order, axis=1)
    idx = np.where(kept, np.take_along_axis(pos, order, axis=1), -1).astype(np.int32)
    dist = np.where(kept, distances(np.take_along_axis(scores, order, axis=1)), np.inf)
    return idx, dist.astype(np.float32)


def mapped_neighbours(index: faiss.Index, queries: np.ndarray, mapped_ids: np.ndarray,
                      k: int, want: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` nearest items among ``mapped_ids`` (sorted): their positions in
    it (``-1`` = none) and distances, from the index's ``want`` nearest items."""
    scores, found = search(index, queries, want)
    return _found_first(positions_of(mapped_ids, found), scores, k)
