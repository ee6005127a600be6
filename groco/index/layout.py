"""The embedding map of an index directory (``groco index map``): a 2D layout of every item,
with clusters, stored beside the index.

**How it is made** (:func:`compute_map`), in three resumable steps:

1. *k-NN graph from the index's own search.* Every stored vector queries the index
   (``index.search``, the tuned HNSW/IVF/Flat of :mod:`groco.index.faiss_index`) for its
   ``n_neighbors`` nearest items, in chunks streamed from the shard files, so the slow
   part of UMAP is not done twice. Cosine similarity ``s`` becomes the Euclidean distance
   between unit vectors, ``d = sqrt(2 - 2 s)``; each item is its own first neighbour
   (``d = 0``), as UMAP expects. An HNSW index searches with ``efSearch`` at most
   :data:`GRAPH_EF_SEARCH` here, whatever the index was tuned to: a layout needs
   neighbours, not the search's recall@10 of 0.95 (UMAP's own NNDescent is approximate
   too). An index tuned to efSearch 2048 (the most its tuning tries, on hard synthetic
   data) built the graph at 54 items/s at 1M x 512 on the shared 2 cores; at 100k x 512,
   efSearch 64 finds 0.93 of the exact 15 neighbours at 1.5x the rate of efSearch 128
   (0.97). The graph goes to ``map-work/knn-*.npy`` (memory-mapped),
   chunk by chunk; ``map-work/state.json`` records the rows done, so a killed run
   resumes after the last finished chunk.
2. *Clusters*: spherical ``faiss.Kmeans`` on the embeddings (trained on a sample of at
   most 256 points a centroid), every item assigned to its nearest centroid; a cluster
   has a size, a centre on the map (the median of its items' coordinates), the folder
   label most of its items carry (and how many do), and representatives: the items
   nearest its centroid.
3. *Layout*: UMAP (McInnes et al. 2018, ``umap-learn``) on that graph
   (``precomputed_knn=(indices, distances)``), 2 components, spectral initialisation.

Nothing holds an ``N x N`` matrix: the graph is ``N x n_neighbors``, UMAP's fuzzy graph is
sparse. The index is closed before the vectors are gathered for the layout.

**Files** (written atomically; the JSON last, so a reader sees the old map or the new one):

    map.json           what the map is: format, the index generation and count it was
                       made from, parameters, UMAP's ``a``/``b``, the clusters, the
                       points file, how many items were placed on it since the layout
    map-NNNNNN.npz     ids (int64), xy (float32, N x 2), cluster (int32), sim (cosine to
                       the cluster's centroid), label (int32 code, -1 = none),
                       label_names, centroids (float32, K x dim)

**Update** (:func:`place_new_items`, run by ``groco index update``): items added since the
map was made are placed on it with UMAP's ``transform`` step, their neighbours found by
the index among the mapped items: each starts at the membership-weighted mean of its
neighbours' coordinates and is then optimised against the fixed map for ``n_epochs / 3``
epochs (umap-learn's ``UMAP.transform``, with FAISS instead of NNDescent). Deleted items
leave the map. When more than :data:`RECOMPUTE_FRACTION` of the map was placed or removed
since its layout, the result says a full recompute would be better.

``umap-learn`` is an optional extra (``pip install 'groco[map]'``): reading a map
(:func:`read_map`, the app) and everything else in ``groco index`` work without it;
:func:`compute_map` raises :class:`MapExtraMissing` (one line naming the extra), and an
update without it places new items at their neighbours' weighted mean only. No torch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import math
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

import groco
from groco.fileio import atomic_path, atomic_write_text

from . import shards
from .faiss_index import apply_search_params, search
from .indexfile import open_current
from .lock import writer_lock
from .manifest import IndexDirError
from .store import DB_NAME, EMBEDDED, Store

log = logging.getLogger(__name__)

MAP_NAME = "map.json"
WORK_DIR = "map-work"
FORMAT = 1
DEFAULT_NEIGHBORS = 15
DEFAULT_MIN_DIST = 0.1
REPRESENTATIVES = 6
"""Items kept per cluster as its representatives (nearest its centroid first)."""
MAX_CLUSTERS = 50
RECOMPUTE_FRACTION = 0.2
"""Share of the map placed or removed since its layout past which a recompute is advised."""
GRAPH_EF_SEARCH = 64
"""The most ``efSearch`` the graph's HNSW search uses (see the module docstring)."""
KNN_CHUNK = 8192
"""Query rows per index search while building the graph (the resume granularity)."""
EXTRA_FOR_PLACEMENT = 2
"""Placement asks the index for this many times ``n_neighbors`` and keeps mapped ones."""
EXTRA_HINT = "pip install 'groco[map]'"
_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"
_POINTS = re.compile(r"^map-(\d{6,})\.npz$")


