"""Measure an index directory (``groco index eval``): neighbourhood quality, recall, latency.

Labels are the images' first subfolders; files directly in the images root are
unlabelled and take no part in the label metrics. All from the stored embeddings, so no
image is decoded and the encoder is not needed:

- **k-NN top-1** (leave-one-out): each labelled image is classified by the weighted vote
  of its ``k`` nearest *other* labelled images, exact search; the vote is
  :mod:`groco.knn`'s (``w_j = exp(s_j / T)``, ties to the smallest class), the protocol
  of the training monitor.
- **precision@10**: of the 10 neighbours the *index* returns for a labelled image
  (itself excluded), the fraction with its label: what a user of the search sees.
- **recall@10**: ``|index top-10 ∩ exact top-10| / 10`` (itself excluded from both).
- **latency**: one query at a time through :func:`groco.index.faiss_index.search`
  (vector in, ids out; embedding the query image is not included), p50/p95/p99.

Up to ``max_queries`` images (a seeded sample) are the queries; the bank is always the
whole collection. No torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import faiss
import numpy as np

from groco.knn import class_indices, knn_vote

from . import shards
from .faiss_index import load_index, recall_at_k, search
from .manifest import INDEX_NAME, IndexDirError, read_manifest
from .store import DB_NAME, EMBEDDED, Store

PRECISION_K = 10


@dataclass(frozen=True)
class EvalReport:
    """Figures of :func:`evaluate_index` (label figures are ``None`` without 2+ classes)."""

    count: int
    labelled: int
    classes: int
    queries: int
    k: int
    temperature: float
    knn_top1: float | None
    precision_at_10: float | None
    recall_at_10: float
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float
    latency_queries: int
    index_type: str
    search_params: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _not_self(neighbours: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mask keeping, of each row's ``k + 1`` neighbours, the ``k`` that are not ``rows[i]``."""
    keep = neighbours != rows[:, None]
    keep[keep.all(axis=1), -1] = False  # self not found (a duplicate won the tie): drop the last
    return keep


def _without_self(neighbours: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Each row's first ``k`` entries other than ``rows[i]`` (``neighbours`` has ``k + 1``)."""
    return neighbours[_not_self(neighbours, rows)].reshape(len(rows), k)


def _knn_top1(x: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int,
              temperature: float) -> float | None:
    """Leave-one-out weighted k-NN accuracy over labelled rows, for query rows ``queries``."""
    labelled = np.flatnonzero(labels >= 0)
    classes = np.unique(labels[labelled])
    if len(classes) < 2 or len(labelled) < 2:
        return None
    bank = np.ascontiguousarray(x[labelled])
    bank_labels = np.searchsorted(classes, labels[labelled])
    position = np.full(len(x), -1)
    position[labelled] = np.arange(len(labelled))
    q_rows = position[queries[labels[queries] >= 0]]
    k = min(k, len(labelled) - 1)
    sims, found = faiss.knn(bank[q_rows], bank, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    keep = _not_self(found, q_rows)
    sims, found = sims[keep].reshape(-1, k), found[keep].reshape(-1, k)
    preds = knn_vote(sims, bank_labels[found], len(classes), temperature)
    return float(np.mean(preds == bank_labels[q_rows]))


def evaluate_index(
    index_dir: str | Path,
    k: int = 20,
    temperature: float = 0.07,
    max_queries: int = 10_000,
    latency_queries: int = 200,
    seed: int = 0,
) -> EvalReport:
    """Evaluate ``index_dir`` (see the module docstring); ``k``/``temperature``: the k-NN vote."""
    if k < 1 or temperature <= 0 or max_queries < 1 or latency_queries < 1:
        raise ValueError("k, max_queries and latency_queries must be >= 1, temperature > 0")
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    index = load_index(index_dir / INDEX_NAME, manifest.get("search_params") or None)
    with Store(index_dir / DB_NAME, readonly=True) as store:
        ids, shard_numbers, rows = store.embedded_locations()
        names = [r.label for r in store.iter_rows(EMBEDDED)]
    if len(ids) < 2:
        raise IndexDirError(f"{index_dir}: need at least 2 indexed images to evaluate")
    x = shards.gather(index_dir, shard_numbers, rows)
    n = len(x)
    classes, labels = class_indices(names)
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(n, min(max_queries, n), replace=False))

    knn_top1 = _knn_top1(x, labels, queries, k, temperature)

    top = min(PRECISION_K, n - 1)
    exact = _without_self(faiss.knn(x[queries], x, top + 1,
                                    metric=faiss.METRIC_INNER_PRODUCT)[1], queries, top)
    id_to_row = {int(i): r for r, i in enumerate(ids)}
    found = search(index, x[queries], top + 1)[1]
    found_rows = np.vectorize(lambda i: id_to_row.get(int(i), -1), otypes=[np.int64])(found)
    approx = _without_self(found_rows, queries, top)
    recall = recall_at_k(approx, exact, top)

    precision = None
    labelled_q = labels[queries] >= 0
    if len(classes) >= 2 and labelled_q.any():
        neighbour_labels = np.where(approx >= 0, labels[approx], -2)
        same = neighbour_labels[labelled_q] == labels[queries][labelled_q][:, None]
        precision = float(same.mean())

    timings = []
    sample = x[rng.choice(n, latency_queries, replace=n < latency_queries)]
    for q in sample[: min(10, latency_queries)]:  # warm-up
        search(index, q, PRECISION_K)
    for q in sample:
        t0 = perf_counter()
        search(index, q, PRECISION_K)
        timings.append((perf_counter() - t0) * 1000)
    p50, p95, p99 = np.percentile(timings, [50, 95, 99])
    return EvalReport(
        count=n, labelled=int((labels >= 0).sum()), classes=len(classes),
        queries=len(queries), k=k, temperature=temperature, knn_top1=knn_top1,
        precision_at_10=precision, recall_at_10=round(recall, 4),
        latency_ms_p50=float(p50), latency_ms_p95=float(p95), latency_ms_p99=float(p99),
        latency_queries=latency_queries, index_type=manifest["index_type"],
        search_params=manifest["search_params"],
    )
