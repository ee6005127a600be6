"""Search restricted to a subset of ids (a folder label), done inside the index: FAISS
searches only those ids (an ``IDSelectorBitmap`` in the search parameters), or the subset's
stored vectors are searched exactly. Never an over-fetch of the unfiltered neighbours,
which misses a rare label's items whenever more than the over-fetch of others are nearer.

Which way (:func:`search_subset`), for ``m`` ids of ``n`` and ``want = min(k, m)``:

- a Flat index (exact): FAISS with the selector; its answer is exact and complete;
- ``m <= EXACT_MAX``: exact inner products over the ``m`` stored vectors (a rare label:
  a graph or list search restricted to few ids visits most of the index to find them);
- otherwise FAISS with the selector, at the index's own tuned knobs (``nprobe``,
  ``max_codes``, ``efSearch``); an approximate search may find fewer than ``want`` of
  them in the lists or the graph it visits, and then the exact search answers instead.

So ``want`` results come back whenever the subset holds them (``min_score`` aside).
"""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np

from ..faiss.choose import FLAT_MAX_N
from ..faiss.factory import is_exact
from ..faiss.io import omp_threads
from ..faiss.query import SINGLE_QUERY_THREADS, exact_knn_source
from ..faiss.source import VectorSource

EXACT_MAX = FLAT_MAX_N
"""Subsets up to this size are searched exactly over their stored vectors, as collections
up to this size get a Flat index (see :data:`groco.index.faiss.choose.FLAT_MAX_N`)."""


def selector_params(index: faiss.Index, selector: faiss.IDSelector
                    ) -> faiss.SearchParameters | None:
    """Search parameters that restrict ``index``'s search to ``selector`` and keep the
    index's own search knobs; ``None`` for an index type that takes no selector.

    ``IndexIDMap``/``IndexIDMap2`` pass the parameters to their inner index (translating
    the selector to its internal ids); ``IndexPreTransform`` takes them as
    ``index_params``; IVF, HNSW and Flat cores take the selector itself.
    """
    inner = faiss.downcast_index(index)
    if isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return selector_params(inner.index, selector)
    if isinstance(inner, faiss.IndexPreTransform):
        core = selector_params(inner.index, selector)
        return None if core is None else faiss.SearchParametersPreTransform(index_params=core)
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe,
                                         max_codes=ivf.max_codes)
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=inner.hnsw.efSearch)
    if isinstance(inner, faiss.IndexFlat):
        return faiss.SearchParameters(sel=selector)
    return None


def id_bitmap(ids: np.ndarray) -> np.ndarray:
    """The bitmap of ``IDSelectorBitmap``: bit ``i % 8`` of byte ``i // 8`` set for each
    id ``i`` in ``ids`` (built in milliseconds, where an ``IDSelectorBatch``'s hash set of
    500k ids takes 130 ms)."""
    flags = np.zeros(int(ids.max()) + 1, dtype=bool)
    flags[ids] = True
    return np.packbits(flags, bitorder="little")


def search_selected(index: faiss.Index, query: np.ndarray, k: int,
                    ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """FAISS's ``k`` nearest of one unit ``(1, d)`` query among ``ids`` (not empty):
    ``(scores, ids)`` (``-1`` ids mark empty slots); ``None`` when ``index`` takes no
    selector. The parameters are made for this search alone: ``IndexIDMap`` swaps their
    selector while it searches."""
    bitmap = id_bitmap(np.asarray(ids, dtype=np.int64))  # alive until the search returns
    params = selector_params(index, faiss.IDSelectorBitmap(bitmap))
    if params is None:
        return None
    with omp_threads(SINGLE_QUERY_THREADS):
        return index.search(query, k, params=params)


def search_subset(index: faiss.Index, query: np.ndarray, k: int, ids: np.ndarray,
                  stored: Callable[[], VectorSource]) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest of one unit ``(1, d)`` query among ``ids`` (the module docstring
    says how): ``(scores, ids)`` of shape ``(1, k)``, best first, ``-1`` ids in empty
    slots. ``stored()`` gives the subset's stored vectors, read only when searched
    exactly."""
    want = min(k, len(ids))
    if want == 0:
        return np.full((1, k), -np.inf, np.float32), np.full((1, k), -1, np.int64)
    if is_exact(index) or len(ids) > EXACT_MAX:
        found = search_selected(index, query, k, ids)
        if found is not None and (is_exact(index) or int((found[1] >= 0).sum()) >= want):
            return found
    return exact_knn_source(query, stored(), k)