class MapExtraMissing(ImportError):
    """``umap-learn`` is not installed (one-line message naming the extra)."""


def _umap():
    """The ``umap`` module, or :class:`MapExtraMissing`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import umap
            import umap.umap_  # noqa: F401  (the functions placement uses)
    except ImportError as error:
        raise MapExtraMissing(f"the embedding map needs umap-learn: {EXTRA_HINT}") from error
    return umap


def default_clusters(n: int) -> int:
    """``round(sqrt(n / 10))`` clusters, within ``2..MAX_CLUSTERS`` (and below ``n``)."""
    return int(max(2, min(MAX_CLUSTERS, round(math.sqrt(n / 10)), n - 1)))


@dataclass
class MapData:
    """A stored map: its facts (``map.json``) and points, row ``i`` of each array is item
    ``ids[i]``."""

    info: dict[str, Any]
    ids: np.ndarray
    xy: np.ndarray
    cluster: np.ndarray
    sim: np.ndarray
    label: np.ndarray
    label_names: list[str]
    centroids: np.ndarray

    @property
    def clusters(self) -> list[dict[str, Any]]:
        return self.info["clusters"]

    def labels(self) -> list[str | None]:
        """The folder label of each point (``None`` where it has none)."""
        return [self.label_names[c] if c >= 0 else None for c in self.label.tolist()]


@dataclass
class MapReport:
    """What :func:`compute_map` or :func:`place_new_items` did."""

    index_dir: Path
    count: int = 0
    clusters: int = 0
    placed: int = 0
    removed: int = 0
    computed: bool = False
    up_to_date: bool = False
    resumed_rows: int = 0
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    """Wall seconds per step."""
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds (all threads) per step."""
    recompute_advised: bool = False
    refined: bool = True
    """Placement ran UMAP's optimisation (False without umap-learn: weighted mean only)."""

    def summary(self) -> str:
        if self.up_to_date:
            return f"{self.index_dir}: map up to date ({self.count} items, {self.clusters} " \
                   "clusters)"
        if self.computed:
            steps = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
            resumed = f", resumed after {self.resumed_rows} rows" if self.resumed_rows else ""
            return (f"mapped {self.count} items into {self.clusters} clusters in "
                    f"{self.seconds:.1f} s ({steps}{resumed}); "
                    f"{self.index_dir / MAP_NAME}")
        text = (f"map: {self.placed} new items placed, {self.removed} removed, "
                f"{self.count} on the map")
        if not self.refined:
            text += f" (placed at their neighbours' mean: umap-learn missing, {EXTRA_HINT})"
        if self.recompute_advised:
            text += (f"; over {RECOMPUTE_FRACTION:.0%} of the map changed since its layout: "
                     f"a full recompute would be better (`groco index map {self.index_dir}`)")
        return text


# ----------------------------------------------------------------------------- reading


def map_path(index_dir: str | Path) -> Path:
    return Path(index_dir) / MAP_NAME


def has_map(index_dir: str | Path) -> bool:
    return map_path(index_dir).is_file()


