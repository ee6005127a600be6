"""Outlier scores of an index's items: from its stored neighbour graph, or against a
sample of the whole collection.

Distances between unit vectors, ``d = sqrt(2 - 2 s)`` for a cosine ``s``; higher = more
unusual. Read from the graph (:mod:`groco.index.neighbours`, ``N x k`` cosines):

- ``knn``: the mean distance to the :data:`KNN_K` nearest others (Ramaswamy et al.,
  SIGMOD 2000, use the k-th; the mean is steadier);
- ``weighted``: ``0.6 d1 + 0.3 d2 + 0.1 d3``, the distance-weighted k-NN distance that
  FiftyOne's ``compute_uniqueness`` ranks by;
- ``lof``: a local density ratio (Breunig et al., "LOF", SIGMOD 2000, simplified): the
  item's ``knn`` score over the mean ``knn`` score of its :data:`KNN_K` nearest. An item
  in a sparse cluster is not unusual for being far from others; one far from a dense
  cluster is.

The graph's scores judge an item by its nearest few, so a *group* of look-alike strays
(fifty noise images, a folder of screenshots among photos) hides itself: each member's
nearest items are the others. Against the whole collection:

- ``global``: the distance to the :data:`GLOBAL_K`-th nearest of a seeded uniform sample
  of :data:`REFERENCE` items (the item itself left out): high when less than about
  ``GLOBAL_K / REFERENCE`` (1.6 %) of the collection lies near it, however its own group
  is packed (a collection under ``REFERENCE`` items is its own sample, with ``k`` scaled
  to the same share) (Sugiyama & Borgwardt, "Rapid distance-based outlier detection via sampling",
  NeurIPS 2013, use the nearest of a small sample). One ``N x REFERENCE`` product,
  streamed in blocks.

Which ranks planted outliers best is measured in BENCHMARKS.md ("Curation");
:data:`DEFAULT_SCORE` is that one. Memory: the graph's arrays and a few ``N``-vectors.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..neighbours import NeighbourGraph

SCORES = ("lof", "knn", "weighted", "global")
DEFAULT_SCORE = "global"
KNN_K = 10
"""Neighbours the ``knn`` and ``lof`` scores read (the graph stores 16)."""
WEIGHTS = (0.6, 0.3, 0.1)
"""The ``weighted`` score's weights of the 1st, 2nd and 3rd nearest distance."""
REFERENCE = 1000
"""Items in the ``global`` score's sample."""
GLOBAL_K = 16
"""The ``global`` score reads the distance to this nearest of the sample."""
BLOCK = 16384
"""Items scored at a time by ``global`` (a ``BLOCK x REFERENCE`` float32 product)."""


def distances(graph: NeighbourGraph, k: int) -> np.ndarray:
    """The first ``k`` columns of the graph as distances (``nan`` = no neighbour)."""
    scores = np.asarray(graph.scores[:, :k], dtype=np.float64)
    d = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * scores))
    return np.where(np.asarray(graph.neighbours[:, :k]) >= 0, d, np.nan)


def _mean_ignoring_missing(d: np.ndarray) -> np.ndarray:
    held = np.isfinite(d)
    total = np.where(held, d, 0.0).sum(axis=1)
    count = held.sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.inf)


def reference_rows(n: int, seed: int = 0) -> np.ndarray:
    """The sorted rows of the ``global`` score's sample of a collection of ``n``."""
    return np.sort(np.random.default_rng(seed).choice(n, min(REFERENCE, n), replace=False))


def global_scores(n: int, vectors: Callable[[np.ndarray], np.ndarray], seed: int = 0
                  ) -> np.ndarray:
    """The ``global`` score (module docstring) of ``n`` items whose unit vectors
    ``vectors(rows)`` returns for an array of rows (a block at a time)."""
    reference = reference_rows(n, seed)
    if len(reference) < 2:
        return np.zeros(n)
    sample = vectors(reference).astype(np.float32)
    # the same share of the sample when the collection is smaller than REFERENCE
    k = max(1, min(len(reference) - 1, round(GLOBAL_K * len(reference) / REFERENCE)))
    out = np.empty(n)
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        cosines = vectors(np.arange(start, stop)).astype(np.float32) @ sample.T
        inside = np.flatnonzero((reference >= start) & (reference < stop))
        cosines[reference[inside] - start, inside] = -np.inf  # itself
        kth = -np.partition(-cosines, k - 1, axis=1)[:, k - 1]
        out[start:stop] = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * kth))
    return out


def outlier_scores(graph: NeighbourGraph, score: str = DEFAULT_SCORE) -> np.ndarray:
    """One float per graph row (module docstring; ``global`` needs the vectors:
    :func:`global_scores`); ``ValueError`` for an unknown score."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    if score == "global":
        raise ValueError("the global score reads the vectors: use global_scores")
    if score == "weighted":
        d = distances(graph, len(WEIGHTS))
        w = np.where(np.isfinite(d), np.asarray(WEIGHTS[:d.shape[1]]), 0.0)
        return (np.where(np.isfinite(d), d, 0.0) * w).sum(axis=1) / np.maximum(
            w.sum(axis=1), 1e-12)
    knn = _mean_ignoring_missing(distances(graph, KNN_K))
    if score == "knn":
        return knn
    pos = graph.positions()[:, :KNN_K]
    around = np.where(pos >= 0, knn[pos.clip(0)], np.nan)
    local = _mean_ignoring_missing(around)
    return knn / np.maximum(local, 1e-12)


def top_outliers(graph: NeighbourGraph, count: int, score: str = DEFAULT_SCORE,
                 values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, scores)`` of the ``count`` most unusual items, most unusual first
    (``values``: scores per graph row already computed)."""
    values = outlier_scores(graph, score) if values is None else values
    count = min(count, len(values))
    top = np.argpartition(-values, count - 1)[:count] if count < len(values) else np.arange(
        len(values))
    order = top[np.lexsort((graph.ids[top], -values[top]))]
    return order, values[order]
