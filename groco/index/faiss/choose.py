"""Which FAISS index a collection gets: a factory string for its size and a memory budget.

The rules follow FAISS's "Guidelines to choose an index"
(https://github.com/facebookresearch/faiss/wiki/Guidelines-to-choose-an-index), see
:func:`choose_index_type`. Pure arithmetic: no FAISS import.
"""

from __future__ import annotations

import math
import os

from .spec import BuildSpec

FLAT_MAX_N = 10_000
"""Collections smaller than this use exact ``Flat`` search (< 1 ms a query at d=384)."""
HNSW_M = 32
"""Graph degree of the HNSW tier (FAISS's ``HNSW32``)."""
IVF_MIN_POINTS_PER_CENTROID = 39
"""FAISS warns below 39 training points per k-means centroid; ``K`` is capped by it."""
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


def factory_for(spec: BuildSpec, n: int, dim: int, on_disk: bool = False) -> str:
    """``spec.factory``, or for ``"auto"`` :func:`choose_index_type` of ``n`` x ``dim``
    within ``spec.memory_bytes``."""
    if spec.factory == "auto":
        return choose_index_type(n, dim, spec.memory_bytes, on_disk=on_disk)
    return spec.factory
