"""FAISS core of the index: choose, build, tune, save, load and search a cosine index.

Every index scores by inner product (``METRIC_INNER_PRODUCT``) on L2-normalised vectors,
which is cosine similarity; inputs that are not unit-norm are normalised on a copy.
Every vector carries the stable integer id of its row in the metadata DB: IVF indices
store ids in their inverted lists (``add_with_ids``), the others are wrapped in
``IndexIDMap2`` (ids plus a reverse map, so ``reconstruct(id)`` works). FAISS cannot
remove vectors from an HNSW graph, so an HNSW index is rebuilt, not edited.

Choosing an index follows FAISS's "Guidelines to choose an index"
(https://github.com/facebookresearch/faiss/wiki/Guidelines-to-choose-an-index), see
:func:`choose_index_type`. Search parameters are tuned to a *recall target*, not a
latency budget (autofaiss tunes to latency and can silently drop recall), see
:func:`tune_search_params`; :func:`build_tuned_index` builds and tunes on queries held
out of the index. It is the one way an index is built: ``groco index build``, ``update``
(when the index cannot be edited in place) and ``merge`` all reach it through
:func:`groco.index.indexfile.write_index`.

Typical use::

    index, params = build_tuned_index(vectors, ids)          # auto type, recall >= 0.95
    save_index(index, "index/index.faiss")                   # params go to the manifest
    index = load_index("index/index.faiss", params)
    scores, ids = search(index, query_vectors, k=10)

A GPU is used where it pays when FAISS sees one: the k-means training of IVF indices and
the exact ground truth of the tuning run on it. The index built, tuned, saved and
searched is always a CPU index: the parameters are tuned for the index the searcher
loads (a GPU copy would search IVF's coarse centroids exactly and cannot hold HNSW, so
its recall is not the CPU index's). This module imports numpy, faiss and groco.fileio
only (search servers stay small).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from groco.fileio import atomic_path

log = logging.getLogger(__name__)

FLAT_MAX_N = 10_000
"""Collections smaller than this use exact ``Flat`` search (< 1 ms a query at d=384)."""
HNSW_M = 32
"""Graph degree of the HNSW tier (FAISS's ``HNSW32``)."""
IVF_MIN_POINTS_PER_CENTROID = 39
"""FAISS warns below 39 training points per k-means centroid; ``K`` is capped by it."""
TRAIN_POINTS_PER_CENTROID = 64
"""Default training sample per IVF centroid (the guideline's range is 30..256)."""
MIN_TRAIN_SIZE = 65_536
"""Default training sample floor: what FAISS's PQ/OPQ training subsample to (256 * 256)."""
IVF_HNSW_QUANTIZER_MIN_N = 1_000_000
"""From this size on the IVF tier uses an HNSW32 coarse quantizer (the guideline's rule)."""
IDMAP2_BYTES_PER_VECTOR = 64
"""IndexIDMap2: 8 bytes of id plus ~56 bytes of reverse hash-map node and bucket."""
MEMORY_SLACK = 1.2
"""Multiplier on every estimate for allocator and vector-growth slack."""
DEFAULT_MEMORY_FRACTION = 0.5
"""``memory_bytes=None`` means this fraction of the RAM available now (the vectors being
indexed need room too)."""
PQ_M_CANDIDATES = (64, 48, 32, 24, 16, 12, 8, 4)
"""PQ sub-quantizer counts (bytes per code) the compressed tier picks from, largest first."""
EF_SEARCH_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
"""efSearch values :func:`tune_search_params` tries for HNSW, in order."""
TUNING_Z = 2.0
"""Standard errors the measured recall must clear the target by (one-sided ~98%)."""
SINGLE_QUERY_THREADS = 1
"""OpenMP threads for a one-query search; measured on 2 cores at 200k x 384 (p50/p99 ms,
2 threads vs 1): Flat 60/72 vs 20/30, IVF1024 nprobe=32 0.56/8.7 vs 0.56/4.8, HNSW32
ef=64 0.37/8.7 vs 0.35/4.5. FAISS parallelises over queries, so one query gains nothing
from more threads and pays for waking them."""

_METRIC = faiss.METRIC_INNER_PRODUCT


# ----------------------------------------------------------------------------- choosing


def default_memory_budget() -> int | None:
    """Bytes an index may use by default: ``DEFAULT_MEMORY_FRACTION`` of available RAM.

    Reads ``MemAvailable`` from ``/proc/meminfo`` (Linux), else ``sysconf``; ``None``
    when neither exists (no limit).
    """
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return int(available * DEFAULT_MEMORY_FRACTION)


def ivf_centroids(n: int) -> int:
    """Number of IVF lists ``K`` for ``n`` vectors.

    ``K`` is the smallest power of two >= ``4 * sqrt(n)`` (so within the guideline's
    ``4*sqrt(n)..16*sqrt(n)``), halved while fewer than ``IVF_MIN_POINTS_PER_CENTROID``
    vectors per centroid would be available to train it (that bound wins for small n).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    k = 1 << max(0, math.ceil(math.log2(4 * math.sqrt(n))))
    while k > 1 and n < IVF_MIN_POINTS_PER_CENTROID * k:
        k //= 2
    return k


def _hnsw_bytes(n: int, dim: int) -> float:
    # FAISS wiki: (4d + 8M) bytes a vector (vector + 2M int32 links on level 0), plus the
    # id map and ~12 bytes of level/offset bookkeeping.
    return MEMORY_SLACK * n * (4 * dim + 8 * HNSW_M + 12 + IDMAP2_BYTES_PER_VECTOR)


def _ivf_flat_bytes(n: int, dim: int, k: int, hnsw_quantizer: bool) -> float:
    quantizer = k * (4 * dim + (8 * HNSW_M + 12 if hnsw_quantizer else 0))
    return MEMORY_SLACK * (n * (4 * dim + 8) + quantizer)


def _ivf_pq_bytes(n: int, dim: int, k: int, m: int) -> float:
    quantizer = k * (4 * dim + 8 * HNSW_M + 12)
    tables = 4 * dim * dim + 256 * 4 * dim  # OPQ rotation + PQ codebooks
    return MEMORY_SLACK * (n * (m + 8) + quantizer + tables)


def choose_index_type(n: int, dim: int, memory_bytes: int | None = None,
                      on_disk: bool = False) -> str:
    """FAISS factory string for ``n`` cosine vectors of ``dim`` within ``memory_bytes``.

    Rules, after FAISS's "Guidelines to choose an index"
    (https://github.com/facebookresearch/faiss/wiki/Guidelines-to-choose-an-index):

    1. ``n < FLAT_MAX_N`` (10 000): ``"Flat"``. Exact, no training, and a query scans
       under 4 MFLOP at d=384: approximation buys nothing.
    2. ``HNSW32`` while its estimated size fits: ``1.2 * n * (4*dim + 8*32 + 12 + 64)``
       bytes (the wiki's ``4d + 8M`` per vector, level bookkeeping, the IndexIDMap2 id
       map, 20% slack). The fastest accurate choice when RAM is not a concern.
    3. ``IVF{K},Flat`` while ``1.2 * (n * (4*dim + 8) + K * 4*dim)`` fits: uncompressed
       vectors in inverted lists, no graph. ``K`` from :func:`ivf_centroids` (a power of
       two in ``4..8 * sqrt(n)``, >= 39 training points per centroid); from
       ``n >= 1M`` the coarse quantizer is ``HNSW32`` (``IVF{K}_HNSW32,Flat``), as the
       wiki advises for 1M..1B vectors.
    4. Otherwise compress: ``OPQ{M},IVF{K}_HNSW32,PQ{M}`` (``M`` bytes + 8 bytes of id a
       vector) with the largest ``M`` in ``PQ_M_CANDIDATES`` whose estimate fits (the
       smallest if none does: the budget is an estimate, best effort). When ``M`` does
       not divide ``dim`` OPQ also projects to ``D = M * (dim // M)`` dims
       (``OPQ{M}_{D}``).

    ``memory_bytes=None`` means :func:`default_memory_budget` (half the RAM available
    now, or no limit where that cannot be read); with an explicit budget the function is
    pure. Raises ``ValueError`` on ``n < 1`` or ``dim < 1``.

    ``on_disk``: the index's inverted lists will live on disk (:mod:`groco.index.ondisk`),
    so it must be an IVF: rules 1 and 2 are skipped, and the budget says whether the
    uncompressed lists (rule 3) fit in memory to be cached there, or compressed ones
    (rule 4) are needed.
    """
    if n < 1 or dim < 1:
        raise ValueError(f"need n >= 1 and dim >= 1, got n={n}, dim={dim}")
    if n < FLAT_MAX_N and not on_disk:
        return "Flat"
    budget = default_memory_budget() if memory_bytes is None else memory_bytes
    if budget is None:
        budget = math.inf
    if _hnsw_bytes(n, dim) <= budget and not on_disk:
        return f"HNSW{HNSW_M}"
    k = ivf_centroids(n)
    hnsw_quantizer = n >= IVF_HNSW_QUANTIZER_MIN_N
    if _ivf_flat_bytes(n, dim, k, hnsw_quantizer) <= budget:
        coarse = f"IVF{k}_HNSW{HNSW_M}" if hnsw_quantizer else f"IVF{k}"
        return f"{coarse},Flat"
    candidates = [m for m in PQ_M_CANDIDATES if m <= dim] or [dim]
    m = next((c for c in candidates if _ivf_pq_bytes(n, dim, k, c) <= budget), candidates[-1])
    opq = f"OPQ{m}" if dim % m == 0 else f"OPQ{m}_{m * (dim // m)}"
    return f"{opq},IVF{k}_HNSW{HNSW_M},PQ{m}"


# ----------------------------------------------------------------------------- helpers


def as_unit_vectors(x: np.ndarray, name: str = "vectors") -> np.ndarray:
    """``x`` as a C-contiguous float32 ``(n, d)`` array of unit rows.

    A 1-D array is one row. Rows already unit-norm (within 1e-4) are returned without a
    copy; otherwise a normalised copy is returned. Raises ``ValueError`` on a wrong
    shape, a non-finite value or a zero row (an embedding bug upstream, not a vector).
    """
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"{name} must be 2-D (n, dim), got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    sq = np.einsum("ij,ij->i", x, x)  # no (n, d) temporary, unlike np.linalg.norm
    if not np.isfinite(sq).all():
        raise ValueError(f"{name} contain non-finite values")
    if (sq == 0).any():
        raise ValueError(f"{name} row {int(np.argmax(sq == 0))} is all zeros")
    if np.abs(sq - 1.0).max(initial=0.0) > 2e-4:
        x = x.copy()
        faiss.normalize_L2(x)
    return x


def _make_index(dim: int, factory: str) -> faiss.Index:
    if not isinstance(factory, str) or not factory.strip():
        raise ValueError(f"factory must be a non-empty FAISS factory string, got {factory!r}")
    try:
        return faiss.index_factory(dim, factory, _METRIC)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1]
        raise ValueError(f"invalid FAISS factory string {factory!r} for dim={dim}: {reason}") from e


def _unwrap(index: faiss.Index) -> faiss.Index:
    """The innermost index under IDMap / PreTransform / Refine wrappers.

    The result does not own its memory: keep ``index`` alive while using it.
    """
    inner = faiss.downcast_index(index)
    while True:
        if isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
            inner = faiss.downcast_index(inner.index)
        elif isinstance(inner, faiss.IndexRefine):
            inner = faiss.downcast_index(inner.base_index)
        else:
            return inner


def _use_gpu(use_gpu: bool | None) -> bool:
    ngpu = faiss.get_num_gpus()
    if use_gpu and ngpu == 0:
        raise ValueError("use_gpu=True but FAISS sees no GPU")
    return ngpu > 0 if use_gpu is None else use_gpu


def check_ids(ids: np.ndarray | None, n: int) -> np.ndarray:
    """``ids`` as C-contiguous int64 of shape ``(n,)``, all distinct; ``None`` is ``0..n-1``.

    ``ValueError`` for another shape or a repeated id.
    """
    if ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (n,):
        raise ValueError(f"ids must have shape ({n},), got {ids.shape}")
    if len(np.unique(ids)) != n:
        raise ValueError("ids must be distinct")
    return ids


def _inputs(vectors: np.ndarray, ids: np.ndarray | None, factory: str,
            memory_bytes: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    """Unit vectors, checked ids and the factory string (``"auto"`` resolved)."""
    x = as_unit_vectors(vectors)
    n, dim = x.shape
    ids = check_ids(ids, n)
    if factory == "auto":
        factory = choose_index_type(n, dim, memory_bytes)
        log.info("auto index for n=%d, dim=%d: %s", n, dim, factory)
    return x, ids, factory


@contextlib.contextmanager
def _omp_threads(n: int) -> Iterator[None]:
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


# ----------------------------------------------------------------------------- sources


class VectorSource(Protocol):
    """Unit vectors under ids, read a chunk at a time: what an index is built from.

    Position ``i`` (``0 <= i < count``) is one vector. :meth:`chunks` yields every
    position once, in order, as ``(ids, vectors)``: C-contiguous int64 ``(m,)`` and float32
    unit rows ``(m, dim)``. :meth:`take` reads the ``(ids, vectors)`` at sorted positions;
    :meth:`subset` is the source of the positions where ``keep`` is true. A build from a
    source holds one chunk at a time (plus a training sample), never every vector:
    :class:`ArraySource` is one array in memory, :class:`groco.index.stored.ShardSource`
    the shards of an index directory.
    """

    count: int
    dim: int

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...

    def take(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def subset(self, keep: np.ndarray) -> VectorSource: ...


class ArraySource:
    """A :class:`VectorSource` over unit ``vectors`` and ``ids`` in memory (one chunk)."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.vectors, self.ids = vectors, ids
        self.count, self.dim = vectors.shape

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield self.ids, self.vectors

    def take(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.ids[positions], self.vectors[positions]

    def subset(self, keep: np.ndarray) -> ArraySource:
        return ArraySource(self.vectors[keep], self.ids[keep])


class MaskedSource:
    """The positions of ``source`` where ``keep`` is true, as a :class:`VectorSource`."""

    def __init__(self, source: VectorSource, keep: np.ndarray) -> None:
        self.source, self.keep = source, np.asarray(keep, dtype=bool)
        if self.keep.shape != (source.count,):
            raise ValueError(f"keep must have shape ({source.count},), got {self.keep.shape}")
        self.positions = np.flatnonzero(self.keep)
        self.count, self.dim = len(self.positions), source.dim

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        start = 0
        for ids, vectors in self.source.chunks():
            mask = self.keep[start:start + len(ids)]
            start += len(ids)
            if mask.all():
                yield ids, vectors
            elif mask.any():
                yield ids[mask], np.ascontiguousarray(vectors[mask])

    def take(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.source.take(self.positions[positions])

    def subset(self, keep: np.ndarray) -> MaskedSource:
        mask = np.zeros(self.source.count, dtype=bool)
        mask[self.positions[np.asarray(keep, dtype=bool)]] = True
        return MaskedSource(self.source, mask)


def _sample_positions(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted positions of a uniform sample of ``size`` of ``n`` (all of them if fewer)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


# ----------------------------------------------------------------------------- building


def _train(index: faiss.Index, source: VectorSource, train_size: int | None, gpu: bool,
           seed: int) -> None:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and source.count < ivf.nlist:
        raise ValueError(f"{ivf.nlist} IVF lists need at least that many vectors, got "
                         f"{source.count}")
    if train_size is None:
        nlist = ivf.nlist if ivf is not None else 0
        train_size = max(TRAIN_POINTS_PER_CENTROID * nlist, MIN_TRAIN_SIZE)
    if isinstance(source, ArraySource) and source.count <= train_size:
        sample = source.vectors  # no copy
    else:
        sample = source.take(_sample_positions(source.count, train_size, seed))[1]
    clustering_index = None
    if ivf is not None:
        # k-means assigns with an exact flat index (on the GPU when there is one) rather
        # than through the coarse quantizer itself, which for HNSW would rebuild a graph
        # every iteration.
        clustering_index = faiss.IndexFlat(ivf.d, ivf.metric_type)
        if gpu:
            try:
                clustering_index = faiss.index_cpu_to_all_gpus(clustering_index)
            except RuntimeError as e:
                log.warning("k-means on CPU, GPU clustering index failed: %s", e)
        ivf.clustering_index = clustering_index
        if isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ):
            # Polysemous training (on by default) reorders PQ codes for Hamming-distance
            # filtering, which groco does not use; it takes minutes of simulated annealing.
            faiss.downcast_index(ivf).do_polysemous_training = False
    t0 = time.perf_counter()
    try:
        index.train(sample)
    finally:
        if ivf is not None:
            ivf.clustering_index = None
    log.info("trained on %d vectors in %.1f s", len(sample), time.perf_counter() - t0)


def trained_empty_index(
    source: VectorSource,
    factory: str,
    use_gpu: bool | None = None,
    train_size: int | None = None,
    seed: int = 0,
) -> faiss.Index:
    """An empty index of ``factory`` (not ``"auto"``), trained on a sample of ``source``.

    The sample is ``train_size`` positions drawn uniformly with ``seed`` (default
    ``max(64 * K, 65536)`` for ``K`` IVF lists, inside the guideline's 30..256 a list),
    read from the source without loading the rest. Indices without native ids are
    wrapped in ``IndexIDMap2``. Fill it with :func:`fill_index` (or, for on-disk lists,
    :mod:`groco.index.ondisk`).
    """
    gpu = _use_gpu(use_gpu)
    index = _make_index(source.dim, factory)
    if not index.is_trained:
        _train(index, source, train_size, gpu, seed)
    top = faiss.downcast_index(index)
    native_ids = faiss.try_extract_index_ivf(index) is not None or isinstance(
        top, (faiss.IndexIDMap, faiss.IndexIDMap2)
    )
    return index if native_ids else faiss.IndexIDMap2(index)


def fill_index(index: faiss.Index, source: VectorSource) -> faiss.Index:
    """Add every vector of ``source`` to ``index`` under its id, one chunk at a time."""
    t0 = time.perf_counter()
    for ids, vectors in source.chunks():
        index.add_with_ids(vectors, ids)
    log.info("added %d vectors in %.1f s", source.count, time.perf_counter() - t0)
    return index


def build_index_from(
    source: VectorSource,
    factory: str = "auto",
    memory_bytes: int | None = None,
    use_gpu: bool | None = None,
    train_size: int | None = None,
    seed: int = 0,
) -> faiss.Index:
    """:func:`build_index` streaming from a :class:`VectorSource`: trained on a sample,
    then filled chunk by chunk, so memory is the index plus one chunk."""
    if factory == "auto":
        factory = choose_index_type(source.count, source.dim, memory_bytes)
        log.info("auto index for n=%d, dim=%d: %s", source.count, source.dim, factory)
    index = trained_empty_index(source, factory, use_gpu, train_size, seed)
    return fill_index(index, source)


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray | None,
    factory: str = "auto",
    memory_bytes: int | None = None,
    use_gpu: bool | None = None,
    train_size: int | None = None,
    seed: int = 0,
) -> faiss.Index:
    """Build a cosine-similarity index holding ``vectors`` under ``ids``.

    Args:
        vectors: ``(n, d)`` embeddings; normalised on a copy if not unit-norm.
        ids: ``(n,)`` distinct int64 ids (the metadata DB's); ``None`` means ``0..n-1``.
        factory: a FAISS ``index_factory`` string, or ``"auto"`` for
            :func:`choose_index_type`. An explicit string is used as given (with
            ``METRIC_INNER_PRODUCT``); an invalid one raises ``ValueError``.
        memory_bytes: budget for ``"auto"`` (``None``: :func:`default_memory_budget`).
        use_gpu: train IVF k-means on the GPU; ``None`` means "if FAISS sees one".
        train_size: cap on the training sample for indices that need training; default
            ``max(64 * K, 65536)`` for ``K`` IVF lists (the guideline's 30..256 a list),
            65536 for other trained indices. The sample is uniform, drawn with ``seed``.
        seed: seed of the training sample.

    Returns:
        A trained CPU index with every vector added: IVF-based indices carry the ids
        natively, others are wrapped in ``IndexIDMap2`` (unless the factory already
        starts with ``IDMap``). Search parameters are FAISS's defaults: call
        :func:`tune_search_params` next. :func:`build_index_from` is the same from a
        :class:`VectorSource` (streaming).
    """
    x, ids, factory = _inputs(vectors, ids, factory, memory_bytes)
    return build_index_from(ArraySource(x, ids), factory, use_gpu=use_gpu,
                            train_size=train_size, seed=seed)


# ----------------------------------------------------------------------------- tuning


def apply_search_params(index: faiss.Index, params: Mapping[str, float] | None) -> None:
    """Set search parameters such as ``{"efSearch": 64}`` or ``{"nprobe": 16}``.

    Keys are FAISS ``ParameterSpace`` names; ``recall@k`` entries (records of
    :func:`tune_search_params`) are skipped. Raises ``ValueError`` for a parameter the
    index does not have.
    """
    if not params:
        return
    space = faiss.ParameterSpace()
    for name, value in params.items():
        if name.startswith("recall@"):
            continue
        try:
            space.set_index_parameter(index, name, float(value))
        except RuntimeError as e:
            raise ValueError(f"cannot set search parameter {name}={value}: {e}") from e


def _exact_knn(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if faiss.get_num_gpus() > 0:
        try:
            return faiss.knn_gpu(faiss.StandardGpuResources(), queries, base, k, metric=_METRIC)
        except (RuntimeError, AttributeError) as e:
            log.warning("exact search on CPU, GPU brute force failed: %s", e)
    return faiss.knn(queries, base, k, metric=_METRIC)


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
        sims, rows = _exact_knn(queries, vectors, kk)
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


def _query_recalls(approx: np.ndarray, exact: np.ndarray, k: int) -> np.ndarray:
    a, e = approx[:, :k], exact[:, :k]
    hits = ((a[:, :, None] == e[:, None, :]) & (a[:, :, None] >= 0)).any(axis=2)
    return hits.sum(axis=1) / k


def recall_at_k(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean over queries of ``|approx top-k ∩ exact top-k| / k`` (``-1`` ids never count)."""
    return float(_query_recalls(approx, exact, k).mean())


def tuning_queries(vectors: np.ndarray, n_queries: int, seed: int) -> np.ndarray:
    """Held-out-like queries made from a sample of the indexed (unit) ``vectors``.

    For each sampled ``v`` with nearest other indexed vector at distance ``r``, the query
    is ``normalize(v + r * g)`` with ``g`` a random unit direction: a new vector whose
    nearest indexed neighbour is as far as a typical vector's is. Querying with ``v``
    itself (leave-one-out) over-estimates recall, because the graph or list holding
    ``v`` leads straight to its neighbours; this estimate errs low instead. Measured with
    benchmarks/index.py's generator (50k x 384, 2000 clusters, intrinsic dim 32, spread
    1.5; HNSW32 at efSearch 16/24/32/48/64): fresh queries 0.906/0.961/0.983/0.989/0.994,
    this estimate 0.849/0.916/0.948/0.974/0.983, leave-one-out 0.987/0.993/0.995/0.996/
    0.997. :func:`tuning_queries_from` is the same over a :class:`VectorSource`.
    """
    return tuning_queries_from(ArraySource(vectors, np.arange(len(vectors))), n_queries, seed)


def tuning_queries_from(source: VectorSource, n_queries: int, seed: int) -> np.ndarray:
    """:func:`tuning_queries` over a :class:`VectorSource` (streamed exact search)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(source.count, min(n_queries, source.count), replace=False)
    v = np.ascontiguousarray(source.take(np.sort(rows))[1])
    sims = exact_knn_source(v, source, 2)[0][:, 1]  # column 0 is v itself (or a duplicate)
    r = np.sqrt(np.clip(2.0 - 2.0 * sims, 0.0, None)).astype(np.float32)
    g = rng.standard_normal(v.shape, dtype=np.float32)
    faiss.normalize_L2(g)
    q = v + r[:, None] * g
    faiss.normalize_L2(q)
    return q


def _nprobe_steps(nlist: int) -> list[int]:
    steps, p = [], 1
    while p < nlist:
        steps += [p, p * 3 // 2] if p >= 2 else [p]
        p *= 2
    return sorted({s for s in steps if s < nlist} | {nlist})


def tune_search_params(
    index: faiss.Index,
    vectors: np.ndarray,
    *,
    ids: np.ndarray | None = None,
    queries: np.ndarray | None = None,
    target_recall: float = 0.95,
    k: int = 10,
    n_queries: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Raise the index's search effort until recall@k reaches ``target_recall``; apply it.

    Queries are ``queries`` when given: vectors from the collection's distribution that
    are *not* in the index (what :func:`build_tuned_index` holds out), an unbiased
    estimate. Otherwise :func:`tuning_queries` makes ``n_queries`` from indexed vectors,
    an estimate that errs low (more search effort than needed, never less in our
    measurements). The ground truth is an exact inner-product search over ``vectors``.
    Recall@k = ``|approx top-k ∩ exact top-k| / k`` averaged over queries.

    The knob rises through fixed steps, each set through ``faiss.ParameterSpace``:
    ``efSearch`` in ``EF_SEARCH_STEPS`` for HNSW, ``nprobe`` in 1, 2, 3, 4, 6, 8, 12 ...
    up to ``nlist`` for IVF (with ``quantizer_efSearch = max(64, 2 * nprobe)`` for an
    HNSW coarse quantizer). The first value whose recall minus ``TUNING_Z`` (2) standard
    errors over the queries reaches the target is kept, so that sampling noise in the
    estimate (about 0.003 with 1000 queries) does not land just below the target; if
    none does, the last is kept and a warning logged (compressed indices can top out
    below it). The returned recall is the measured mean.

    Args:
        index: a built index.
        vectors: the ``(n, d)`` vectors in it, row ``i`` stored under ``ids[i]``.
        ids: ``(n,)`` ids as given to :func:`build_index`; ``None`` means ``0..n-1``.
        queries: optional ``(m, d)`` held-out queries (``n_queries`` is then unused).

    Returns:
        The parameters and the measured recall, e.g. ``{"efSearch": 64,
        "recall@10": 0.97}`` or ``{"nprobe": 16, "recall@10": 0.96}``; exact indices
        (Flat) give ``{"recall@10": 1.0}`` without measuring; others without a knob
        give their measured recall alone. :func:`tune_search_params_from` is the same
        over a :class:`VectorSource` (the ground truth streamed chunk by chunk).
    """
    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    if isinstance(_unwrap(index), faiss.IndexFlat):
        return {f"recall@{k}": 1.0}
    x = as_unit_vectors(vectors)
    return tune_search_params_from(index, ArraySource(x, check_ids(ids, len(x))),
                                   queries=queries, target_recall=target_recall, k=k,
                                   n_queries=n_queries, seed=seed)


def tune_search_params_from(
    index: faiss.Index,
    source: VectorSource,
    *,
    queries: np.ndarray | None = None,
    target_recall: float = 0.95,
    k: int = 10,
    n_queries: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """:func:`tune_search_params` with the indexed vectors given as a :class:`VectorSource`."""
    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    key = f"recall@{k}"
    inner = _unwrap(index)
    if isinstance(inner, faiss.IndexFlat):
        return {key: 1.0}
    n = source.count
    if n <= k:
        raise ValueError(f"need more than k={k} vectors to tune, got {n}")
    if index.ntotal != n:
        raise ValueError(f"the index holds {index.ntotal} vectors, vectors has {n}")
    if queries is None:
        queries = tuning_queries_from(source, n_queries, seed)
    else:
        queries = as_unit_vectors(queries, "queries")
    exact = exact_knn_source(queries, source, k)[1]

    def measure(params: dict[str, float]) -> tuple[float, float]:
        apply_search_params(index, params)
        per_query = _query_recalls(index.search(queries, k)[1], exact, k)
        sem = per_query.std(ddof=1) / np.sqrt(len(per_query)) if len(per_query) > 1 else 0.0
        return float(per_query.mean()), float(per_query.mean() - TUNING_Z * sem)

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        hnsw_quantizer = isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)
        trials = []
        for p in _nprobe_steps(ivf.nlist):
            params = {"nprobe": float(p)}
            if hnsw_quantizer:
                params["quantizer_efSearch"] = float(max(64, 2 * p))
            trials.append(params)
    elif isinstance(inner, faiss.IndexHNSW):
        trials = [{"efSearch": float(ef)} for ef in EF_SEARCH_STEPS if ef >= k]
    else:
        trials = [{}]
    for params in trials:
        recall, lower = measure(params)
        log.debug("%s -> %s=%.4f (lower bound %.4f)", params, key, recall, lower)
        if lower >= target_recall:
            break
    else:
        if params:
            log.warning("%s=%.4f < target %.2f at the largest setting %s",
                        key, recall, target_recall, params)
    result = {name: int(v) for name, v in params.items()}
    result[key] = round(recall, 4)
    return result


def holdout_mask(n: int, n_queries: int, k: int, seed: int) -> np.ndarray | None:
    """Which of ``n`` positions :func:`build_tuned_index` holds out as tuning queries:
    ``min(n_queries, n // 10)`` drawn with ``seed``, or ``None`` when that is ``<= k``."""
    m = min(n_queries, n // 10)
    if m <= k:
        return None
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).choice(n, m, replace=False)] = True
    return held


def is_exact(factory: str, dim: int) -> bool:
    """True when ``factory`` makes an exact (Flat) index, which needs no tuning."""
    return isinstance(_unwrap(_make_index(dim, factory)), faiss.IndexFlat)


def build_tuned_index(
    vectors: np.ndarray,
    ids: np.ndarray | None,
    factory: str = "auto",
    memory_bytes: int | None = None,
    use_gpu: bool | None = None,
    train_size: int | None = None,
    target_recall: float = 0.95,
    k: int = 10,
    n_queries: int = 1000,
    seed: int = 0,
) -> tuple[faiss.Index, dict[str, float]]:
    """:func:`build_index` tuned on genuinely held-out queries: ``(index, params)``.

    ``factory="auto"`` is resolved for the full collection first. Then ``n_queries``
    random vectors (at most a tenth of the collection) are held out, the index is built
    on the others, :func:`tune_search_params` runs with the held-out vectors as
    queries, and they are added last: the result holds every vector under its id, with
    the tuned parameters applied. The held-out queries are members of the collection
    the index has not seen, so the recall estimate is unbiased; adding them back grows
    the index by at most a tenth. Costs one extra copy of the vectors while building
    (:func:`build_tuned_index_from` streams from a source and does not).
    Exact indices skip the hold-out and give ``{"recall@k": 1.0}``; collections too small
    to hold out 11+ queries are tuned with :func:`tuning_queries`, and an approximate
    index of ``k`` vectors or fewer is left untuned with ``{"recall@k": nan}``.
    """
    x, ids, factory = _inputs(vectors, ids, factory, memory_bytes)
    return build_tuned_index_from(ArraySource(x, ids), factory, use_gpu=use_gpu,
                                  train_size=train_size, target_recall=target_recall, k=k,
                                  n_queries=n_queries, seed=seed)


def build_tuned_index_from(
    source: VectorSource,
    factory: str = "auto",
    memory_bytes: int | None = None,
    use_gpu: bool | None = None,
    train_size: int | None = None,
    target_recall: float = 0.95,
    k: int = 10,
    n_queries: int = 1000,
    seed: int = 0,
) -> tuple[faiss.Index, dict[str, float]]:
    """:func:`build_tuned_index` streaming from a :class:`VectorSource`: the same index and
    parameters, with memory the index plus one chunk and the training sample."""
    n, dim = source.count, source.dim
    if factory == "auto":
        factory = choose_index_type(n, dim, memory_bytes)
        log.info("auto index for n=%d, dim=%d: %s", n, dim, factory)
    options = {"use_gpu": use_gpu, "train_size": train_size, "seed": seed}
    exact = is_exact(factory, dim)
    held = None if exact else holdout_mask(n, n_queries, k, seed)
    if held is None:
        index = build_index_from(source, factory, **options)
        if n <= k and not exact:
            log.info("%d vectors: too few to measure recall@%d, search parameters untuned",
                     n, k)
            return index, {f"recall@{k}": math.nan}
        params = tune_search_params_from(index, source, target_recall=target_recall, k=k,
                                         n_queries=n_queries, seed=seed)
        return index, params
    rest = source.subset(~held)
    held_ids, held_x = source.take(np.flatnonzero(held))
    index = build_index_from(rest, factory, **options)
    params = tune_search_params_from(index, rest, queries=held_x,
                                     target_recall=target_recall, k=k)
    index.add_with_ids(np.ascontiguousarray(held_x), held_ids)
    return index, params


# ----------------------------------------------------------------------------- files


def save_index(index: faiss.Index, path: str | os.PathLike[str]) -> None:
    """Write ``index`` to ``path`` atomically (:func:`groco.fileio.atomic_path`).

    Readers see the old file or the new one, never a partial one, and a failed write
    leaves no temporary file behind.
    """
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def load_index(
    path: str | os.PathLike[str], params: Mapping[str, float] | None = None,
    read_only: bool = False,
) -> faiss.Index:
    """Read a CPU index written by :func:`save_index` and apply ``params`` to it.

    ``params`` is what :func:`tune_search_params` returned (FAISS also stores efSearch
    and nprobe in the file; applying them again makes the recorded values win). An
    index with on-disk inverted lists (:mod:`groco.index.ondisk`) finds its ``.ivfdata``
    file beside ``path`` (``IO_FLAG_ONDISK_SAME_DIR``: the name stored in the index is a
    bare file name) and memory-maps it rather than reading it; ``read_only`` maps it
    read-only (``IO_FLAG_READ_ONLY``), as searchers do. Its lists are paged in by the
    searches themselves (FAISS's prefetch threads are turned off).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no index file at {path}")
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR | (faiss.IO_FLAG_READ_ONLY if read_only else 0)
    with quiet_stdout():  # FAISS prints the .ivfdata path it switched to on stdout
        index = faiss.read_index(str(path), flags)
    ivf = faiss.try_extract_index_ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
    if isinstance(lists, faiss.OnDiskInvertedLists):
        # FAISS starts ONDISK_PREFETCH_THREADS (32) threads a search to page the probed
        # lists in; page faults serve a query faster (20k x 64, IVF512 nprobe=64 on 2
        # cores: p50 7.7 ms with the threads, in-RAM speed without).
        lists.prefetch_nthread = 0
    apply_search_params(index, params)
    return index


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence what FAISS's C++ code ``printf``s (on-disk lists print file names and
    sizes) by pointing file descriptor 1 at ``/dev/null`` meanwhile; C's and Python's
    buffers are flushed on both sides, so nothing of it reaches ``--json`` output later."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    try:
        saved = os.dup(1)
    except OSError:  # no stdout at all
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


# ----------------------------------------------------------------------------- searching


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
        with _omp_threads(SINGLE_QUERY_THREADS):
            return index.search(q, k)
    return index.search(q, k)
