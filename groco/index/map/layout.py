"""The map's 2D coordinates: UMAP on the k-NN graph, and placement of new items on a map.

- :func:`fit_layout`: UMAP (McInnes et al. 2018, ``umap-learn``) on the graph of
  :mod:`groco.index.map.graph` (``precomputed_knn=(indices, distances)``), 2 components,
  spectral initialisation. UMAP's fuzzy graph is sparse: nothing is ``N x N``.
- :func:`place`: UMAP's ``transform`` step with FAISS instead of NNDescent: a new item
  starts at the membership-weighted mean of its mapped neighbours' coordinates and is
  then optimised against the fixed map for ``n_epochs / 3`` epochs (umap-learn's
  ``UMAP.transform``). Without umap-learn it stays at the mean weighted by
  ``exp(-(d - d_min) / spread)``.

``umap-learn`` is an optional extra (``pip install 'groco[map]'``): :func:`umap_module`
raises :class:`MapExtraMissing` (one line naming the extra) without it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from types import ModuleType

import numpy as np

from groco.progress import bar_settings

log = logging.getLogger(__name__)

DEFAULT_NEIGHBORS = 15
DEFAULT_MIN_DIST = 0.1
EXTRA_HINT = "pip install 'groco[map]'"


class MapExtraMissing(ImportError):
    """``umap-learn`` is not installed (one-line message naming the extra)."""


def umap_module() -> ModuleType:
    """The ``umap`` module, or :class:`MapExtraMissing`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import umap
            import umap.umap_  # noqa: F401  (the functions placement uses)
    except ImportError as error:
        raise MapExtraMissing(f"the embedding map needs umap-learn: {EXTRA_HINT}") from error
    return umap


def fit_layout(umap_mod: ModuleType, vectors: np.ndarray,
               graph: tuple[np.ndarray, np.ndarray], min_dist: float,
               n_epochs: int | None, seed: int | None, progress: bool = True
               ) -> tuple[np.ndarray, float, float]:
    """``(xy, a, b)``: UMAP's 2D coordinates (float32, ``N x 2``) of ``vectors`` over
    ``graph`` (``(positions, distances)``, ``N x k``, each item first in its row), and the
    ``a``/``b`` of its curve (placement needs them)."""
    k = graph[0].shape[1]
    reducer = umap_mod.UMAP(n_neighbors=k, n_components=2, metric="euclidean",
                            min_dist=min_dist, n_epochs=n_epochs, random_state=seed,
                            precomputed_knn=graph, init="spectral", verbose=progress,
                            tqdm_kwds={"desc": "layout epochs", "disable": not progress,
                                       **bar_settings()})
    log.info("layout: UMAP's fuzzy graph and spectral start, then its epochs")
    # umap-learn's verbose lines go to stdout (which --json owns): dropped, its bar kept
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        xy = reducer.fit_transform(vectors).astype(np.float32)
    return xy, float(reducer._a), float(reducer._b)


def place(umap_mod: ModuleType | None, knn_idx: np.ndarray, knn_dist: np.ndarray,
          base_xy: np.ndarray, n_neighbors: int, a: float, b: float, n_epochs: int | None,
          seed: int) -> tuple[np.ndarray, bool]:
    """Coordinates of new points from their neighbours among the mapped ones (positions in
    ``base_xy``, ``-1`` = none): UMAP's transform (membership strengths, weighted-mean
    start, ``n_epochs`` of optimisation against the fixed map), or without umap-learn
    (``umap_mod is None``) the mean weighted by ``exp(-(d - d_min) / spread)``. The bool
    says whether UMAP's optimisation ran."""
    m = len(knn_idx)
    valid = knn_idx >= 0
    if umap_mod is None:
        d = np.where(valid, knn_dist, np.inf)
        d0 = d.min(axis=1, keepdims=True)
        spread = np.where(valid, knn_dist, 0).sum(1, keepdims=True) / valid.sum(
            1, keepdims=True).clip(1) - d0
        w = np.where(valid, np.exp(-(d - d0) / np.maximum(spread, 1e-6)), 0.0)
        w /= w.sum(axis=1, keepdims=True).clip(1e-12)
        xy = np.einsum("ij,ijk->ik", w, base_xy[knn_idx.clip(0)])
        return xy.astype(np.float32), False
    import scipy.sparse
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import (
        compute_membership_strengths,
        init_graph_transform,
        make_epochs_per_sample,
        smooth_knn_dist,
    )

    dists = np.ascontiguousarray(knn_dist, dtype=np.float32)
    indices = np.ascontiguousarray(knn_idx, dtype=np.int32)
    sigmas, rhos = smooth_knn_dist(dists, float(n_neighbors), local_connectivity=0.0)
    rows, cols, vals, _ = compute_membership_strengths(indices, dists, sigmas, rhos,
                                                       bipartite=True)
    graph = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(m, len(base_xy)))
    csr = graph.tocsr()
    csr.eliminate_zeros()
    xy = init_graph_transform(csr, base_xy).astype(np.float32)
    epochs = (100 if m <= 10_000 else 30) if n_epochs is None else max(1, n_epochs // 3)
    if graph.data.size and graph.data.max() > 0:
        graph.data[graph.data < graph.data.max() / float(epochs)] = 0.0
        graph.eliminate_zeros()
        rng_state = np.random.default_rng(seed).integers(-(2**31), 2**31 - 1, 3).astype(
            np.int64)
        xy = optimize_layout_euclidean(
            xy, base_xy.astype(np.float32, copy=True), graph.row, graph.col, epochs,
            len(base_xy), make_epochs_per_sample(graph.data, epochs), a, b, rng_state,
            1.0, 1.0 / 4.0, 5, True)
    return np.asarray(xy, dtype=np.float32), True
