"""The map's clusters: spherical k-means on the embeddings and the facts of each cluster.

``faiss.Kmeans`` (spherical) is trained on a sample of at most 256 points a centroid and
every item is assigned to its most similar centroid. A cluster has a size, a centre on the
map (the median of its items' coordinates), the folder label most of its items carry (and
how many do), and representatives: the :data:`REPRESENTATIVES` items nearest its centroid.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from ..store import EMBEDDED, Store
from .format import MapData

REPRESENTATIVES = 6
"""Items kept per cluster as its representatives (nearest its centroid first)."""
MAX_CLUSTERS = 50
_ASSIGN_CHUNK = 65536


def default_clusters(n: int) -> int:
    """``round(sqrt(n / 10))`` clusters, within ``2..MAX_CLUSTERS`` (and below ``n``)."""
    return int(max(2, min(MAX_CLUSTERS, round(math.sqrt(n / 10)), n - 1)))


def kmeans(vectors: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray,
                                                            np.ndarray]:
    """``(centroids, cluster, sim)``: spherical k-means trained on a sample (at most 256
    points a centroid), every vector assigned to its most similar centroid."""
    n, dim = vectors.shape
    rng = np.random.default_rng(seed)
    sample = vectors if n <= 256 * k else vectors[np.sort(rng.choice(n, 256 * k, replace=False))]
    model = faiss.Kmeans(dim, k, niter=20, seed=seed, spherical=True, verbose=False,
                         max_points_per_centroid=256, min_points_per_centroid=1)
    model.train(np.ascontiguousarray(sample, dtype=np.float32))
    cluster = np.empty(n, dtype=np.int32)
    sim = np.empty(n, dtype=np.float32)
    for lo in range(0, n, _ASSIGN_CHUNK):
        hi = min(n, lo + _ASSIGN_CHUNK)
        s, c = model.index.search(np.ascontiguousarray(vectors[lo:hi]), 1)
        cluster[lo:hi], sim[lo:hi] = c[:, 0], s[:, 0]
    return model.centroids.copy(), cluster, sim


def label_codes(store: Store, ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Label codes (``-1`` = none) of ``ids`` (sorted) and the label names."""
    names: dict[str, int] = {}
    row_ids, row_codes = [], []
    for row in store.iter_rows(EMBEDDED):
        row_ids.append(row.id)
        row_codes.append(-1 if row.label is None else names.setdefault(row.label, len(names)))
    codes = np.full(len(ids), -1, dtype=np.int32)
    if row_ids:
        known = np.asarray(row_ids, dtype=np.int64)
        pos = np.searchsorted(known, ids).clip(0, len(known) - 1)
        hit = known[pos] == ids
        codes[hit] = np.asarray(row_codes, dtype=np.int32)[pos[hit]]
    return codes, list(names)


def cluster_facts(store: Store, data: MapData) -> list[dict[str, Any]]:
    """Per cluster: id, size, centre on the map, majority label and its count, and the
    representatives (id and relpath, nearest the centroid first)."""
    k = len(data.centroids)
    order = np.lexsort((-data.sim, data.cluster))
    starts = np.searchsorted(data.cluster[order], np.arange(k + 1))
    rep_ids: list[list[int]] = []
    facts = []
    for c in range(k):
        members = order[starts[c]:starts[c + 1]]
        rep_ids.append(data.ids[members[:REPRESENTATIVES]].tolist())
        fact: dict[str, Any] = {"id": c, "size": len(members), "x": None, "y": None,
                                "label": None, "label_count": 0}
        if len(members):
            cx, cy = np.median(data.xy[members], axis=0).tolist()
            fact["x"], fact["y"] = round(cx, 4), round(cy, 4)
            codes = data.label[members]
            codes = codes[codes >= 0]
            if len(codes):
                counts = np.bincount(codes)
                fact["label"] = data.label_names[int(counts.argmax())]
                fact["label_count"] = int(counts.max())
        facts.append(fact)
    rows = store.rows([i for reps in rep_ids for i in reps])
    for fact, reps in zip(facts, rep_ids, strict=True):
        fact["representatives"] = [{"id": i, "relpath": rows[i].path} for i in reps
                                   if i in rows]
    return facts
