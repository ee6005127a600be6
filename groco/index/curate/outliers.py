"""Outlier scores of an index's items from its stored neighbour graph.

Every score is a read of the graph (:mod:`groco.index.neighbours`): ``N x k`` cosines,
turned into distances between unit vectors ``d = sqrt(2 - 2 s)``; higher = more unusual.

- ``knn``: the mean distance to the :data:`KNN_K` nearest others (Ramaswamy et al.,
  SIGMOD 2000, use the k-th; the mean is steadier);
- ``weighted``: ``0.6 d1 + 0.3 d2 + 0.1 d3``, the distance-weighted k-NN distance that
  FiftyOne's ``compute_uniqueness`` ranks by;
- ``lof``: a local density ratio (Breunig et al., "LOF", SIGMOD 2000, simplified): the
  item's ``knn`` score over the mean ``knn`` score of its :data:`KNN_K` nearest. An item
  in a sparse cluster is not unusual for being far from others; one far from a dense
  cluster is.

Which ranks planted outliers best is measured in BENCHMARKS.md ("Curation");
:data:`DEFAULT_SCORE` is that one. Memory: the graph's arrays and a few ``N``-vectors.
"""

from __future__ import annotations

import numpy as np

from ..neighbours import NeighbourGraph

SCORES = ("lof", "knn", "weighted")
DEFAULT_SCORE = "lof"
KNN_K = 10
"""Neighbours the ``knn`` and ``lof`` scores read (the graph stores 16)."""
WEIGHTS = (0.6, 0.3, 0.1)
"""The ``weighted`` score's weights of the 1st, 2nd and 3rd nearest distance."""


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


def outlier_scores(graph: NeighbourGraph, score: str = DEFAULT_SCORE) -> np.ndarray:
    """One float per graph row (module docstring); ``ValueError`` for an unknown score."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
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


def top_outliers(graph: NeighbourGraph, count: int, score: str = DEFAULT_SCORE
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, scores)`` of the ``count`` most unusual items, most unusual first."""
    values = outlier_scores(graph, score)
    count = min(count, len(values))
    top = np.argpartition(-values, count - 1)[:count] if count < len(values) else np.arange(
        len(values))
    order = top[np.lexsort((graph.ids[top], -values[top]))]
    return order, values[order]
