"""The k-NN graph of a set of unit vectors, exact within a partition: every vector is
compared by matrix products (BLAS) with the members of the few partition cells nearest it.

How (Jégou et al.'s inverted file, searched as blocks instead of one query at a time):

1. **Cells.** Spherical k-means (``faiss.Kmeans``) on a sample cuts the vectors into
   ``cells = N // CELL_SIZE`` cells; every vector belongs to the cell of its nearest
   centroid. Up to :data:`EXACT_MAX` vectors there is one cell: the graph is exact.
2. **Probes, chosen by measurement.** A sample of :data:`RECALL_SAMPLE` vectors gets its
   exact ``k`` nearest neighbours (one pass over all vectors). A vector's ``p`` probes are
   its ``p`` nearest centroids; since the search inside the probed cells is exact, the
   recall@k of ``p`` probes is the share of the sample's true neighbours whose cell is
   among its first ``p`` centroids, known for every ``p`` at once. ``p`` is the smallest
   reaching ``recall_target`` (at most :data:`MAX_PROBES`).
3. **Blocks.** For each cell ``c``, the vectors that probe ``c`` are scored against its
   members in one brute-force call (``faiss.knn``: a BLAS product and a heap per row;
   faiss-gpu's on a GPU) and their best
   ``k`` merged into each row's running best (a vector is never its own neighbour).
   Cost: about ``2 N p CELL_SIZE d`` flops, linear in ``N``.

Memory: the vectors (``N x d`` float32, held by the caller), the probes (``N x p`` int32),
the running best (``N x k`` int32 + float32) and one block. Resumable: the running best
lives in ``.npy`` files opened memory-mapped, and ``state.json`` records the cells done;
merging a cell twice changes nothing (a row never holds one neighbour twice), so a run
killed inside a cell repeats that cell only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from groco.fileio import atomic_write_text
from groco.progress import progress_bar

from ..faiss.query import exact_knn
from ..faiss.spec import DEFAULT_TUNING

CELL_SIZE = 1024
"""Vectors per partition cell (the size of one block's database side)."""
EXACT_MAX = 20_000
"""Up to this many vectors the graph is exact (one cell)."""
RECALL_SAMPLE = 1000
"""Vectors whose exact neighbours measure the recall (and choose the probes)."""
RECALL_TARGET = DEFAULT_TUNING.target_recall
"""The recall@k the probes are chosen to reach: the index's own tuning target."""
MAX_PROBES = 32
"""The most cells a vector is compared with."""
KMEANS_SAMPLE_PER_CELL = 64
"""k-means trains on at most this many vectors a cell."""
BLOCK_ROWS = 16_384
"""Query rows scored against one cell at a time."""


@dataclass
class Plan:
    """How the graph is computed: the cells' centroids, the probes, the measured recall."""

    centroids: np.ndarray
    probes: int
    sample: np.ndarray
    """Positions of the recall sample."""
    exact: np.ndarray
    """Their exact ``k`` nearest positions (``-1`` = fewer than ``k`` others)."""
    predicted_recall: float

    def info(self) -> dict[str, Any]:
        return {"cells": len(self.centroids), "probes": self.probes,
                "predicted_recall": round(self.predicted_recall, 4)}


def _rows(n: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest positions (and cosines) of each row ``queries`` (positions in
    ``vectors``) among all ``vectors`` but itself: one pass, ``-1`` where fewer exist."""
    want = min(k + 1, len(vectors))
    scores, found = exact_knn(np.ascontiguousarray(vectors[queries]), vectors, want)
    scores[found == queries[:, None]] = -np.inf
    return _best(found.astype(np.int32), scores, k)


def _best(pos: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` best ``(positions, scores)``, best first (``-1``/``-inf`` pad)."""
    scores = np.where(pos >= 0, scores, -np.inf).astype(np.float32)
    if scores.shape[1] < k:
        pad = k - scores.shape[1]
        pos = np.pad(pos, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    pos = np.take_along_axis(pos, order, axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    return np.where(np.isfinite(scores), pos, -1).astype(np.int32), scores


def plan(vectors: np.ndarray, k: int, seed: int = 0, recall_target: float = RECALL_TARGET,
         cell_size: int | None = None, exact_max: int | None = None) -> Plan:
    """Cells, probes and the recall sample for ``vectors`` (module docstring, steps 1-2);
    ``cell_size``/``exact_max``: :data:`CELL_SIZE`/:data:`EXACT_MAX` when ``None``."""
    cell_size = CELL_SIZE if cell_size is None else cell_size
    exact_max = EXACT_MAX if exact_max is None else exact_max
    n, dim = vectors.shape
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, RECALL_SAMPLE), replace=False))
    exact, _ = exact_neighbours(vectors, sample, k)
    if n <= exact_max:
        return Plan(np.zeros((1, dim), np.float32), 1, sample, exact, 1.0)
    cells = default_cells(n, cell_size)
    train = vectors[np.sort(rng.choice(n, min(n, cells * KMEANS_SAMPLE_PER_CELL),
                                       replace=False))]
    kmeans = faiss.Kmeans(dim, cells, niter=10, seed=seed, spherical=True, verbose=False,
                          max_points_per_centroid=KMEANS_SAMPLE_PER_CELL,
                          min_points_per_centroid=1)
    kmeans.train(np.ascontiguousarray(train))
    centroids = kmeans.centroids.copy()
    most = min(MAX_PROBES, cells)
    sample_probes = nearest_cells(centroids, vectors[sample], most)
    valid = exact >= 0
    true_cells = nearest_cells(centroids, vectors[exact.clip(0)].reshape(-1, dim), 1)
    true_cells = true_cells.reshape(exact.shape)
    # first probe rank at which each true neighbour's cell is searched (most = never)
    hit = true_cells[:, :, None] == sample_probes[:, None, :]
    rank = np.where(hit.any(-1), hit.argmax(-1), most)
    total = max(1, int(valid.sum()))
    recall = [float(((rank < p) & valid).sum()) / total for p in range(1, most + 1)]
    reach = [p for p, r in enumerate(recall, 1) if r >= recall_target]
    probes = reach[0] if reach else most
    return Plan(centroids, probes, sample, exact, recall[probes - 1])


def nearest_cells(centroids: np.ndarray, vectors: np.ndarray, p: int) -> np.ndarray:
    """The ``p`` most similar centroids of each vector (int32), nearest first."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    out = np.empty((len(vectors), p), np.int32)
    for lo, hi in _rows(len(vectors), 65_536):
        out[lo:hi] = index.search(np.ascontiguousarray(vectors[lo:hi]), p)[1]
    return out


def merge(best_pos: np.ndarray, best_score: np.ndarray, new_pos: np.ndarray,
          new_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows' running best merged with new candidates (a position already held is not
    taken twice), best first, same width."""
    k = best_pos.shape[1]
    held = (new_pos[:, :, None] == best_pos[:, None, :]).any(-1)
    new_score = np.where(held | (new_pos < 0), -np.inf, new_score)
    return _best(np.concatenate([best_pos, new_pos], axis=1),
                 np.concatenate([best_score, new_score], axis=1), k)


def _work_arrays(work: Path, key: dict[str, Any], n: int, k: int
                 ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The work folder's state and running-best arrays for ``key``, started afresh when
    they were made for anything else."""
    state_path = work / "state.json"
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        state = None
    names = ("best-pos.npy", "best-score.npy", "centroids.npy")
    if state is None or state.get("key") != key or not all(
            (work / name).is_file() for name in names):
        if work.exists():
            for f in work.iterdir():
                f.unlink()
        work.mkdir(parents=True, exist_ok=True)
        pos = np.lib.format.open_memmap(work / "best-pos.npy", "w+", np.int32, (n, k))
        pos[:] = -1
        pos.flush()
        score = np.lib.format.open_memmap(work / "best-score.npy", "w+", np.float32, (n, k))
        score[:] = -np.inf
        score.flush()
        state = {"key": key, "cells_done": 0}
    return (state, np.load(work / "best-pos.npy", mmap_mode="r+"),
            np.load(work / "best-score.npy", mmap_mode="r+"))


def knn_graph(vectors: np.ndarray, k: int, work: Path, key: dict[str, Any], seed: int = 0,
              recall_target: float = RECALL_TARGET, progress: bool = True,
              cell_size: int | None = None, exact_max: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(positions, scores, facts)``: each vector's ``k`` nearest others (positions in
    ``vectors``, ``-1`` = none; cosines, best first) and what was measured (cells, probes,
    recall@k on the sample, the cells a killed run had done). Resumes the run in ``work``
    made for the same ``key``; ``vectors`` are unit rows (float32, C order)."""
    n = len(vectors)
    state, best_pos, best_score = _work_arrays(work, key, n, k)
    if "plan" in state:
        centroids = np.load(work / "centroids.npy")
        probes = int(state["plan"]["probes"])
        facts = dict(state["plan"])
    else:
        chosen = plan(vectors, k, seed, recall_target, cell_size, exact_max)
        centroids, probes = chosen.centroids, chosen.probes
        np.save(work / "centroids.npy", centroids)
        facts = {**chosen.info(), "sample": chosen.sample.tolist(),
                 "exact": chosen.exact.tolist()}
        state["plan"] = facts
        atomic_write_text(work / "state.json", json.dumps(state))
    resumed = int(state["cells_done"])
    cells = len(centroids)
    probe = nearest_cells(centroids, vectors, probes) if cells > 1 else np.zeros(
        (n, 1), np.int32)
    members_order = np.argsort(probe[:, 0], kind="stable").astype(np.int64)
    member_bounds = np.searchsorted(probe[members_order, 0], np.arange(cells + 1))
    flat = probe.ravel()
    query_order = np.argsort(flat, kind="stable")
    query_bounds = np.searchsorted(flat[query_order], np.arange(cells + 1))
    query_order //= probes  # row of each (row, probe) entry
    del flat, probe
    with progress_bar(cells, initial=resumed, desc="neighbour graph", unit="cell",
                      disable=not progress) as bar:
        for c in range(resumed, cells):
            members = members_order[member_bounds[c]:member_bounds[c + 1]]
            queries = np.sort(query_order[query_bounds[c]:query_bounds[c + 1]])
            if len(members) and len(queries):
                base = np.ascontiguousarray(vectors[members])
                want = min(k + 1, len(members))
                for lo, hi in _rows(len(queries), BLOCK_ROWS):
                    rows = queries[lo:hi]
                    scores, found = exact_knn(np.ascontiguousarray(vectors[rows]), base, want)
                    pos = np.where(found >= 0, members[found.clip(0)], -1)
                    scores[pos == rows[:, None]] = -np.inf
                    best_pos[rows], best_score[rows] = merge(best_pos[rows], best_score[rows],
                                                             pos.astype(np.int32), scores)
            if c % 16 == 15 or c == cells - 1:
                best_pos.flush()
                best_score.flush()
                state["cells_done"] = c + 1
                atomic_write_text(work / "state.json", json.dumps(state))
            bar.update(1)
    sample = np.asarray(facts.pop("sample"), np.int64)
    exact = np.asarray(facts.pop("exact"), np.int64)
    facts["recall"] = round(recall_at_k(np.asarray(best_pos[sample]), exact), 4)
    facts["recall_sample"] = len(sample)
    facts["resumed_cells"] = resumed
    facts["exact"] = cells == 1
    return np.asarray(best_pos), np.asarray(best_score), facts


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact neighbours (``>= 0``) that ``found`` holds in the same row."""
    valid = exact >= 0
    hit = (exact[:, :, None] == found[:, None, :]).any(-1) & valid
    return float(hit.sum()) / max(1, int(valid.sum()))


def default_cells(n: int, cell_size: int) -> int:
    """Cells of the partition for ``n`` vectors above :data:`EXACT_MAX` (at least 2)."""
    return max(2, math.floor(n / cell_size))