def read_map(index_dir: str | Path) -> MapData:
    """The stored map; :class:`IndexDirError` when there is none or it cannot be read."""
    index_dir = Path(index_dir)
    path = map_path(index_dir)
    if not path.is_file():
        raise IndexDirError(f"{index_dir}: no map yet (run `groco index map {index_dir}`)")
    try:
        info = json.loads(path.read_text())
        if info.get("format") != FORMAT:
            raise ValueError(f"not a groco map of format {FORMAT}")
        with np.load(index_dir / info["points_file"], allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as error:
        reason = " ".join(str(error).split())
        raise IndexDirError(f"{path}: damaged ({reason}); run `groco index map {index_dir}` "
                            "to compute it again") from error
    return MapData(info=info, ids=arrays["ids"], xy=arrays["xy"], cluster=arrays["cluster"],
                   sim=arrays["sim"], label=arrays["label"],
                   label_names=[str(s) for s in arrays["label_names"]],
                   centroids=arrays["centroids"])


def _write_map(index_dir: Path, data: MapData) -> None:
    """Write the points file (new name), then ``map.json`` naming it, then drop older ones."""
    numbers = [int(m.group(1)) for f in index_dir.iterdir() if (m := _POINTS.match(f.name))]
    name = f"map-{max(numbers, default=0) + 1:06d}.npz"
    with atomic_path(index_dir / name) as tmp, open(tmp, "wb") as f:
        np.savez(f, ids=data.ids.astype(np.int64), xy=data.xy.astype(np.float32),
                 cluster=data.cluster.astype(np.int32), sim=data.sim.astype(np.float32),
                 label=data.label.astype(np.int32),
                 label_names=np.array(data.label_names, dtype=str),
                 centroids=data.centroids.astype(np.float32))
    data.info["points_file"] = name
    data.info["count"] = len(data.ids)
    data.info["written_at"] = _now()
    atomic_write_text(map_path(index_dir), json.dumps(data.info, indent=1) + "\n")
    for f in index_dir.iterdir():
        if _POINTS.match(f.name) and f.name != name:
            f.unlink(missing_ok=True)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- pieces


def _distances(scores: np.ndarray) -> np.ndarray:
    """Euclidean distance between unit vectors from their cosine similarity."""
    return np.sqrt(np.maximum(0.0, 2.0 - 2.0 * scores)).astype(np.float32)


def _chunks(n: int, size: int, start: int = 0) -> Iterator[tuple[int, int]]:
    for lo in range(start, n, size):
        yield lo, min(n, lo + size)


def _knn_rows(index: faiss.Index, ids: np.ndarray, queries: np.ndarray, lo: int,
              k: int) -> tuple[np.ndarray, np.ndarray]:
    """Graph rows ``lo..lo+len(queries)``: positions (int32, ``-1`` = none) and distances
    (``inf`` = none) of each query's ``k`` nearest items, itself first."""
    m = len(queries)
    scores, found = search(index, queries, k)
    pos = np.searchsorted(ids, found).clip(0, len(ids) - 1)
    valid = (found >= 0) & (ids[pos] == found)
    pos = np.where(valid, pos, -1)
    own = np.arange(lo, lo + m)
    pos[pos == own[:, None]] = -1  # self goes first, once
    out_idx = np.full((m, k), -1, dtype=np.int32)
    out_dist = np.full((m, k), np.inf, dtype=np.float32)
    out_idx[:, 0] = own
    out_dist[:, 0] = 0.0
    dist = _distances(scores)
    keep = pos >= 0
    # stable: each row's valid neighbours in search order, then the empty slots
    order = np.argsort(~keep, axis=1, kind="stable")[:, : k - 1]
    out_idx[:, 1:] = np.take_along_axis(pos, order, axis=1)
    out_dist[:, 1:] = np.where(np.take_along_axis(keep, order, axis=1),
                               np.take_along_axis(dist, order, axis=1), np.inf)
    return out_idx, out_dist


def _labels(store: Store, ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
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


def _kmeans(vectors: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray,
                                                             np.ndarray]:
    """``(centroids, cluster, sim)``: spherical k-means trained on a sample (at most 256
    points a centroid), every vector assigned to its most similar centroid."""
    n, dim = vectors.shape
    rng = np.random.default_rng(seed)
    sample = vectors if n <= 256 * k else vectors[np.sort(rng.choice(n, 256 * k, replace=False))]
    kmeans = faiss.Kmeans(dim, k, niter=20, seed=seed, spherical=True, verbose=False,
                          max_points_per_centroid=256, min_points_per_centroid=1)
    kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
    cluster = np.empty(n, dtype=np.int32)
    sim = np.empty(n, dtype=np.float32)
    for lo, hi in _chunks(n, 65536):
        s, c = kmeans.index.search(np.ascontiguousarray(vectors[lo:hi]), 1)
        cluster[lo:hi], sim[lo:hi] = c[:, 0], s[:, 0]
    return kmeans.centroids.copy(), cluster, sim


def _cluster_facts(store: Store, data: MapData) -> list[dict[str, Any]]:
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


def graph_search_params(manifest: dict[str, Any]) -> dict[str, float]:
    """The search parameters the k-NN graph overrides on the index: ``efSearch`` capped
    at :data:`GRAPH_EF_SEARCH` where the index's tuned one is higher; else none."""
    ef = (manifest.get("search_params") or {}).get("efSearch")
    if ef is not None and float(ef) > GRAPH_EF_SEARCH:
        return {"efSearch": float(GRAPH_EF_SEARCH)}
    return {}


def _check_current(index_dir: Path, manifest: dict[str, Any], store: Store) -> None:
    if manifest.get("generation") != store.generation:
        raise IndexDirError(f"{index_dir}: the metadata is newer than the index (an update "
                            f"was interrupted): run `groco index update {index_dir}` first")


# ----------------------------------------------------------------------------- compute


def _work_state(work: Path, key: dict[str, Any], n: int, k: int) -> tuple[dict, int]:
    """The work folder's state for ``key`` (and the graph rows done), started afresh when
    it was made for another index state or other parameters."""
    state_path = work / "state.json"
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        state = None
    if state is None or state.get("key") != key or not (work / "knn-idx.npy").is_file():
        if work.exists():
            for f in work.iterdir():
                f.unlink()
        work.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(work / "knn-idx.npy", "w+", np.int32, (n, k)).flush()
        np.lib.format.open_memmap(work / "knn-dist.npy", "w+", np.float32, (n, k)).flush()
        state = {"key": key, "rows_done": 0}
        atomic_write_text(state_path, json.dumps(state))
    return state, int(state["rows_done"])


def compute_map(
    index_dir: str | Path,
    n_neighbors: int = DEFAULT_NEIGHBORS,
    clusters: int | None = None,
    min_dist: float = DEFAULT_MIN_DIST,
    n_epochs: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    force: bool = False,
    chunk_size: int = KNN_CHUNK,
) -> MapReport:
    """Compute the map of ``index_dir`` (module docstring) and store it there.

    A map already made by a layout of the current index state with these parameters is
    left as it is (``up_to_date``) unless ``force``; one with items placed since its
    layout, or of another state, is recomputed. ``clusters``: ``None`` =
    :func:`default_clusters`. ``n_epochs``: UMAP's default (200 above 10k items, 500
    below) when ``None``. ``seed``: fixes UMAP's randomness, which also makes its
    optimisation single-threaded; ``None`` runs it on every core (k-means uses seed 0
    then). Resumable: a killed run continues after the last graph chunk written.
    Raises :class:`MapExtraMissing` without umap-learn, :class:`IndexDirError` for a
    missing or interrupted index, ``ValueError`` for bad parameters.
    """
    start = time.perf_counter()
    index_dir = Path(index_dir)
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be >= 2, got {n_neighbors}")
    if not 0 <= min_dist <= 1:
        raise ValueError(f"min_dist must be in [0, 1], got {min_dist}")
    if clusters is not None and clusters < 1:
        raise ValueError(f"clusters must be >= 1, got {clusters}")
    if not (index_dir / DB_NAME).is_file():
        raise IndexDirError(f"{index_dir}: not an index directory (no {DB_NAME})")
    report = MapReport(index_dir=index_dir, computed=True)
    with writer_lock(index_dir, "groco index map"), Store(index_dir / DB_NAME) as store:
        manifest, index = open_current(index_dir)
        _check_current(index_dir, manifest, store)
        ids, shard_numbers, rows = store.embedded_locations()
        n = len(ids)
        if n < 4:
            raise IndexDirError(f"{index_dir}: {n} items; a map needs at least 4")
        k = min(n_neighbors, n)  # neighbours of each item, itself included (UMAP's way)
        n_clusters = min(clusters or default_clusters(n), n)
        params = {"n_neighbors": k, "clusters": n_clusters, "min_dist": min_dist,
                  "n_epochs": n_epochs, "seed": seed}
        if not force and has_map(index_dir):
            with contextlib.suppress(IndexDirError):
                old = read_map(index_dir)
                if (old.info.get("generation") == store.generation and
                        old.info.get("params") == params and not old.info.get("placed")):
                    del index
                    report.computed, report.up_to_date = False, True
                    report.count, report.clusters = len(old.ids), len(old.centroids)
                    return report
        umap = _umap()  # only now: an up-to-date map is read without umap-learn
        key = {"generation": store.generation, "index_file": manifest.get("index_file"),
               "count": n, "k": k}
        work = index_dir / WORK_DIR
        state, done = _work_state(work, key, n, k)
        report.resumed_rows = done
        # 1. the k-NN graph, streamed from the shards through the index's search
        t, c = time.perf_counter(), time.process_time()
        graph_params = graph_search_params(manifest)
        apply_search_params(index, graph_params)
        knn_idx = np.load(work / "knn-idx.npy", mmap_mode="r+")
        knn_dist = np.load(work / "knn-dist.npy", mmap_mode="r+")
        with tqdm(total=n, initial=done, desc="k-NN graph", unit="item", disable=not progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for lo, hi in _chunks(n, chunk_size, done):
                queries = shards.gather(index_dir, shard_numbers[lo:hi], rows[lo:hi])
                knn_idx[lo:hi], knn_dist[lo:hi] = _knn_rows(index, ids, queries, lo, k)
                knn_idx.flush()
                knn_dist.flush()
                state["rows_done"] = hi
                atomic_write_text(work / "state.json", json.dumps(state))
                bar.update(hi - lo)
        del index, knn_idx, knn_dist
        report.timings["k-NN graph"] = time.perf_counter() - t
        report.cpu["k-NN graph"] = time.process_time() - c
        # 2. clusters (on the vectors gathered once, now that the index is closed)
        t, c = time.perf_counter(), time.process_time()
        vectors = shards.gather(index_dir, shard_numbers, rows)
        centroids, cluster, sim = _kmeans(vectors, n_clusters, 0 if seed is None else seed)
        label, label_names = _labels(store, ids)
        report.timings["clusters"] = time.perf_counter() - t
        report.cpu["clusters"] = time.process_time() - c
        # 3. the layout
        t, c = time.perf_counter(), time.process_time()
        graph = (np.load(work / "knn-idx.npy"), np.load(work / "knn-dist.npy"))
        reducer = umap.UMAP(n_neighbors=k, n_components=2, metric="euclidean",
                            min_dist=min_dist, n_epochs=n_epochs, random_state=seed,
                            precomputed_knn=graph, init="spectral", verbose=progress,
                            tqdm_kwds={"desc": "layout epochs", "file": sys.stderr,
                                       "disable": not progress, "bar_format": _BAR})
        log.info("layout: UMAP's fuzzy graph and spectral start, then its epochs")
        # umap-learn's verbose lines go to stdout (which --json owns): dropped, its bar kept
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            xy = reducer.fit_transform(vectors).astype(np.float32)
        a, b = float(reducer._a), float(reducer._b)
        del reducer, graph, vectors
        report.timings["layout"] = time.perf_counter() - t
        report.cpu["layout"] = time.process_time() - c
        data = MapData(info={}, ids=ids, xy=xy, cluster=cluster, sim=sim, label=label,
                       label_names=label_names, centroids=centroids)
        data.info = {
            "format": FORMAT, "groco_version": groco.__version__, "computed_at": _now(),
            "generation": store.generation, "index_file": manifest.get("index_file"),
            "layout_count": n, "placed": 0, "removed": 0, "params": params,
            "umap": {"a": a, "b": b, "version": getattr(umap, "__version__", "?")},
            "graph_search": graph_params or manifest.get("search_params") or {},
            "timings_s": {k_: round(v, 2) for k_, v in report.timings.items()},
            "cpu_s": {k_: round(v, 2) for k_, v in report.cpu.items()},
        }
        data.info["clusters"] = _cluster_facts(store, data)
        _write_map(index_dir, data)
        for f in work.iterdir():
            f.unlink()
        work.rmdir()
    report.count, report.clusters = n, n_clusters
    report.seconds = time.perf_counter() - start
    return report


# ----------------------------------------------------------------------------- placement


def _place(umap_mod, knn_idx: np.ndarray, knn_dist: np.ndarray, base_xy: np.ndarray,
           n_neighbors: int, a: float, b: float, n_epochs: int | None,
           seed: int) -> tuple[np.ndarray, bool]:
    """Coordinates of new points from their neighbours among the mapped ones (positions in
    ``base_xy``, ``-1`` = none): UMAP's transform (membership strengths, weighted-mean
    start, ``n_epochs`` of optimisation against the fixed map), or without umap-learn
    (``umap_mod is None``) the mean weighted by ``exp(-(d - d_min) / spread)``."""
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


def place_new_items(index_dir: str | Path, progress: bool = True) -> MapReport | None:
    """Bring the stored map level with the index: new items placed on it (module
    docstring), deleted ones dropped, clusters' sizes and representatives updated.

    ``None`` when the directory has no map. Works without umap-learn (weighted-mean
    placement, ``refined=False``). Holds the writer lock.
    """
    index_dir = Path(index_dir)
    if not has_map(index_dir):
        return None
    start = time.perf_counter()
    try:
        umap_mod = _umap()
    except MapExtraMissing:
        umap_mod = None
    report = MapReport(index_dir=index_dir, refined=umap_mod is not None)
    with writer_lock(index_dir, "groco index update (map)"), \
            Store(index_dir / DB_NAME) as store:
        old = read_map(index_dir)
        manifest, index = open_current(index_dir)
        _check_current(index_dir, manifest, store)
        ids, shard_numbers, rows = store.embedded_locations()
        keep = np.isin(old.ids, ids)
        new = ~np.isin(ids, old.ids)
        report.removed = int((~keep).sum())
        report.placed = int(new.sum())
        params = old.info["params"]
        base_ids = old.ids[keep]
        base_xy = np.ascontiguousarray(old.xy[keep])
        xy_new = np.zeros((report.placed, 2), np.float32)
        cluster_new = np.zeros(report.placed, np.int32)
        sim_new = np.zeros(report.placed, np.float32)
        if report.placed:
            if len(base_ids) < 2:
                raise IndexDirError(f"{index_dir}: too few mapped items left to place new "
                                    f"ones on; run `groco index map {index_dir}`")
            k = min(int(params["n_neighbors"]), len(base_ids))  # mapped neighbours
            want = min(index.ntotal, max(k * EXTRA_FOR_PLACEMENT, k + 8))
            new_pos = np.flatnonzero(new)
            knn_idx = np.full((len(new_pos), k), -1, np.int32)
            knn_dist = np.full((len(new_pos), k), np.inf, np.float32)
            centroids = faiss.IndexFlatIP(old.centroids.shape[1])
            centroids.add(np.ascontiguousarray(old.centroids))
            for lo, hi in tqdm(list(_chunks(len(new_pos), KNN_CHUNK)), desc="placing",
                               disable=not progress, file=sys.stderr, unit="chunk"):
                sel = new_pos[lo:hi]
                queries = shards.gather(index_dir, shard_numbers[sel], rows[sel])
                scores, found = search(index, queries, want)
                pos = np.searchsorted(base_ids, found).clip(0, len(base_ids) - 1)
                ok = (found >= 0) & (base_ids[pos] == found)
                order = np.argsort(~ok, axis=1, kind="stable")[:, :k]
                knn_idx[lo:hi] = np.where(np.take_along_axis(ok, order, 1),
                                          np.take_along_axis(pos, order, 1), -1)
                knn_dist[lo:hi] = np.where(np.take_along_axis(ok, order, 1),
                                           _distances(np.take_along_axis(scores, order, 1)),
                                           np.inf)
                s, c = centroids.search(np.ascontiguousarray(queries), 1)
                cluster_new[lo:hi], sim_new[lo:hi] = c[:, 0], s[:, 0]
            lonely = knn_idx[:, 0] < 0
            if lonely.any():  # no mapped neighbour found: start at the cluster's centre
                log.warning("%d new items have no mapped neighbour in the index's answer",
                            int(lonely.sum()))
            xy_new, _ = _place(umap_mod, knn_idx, knn_dist, base_xy, k,
                               old.info["umap"]["a"], old.info["umap"]["b"],
                               params.get("n_epochs"), params.get("seed") or 0)
            for i in np.flatnonzero(lonely):
                fact = old.clusters[int(cluster_new[i])]
                xy_new[i] = (fact["x"] or 0.0, fact["y"] or 0.0)
        del index
        all_ids = np.concatenate([base_ids, ids[new]])
        order = np.argsort(all_ids, kind="stable")
        data = MapData(
            info=old.info, ids=all_ids[order],
            xy=np.concatenate([base_xy, xy_new])[order],
            cluster=np.concatenate([old.cluster[keep], cluster_new])[order],
            sim=np.concatenate([old.sim[keep], sim_new])[order],
            label=np.zeros(len(all_ids), np.int32), label_names=[],
            centroids=old.centroids)
        data.label, data.label_names = _labels(store, data.ids)
        info = data.info
        info["placed"] = int(info.get("placed", 0)) + report.placed
        info["removed"] = int(info.get("removed", 0)) + report.removed
        info["generation"] = store.generation
        info["index_file"] = manifest.get("index_file")
        info["clusters"] = _cluster_facts(store, data)
        changed = info["placed"] + info["removed"]
        report.recompute_advised = changed > RECOMPUTE_FRACTION * max(1, info["layout_count"])
        info["recompute_advised"] = report.recompute_advised
        _write_map(index_dir, data)
    report.count, report.clusters = len(data.ids), len(data.centroids)
    report.seconds = time.perf_counter() - start
    return report


# ----------------------------------------------------------------------------- output


def iter_map_items(index_dir: str | Path, data: MapData | None = None
                   ) -> Iterator[dict[str, Any]]:
    """Each mapped item as ``{"id", "path", "relpath", "x", "y", "cluster", "label"}``
    (``path`` absolute, under the images root), in id order."""
    index_dir = Path(index_dir)
    data = data or read_map(index_dir)
    with Store(index_dir / DB_NAME, readonly=True) as store:
        root = Path(store.get_info("images_root") or "")
        p = 0
        for row in store.iter_rows(EMBEDDED):
            while p < len(data.ids) and data.ids[p] < row.id:
                p += 1
            if p == len(data.ids):
                break
            if data.ids[p] != row.id:
                continue
            x, y = data.xy[p].tolist()
            yield {"id": row.id, "path": str(root / row.path), "relpath": row.path,
                   "x": round(x, 5), "y": round(y, 5), "cluster": int(data.cluster[p]),
                   "label": row.label}
