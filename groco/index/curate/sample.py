"""A representative sample of an index: greedy k-centre (farthest-point sampling) on the
stored embeddings.

Gonzalez (1985): start from one item drawn with ``seed``; each next pick is the item
farthest (by cosine distance) from every pick so far. The largest distance from any item
to its nearest pick, the *coverage radius*, is within a factor 2 of the best any ``n``
picks can reach, and every pick is farther than that radius from the others, so two near
copies are never both picked while anything else is uncovered. Cost: one pass over the
vectors a pick (``N x d`` multiply-adds), memory: the vectors and one ``N``-vector.

:func:`random_sample` and :func:`coverage` are the baseline the benchmark compares with.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Progress = Callable[[int], None]


def cosine_distance(similarity: np.ndarray) -> np.ndarray:
    """``1 - s``: the distance the sample and its radius are measured in."""
    return 1.0 - similarity


def k_centre(vectors: np.ndarray, count: int, seed: int = 0,
             progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """``(rows, gaps, radius)``: ``count`` rows of ``vectors`` (unit rows) picked greedily
    (module docstring) in pick order, each pick's distance to the earlier picks (``inf``
    for the first), and the coverage radius they reach."""
    n = len(vectors)
    if not 1 <= count <= n:
        raise ValueError(f"a sample of {count} from {n} items: give 1 to {n}")
    first = int(np.random.default_rng(seed).integers(n))
    picks, gaps = [first], [np.inf]
    nearest = cosine_distance(vectors @ vectors[first])
    nearest[first] = -np.inf
    for _ in range(1, count):
        pick = int(np.argmax(nearest))
        picks.append(pick)
        gaps.append(float(nearest[pick]))
        np.minimum(nearest, cosine_distance(vectors @ vectors[pick]), out=nearest)
        nearest[pick] = -np.inf
        if progress is not None:
            progress(1)
    nearest[picks] = 0.0
    return (np.asarray(picks, np.int64), np.asarray(gaps),
            float(max(0.0, nearest.max())))


def coverage(vectors: np.ndarray, rows: np.ndarray, block: int = 65_536) -> float:
    """The coverage radius of the picks ``rows``: the largest distance from any row of
    ``vectors`` to its nearest pick."""
    picks = vectors[rows]
    worst = 0.0
    for lo in range(0, len(vectors), block):
        best = (vectors[lo:lo + block] @ picks.T).max(axis=1)
        worst = max(worst, float(cosine_distance(best).max()))
    return max(0.0, worst)


def random_sample(n: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct rows out of ``n`` drawn uniformly with ``seed``."""
    return np.sort(np.random.default_rng(seed).choice(n, count, replace=False))
