"""The map's 2D coordinates: UMAP on the k-NN graph, and placement of new items on a map.

- :func:`fit_layout`: UMAP (McInnes et al. 2018, ``umap-learn``) on the index's stored
  neighbour graph (``precomputed_knn=(indices, distances)``), 2 components, spectral
  initialisation. UMAP's fuzzy graph is sparse: nothing is ``N x N``.
- :func:`fit_layout_landmarks`, above :data:`LANDMARKS_ABOVE` items: no eigen-solve on the
  whole graph and no copy of the vectors inside umap-learn. :data:`LANDMARKS` items drawn
  at random are laid out by :func:`fit_layout` (their exact k-NN graph among themselves);
  every other item is placed at the weighted mean of its graph neighbours already placed,
  round after round outwards from the landmarks (:func:`propagate`); then
  :data:`REFINE_EPOCHS` epochs of UMAP's optimisation over the whole graph start from
  there (openTSNE places 1.28M points around a 25k sample the same way).
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
LANDMARKS_ABOVE = 100_000
"""Collections larger than this are laid out from landmarks (:func:`fit_layout_landmarks`)."""
LANDMARKS = 25_000
"""Items laid out by full UMAP in the landmark route."""
REFINE_EPOCHS = 50
"""Epochs over the whole graph after the landmarks' placement."""
MAX_ROUNDS = 64
"""Propagation rounds outwards from the landmarks before the rest is placed by cluster."""
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


def propagate(knn_idx: np.ndarray, knn_dist: np.ndarray, xy: np.ndarray,
              placed: np.ndarray, cluster: np.ndarray | None = None,
              seed: int = 0) -> np.ndarray:
    """Coordinates of every item from those ``placed`` (``xy`` rows, in place): round after
    round, each unplaced item whose graph row (positions, ``-1`` = none) holds placed items
    goes to their mean weighted by ``exp(-(d - d_min) / spread)`` (its row's distances).
    Items no round reaches go to the median of their ``cluster``'s placed items (else of
    all). A jitter of 1 % of the nearest-neighbour spacing separates equal positions.
    Returns how many rounds ran."""
    placed = placed.copy()
    valid = knn_idx >= 0
    d = np.where(valid, knn_dist, np.inf)
    d0 = d.min(axis=1, keepdims=True)
    d0 = np.where(np.isfinite(d0), d0, 0.0)
    spread = (np.where(valid, knn_dist, 0).sum(1, keepdims=True) /
              valid.sum(1, keepdims=True).clip(1) - d0)
    weight = np.where(valid, np.exp(-(d - d0) / np.maximum(spread, 1e-6)), 0.0)
    weight = weight.astype(np.float32)
    rounds = 0
    todo = np.flatnonzero(~placed)
    while len(todo) and rounds < MAX_ROUNDS:
        rows = knn_idx[todo]
        w = np.where(placed[rows.clip(0)] & (rows >= 0), weight[todo], 0.0)
        total = w.sum(axis=1)
        reach = total > 0
        if not reach.any():
            break
        w, rows, total = w[reach], rows[reach], total[reach]
        xy[todo[reach]] = np.einsum("ij,ijk->ik", w, xy[rows.clip(0)]) / total[:, None]
        placed[todo[reach]] = True
        todo = todo[~reach]
        rounds += 1
    if len(todo):
        log.info("layout: %d items out of the landmarks' reach placed by cluster", len(todo))
        whole = np.median(xy[placed], axis=0)
        for c in np.unique(cluster[todo]) if cluster is not None else [None]:
            members = todo if c is None else todo[cluster[todo] == c]
            home = placed if c is None else placed & (cluster == c)
            xy[members] = np.median(xy[home], axis=0) if home.any() else whole
    rng = np.random.default_rng(seed)
    spacing = float(np.median(np.abs(np.diff(np.sort(xy[:, 0]))))) or 1e-3
    xy += rng.normal(scale=0.01 * spacing, size=xy.shape).astype(np.float32)
    return rounds


def fit_layout_landmarks(umap_mod: ModuleType, landmark_vectors: np.ndarray,
                         landmarks: np.ndarray, graph: tuple[np.ndarray, np.ndarray],
                         cluster: np.ndarray | None, min_dist: float, seed: int | None,
                         progress: bool = True, refine_epochs: int = REFINE_EPOCHS
                         ) -> tuple[np.ndarray, float, float]:
    """``(xy, a, b)`` of the items of ``graph`` (``(positions, distances)``, ``N x k``,
    each item first in its row) from ``landmarks`` (positions, their vectors in
    ``landmark_vectors``): module docstring."""
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import fuzzy_simplicial_set, make_epochs_per_sample

    from ..neighbours.partition import exact_neighbours

    knn_idx, knn_dist = graph
    n, k = knn_idx.shape
    m = len(landmarks)
    own, found = np.arange(m), exact_neighbours(landmark_vectors, np.arange(m), k - 1)
    found_pos, found_s = found
    sub_idx = np.concatenate([own[:, None], found_pos], axis=1)
    sub_dist = np.concatenate([np.zeros((m, 1), np.float32),
                               np.sqrt(np.maximum(0.0, 2.0 - 2.0 * found_s))], axis=1)
    sub_dist = np.where(sub_idx >= 0, sub_dist, np.inf).astype(np.float32)
    log.info("layout: UMAP on %d landmarks", m)
    base, a, b = fit_layout(umap_mod, landmark_vectors, (sub_idx, sub_dist), min_dist, None,
                            seed, progress)
    xy = np.zeros((n, 2), np.float32)
    placed = np.zeros(n, bool)
    xy[landmarks], placed[landmarks] = base, True
    rounds = propagate(knn_idx, knn_dist, xy, placed, cluster, seed or 0)
    log.info("layout: the other %d items placed in %d rounds; %d epochs over the whole "
             "graph", n - m, rounds, refine_epochs)
    random_state = np.random.RandomState(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fuzzy = fuzzy_simplicial_set(np.empty((n, 0), np.float32), k, random_state,
                                     "euclidean", knn_indices=knn_idx,
                                     knn_dists=knn_dist)[0].tocoo()
    fuzzy.sum_duplicates()
    fuzzy.data[fuzzy.data < fuzzy.data.max() / float(refine_epochs)] = 0.0
    fuzzy.eliminate_zeros()
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    xy = (10.0 * (xy - lo) / np.maximum(hi - lo, 1e-12)).astype(np.float32, order="C")
    rng_state = random_state.randint(-(2**31), 2**31 - 1, 3).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xy = optimize_layout_euclidean(
            xy, xy, fuzzy.row, fuzzy.col, refine_epochs, n,
            make_epochs_per_sample(fuzzy.data, refine_epochs), a, b, rng_state, 1.0, 1.0,
            5, parallel=seed is None, verbose=False,
            tqdm_kwds={"desc": "layout epochs", "disable": not progress, **bar_settings()},
            move_other=True)
    return np.asarray(xy, dtype=np.float32), a, b


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
