"""Searching an index: groco's :func:`search`, exact search streamed over a
:class:`~groco.index.faiss.source.VectorSource` (the ground truth of tuning and
evaluation), and recall@k of one against the other."""

from __future__ import annotations

import functools
import logging

import faiss
import numpy as np

from .factory import METRIC
from .io import omp_threads
from .source import VectorSource, as_unit_vectors

log = logging.getLogger(__name__)

SINGLE_QUERY_THREADS = 1
"""OpenMP threads for a one-query search; measured on 2 cores at 200k x 384 (p50/p99 ms,
2 threads vs 1): Flat 60/72 vs 20/30, IVF1024 nprobe=32 0.56/8.7 vs 0.56/4.8, HNSW32
ef=64 0.37/8.7 vs 0.35/4.5. FAISS parallelises over queries, so one query gains nothing
from more threads and pays for waking them."""


def search(index: faiss.Index, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar indexed vectors of each query: ``(scores, ids)``.

    ``queries`` is ``(m, d)`` or one ``(d,)`` vector (normalised if needed). Returns
    float32 cosine similarities and int64 ids, both ``(m, k)``, best first; an id of
    ``-1`` marks an empty slot (fewer than ``k`` vectors found). A single query runs on
    ``SINGLE_QUERY_THREADS`` OpenMP threads (faster and steadier, see there); batches
    use all threads.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = as_unit_vectors(queries, "queries")
    if q.shape[1] != index.d:
        raise ValueError(f"queries have dim {q.shape[1]}, the index has {index.d}")
    if len(q) == 1:
        with omp_threads(SINGLE_QUERY_THREADS):
            return index.search(q, k)
    return index.search(q, k)


@functools.cache
def _gpu_resources() -> faiss.StandardGpuResources:
    return faiss.StandardGpuResources()


def exact_knn(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest inner products of each of ``queries`` over ``base``: ``(scores,
    rows)``, by matrix products (faiss-gpu's brute force on a GPU when there is one, one
    resource object reused, else ``faiss.knn`` on every core)."""
    if faiss.get_num_gpus() > 0:
        try:
            return faiss.knn_gpu(_gpu_resources(), queries, base, k, metric=METRIC)
        except (RuntimeError, AttributeError) as e:
            log.warning("exact search on CPU, GPU brute force failed: %s", e)
    return faiss.knn(queries, base, k, metric=METRIC)


def exact_knn_source(queries: np.ndarray, source: VectorSource,
                     k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of ``queries`` over every vector of ``source``:
    ``(scores, ids)`` (the source's ids), one chunk at a time. On a tie the earlier
    chunk wins, so a one-chunk source gives exactly :func:`faiss.knn`'s answer."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    first = True
    for ids, vectors in source.chunks():
        kk = min(k, len(vectors))
        sims, rows = exact_knn(queries, vectors, kk)
        found = np.where(rows >= 0, ids[np.clip(rows, 0, None)], -1)
        if first:
            best_s[:, :kk], best_i[:, :kk] = sims, found
            first = False
            continue
        s = np.concatenate([best_s, sims], axis=1)
        i = np.concatenate([best_i, found], axis=1)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
    return best_s, best_i


def query_recalls(approx: np.ndarray, exact: np.ndarray, k: int) -> np.ndarray:
    """Per query, ``|approx top-k ∩ exact top-k| / k`` (``-1`` ids never count)."""
    a, e = approx[:, :k], exact[:, :k]
    hits = ((a[:, :, None] == e[:, None, :]) & (a[:, :, None] >= 0)).any(axis=2)
    return hits.sum(axis=1) / k


def recall_at_k(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean over queries of ``|approx top-k ∩ exact top-k| / k`` (``-1`` ids never count)."""
    return float(query_recalls(approx, exact, k).mean())
