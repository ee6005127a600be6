"""Making the map of an index directory (``groco index map``) and keeping it level with the
index (``groco index update``).

:func:`compute_map`, in three steps, under the directory's writer lock:

1. the index's neighbour graph, reused when current, else built from the stored vectors
   and stored (:mod:`groco.index.neighbours`, resumable);
2. clusters: spherical k-means on the embeddings (:mod:`.clusters`);
3. the layout: UMAP on that graph, from landmarks above :data:`LANDMARKS_ABOVE` items
   (:mod:`.layout`);

then the map files (:mod:`.format`). :func:`update_map` (called by
:func:`groco.index.build.update_index_dir`, which holds the lock; :func:`place_new_items`
takes it) places the items added since the map was made on it, their neighbours found by
the index among the mapped items, drops deleted items, and updates the clusters' sizes
and representatives. When more than :data:`RECOMPUTE_FRACTION` of the map was placed or
removed since its layout, the result says a full recompute would be better.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

import groco
from groco.progress import progress_bar

from .. import shards
from ..indexfile import open_current
from ..lock import writer_lock
from ..manifest import IndexDirError, read_manifest
from ..neighbours import DEFAULT_K, GraphReport, build_graph, read_graph
from ..store import DB_NAME, Store
from .clusters import cluster_facts, default_clusters, kmeans, label_codes
from .format import FORMAT, MAP_NAME, MapData, has_map, now, read_map, write_map
from .graph import KNN_CHUNK, chunks, mapped_neighbours, umap_graph
from .layout import (
    DEFAULT_MIN_DIST,
    DEFAULT_NEIGHBORS,
    EXTRA_HINT,
    LANDMARKS,
    LANDMARKS_ABOVE,
    MapExtraMissing,
    fit_layout,
    fit_layout_landmarks,
    place,
    umap_module,
)

log = logging.getLogger(__name__)

RECOMPUTE_FRACTION = 0.2
"""Share of the map placed or removed since its layout past which a recompute is advised."""
EXTRA_FOR_PLACEMENT = 2
"""Placement asks the index for this many times ``n_neighbors`` and keeps mapped ones."""


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
    graph: GraphReport | None = None
    """The neighbour graph built or reused."""
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
            graph = f"; {self.graph.summary()}" if self.graph else ""
            return (f"mapped {self.count} items into {self.clusters} clusters in "
                    f"{self.seconds:.1f} s ({steps}){graph}; {self.index_dir / MAP_NAME}")
        text = (f"map: {self.placed} new items placed, {self.removed} removed, "
                f"{self.count} on the map")
        if not self.refined:
            text += f" (placed at their neighbours' mean: umap-learn missing, {EXTRA_HINT})"
        if self.recompute_advised:
            text += (f"; over {RECOMPUTE_FRACTION:.0%} of the map changed since its layout: "
                     f"a full recompute would be better (`groco index map {self.index_dir}`)")
        return text


def _check_current(index_dir: Path, manifest: dict[str, Any], store: Store) -> None:
    if manifest.get("generation") != store.generation:
        raise IndexDirError(f"{index_dir}: the metadata is newer than the index (an update "
                            f"was interrupted): run `groco index update {index_dir}` first")


class _Step:
    """Times one step into ``report.timings``/``report.cpu`` (wall and CPU seconds)."""

    def __init__(self, report: MapReport, name: str) -> None:
        self.report, self.name = report, name

    def __enter__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def __exit__(self, *exc: object) -> None:
        self.report.timings[self.name] = time.perf_counter() - self.wall
        self.report.cpu[self.name] = time.process_time() - self.cpu


def compute_map(
    index_dir: str | Path,
    n_neighbors: int = DEFAULT_NEIGHBORS,
    clusters: int | None = None,
    min_dist: float = DEFAULT_MIN_DIST,
    n_epochs: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    force: bool = False,
    landmarks_above: int | None = None,
) -> MapReport:
    """Compute the map of ``index_dir`` (module docstring) and store it there.

    A map already made by a layout of the current index state with these parameters is
    left as it is (``up_to_date``) unless ``force``; one with items placed since its
    layout, or of another state, is recomputed. ``clusters``: ``None`` =
    :func:`default_clusters`. ``n_epochs``: UMAP's default (200 above 10k items, 500
    below) when ``None``. ``seed``: fixes UMAP's randomness, which also makes its
    optimisation single-threaded; ``None`` runs it on every core (k-means uses seed 0
    then). ``landmarks_above``: the size above which the layout starts from landmarks
    (:data:`LANDMARKS_ABOVE` when ``None``). The index's stored neighbour graph is built
    when missing or stale (:mod:`groco.index.neighbours`), else reused; a killed run
    resumes its graph after the last cells written.
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
        manifest = read_manifest(index_dir)  # the writer lock holds it still
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
                    report.computed, report.up_to_date = False, True
                    report.count, report.clusters = len(old.ids), len(old.centroids)
                    return report
        umap = umap_module()  # only now: an up-to-date map is read without umap-learn
        vectors = shards.gather(index_dir, shard_numbers, rows)
        with _Step(report, "k-NN graph"):
            report.graph = build_graph(index_dir, store, k - 1, store_k=max(DEFAULT_K, k - 1),
                                       vectors=vectors, progress=progress)
        with _Step(report, "clusters"):
            centroids, cluster, sim = kmeans(vectors, n_clusters, 0 if seed is None else seed)
            label, label_names = label_codes(store, ids)
        with _Step(report, "layout"):
            knn = umap_graph(read_graph(index_dir), ids, k)
            above = LANDMARKS_ABOVE if landmarks_above is None else landmarks_above
            if n > above:
                rng = np.random.default_rng(0 if seed is None else seed)
                chosen = np.sort(rng.choice(n, min(n, LANDMARKS), replace=False))
                landmark_vectors = vectors[chosen]
                del vectors
                xy, a, b = fit_layout_landmarks(umap, landmark_vectors, chosen, knn, cluster,
                                                min_dist, seed, progress)
            else:
                xy, a, b = fit_layout(umap, vectors, knn, min_dist, n_epochs, seed, progress)
                del vectors
        data = MapData(info={}, ids=ids, xy=xy, cluster=cluster, sim=sim, label=label,
                       label_names=label_names, centroids=centroids)
        data.info = {
            "format": FORMAT, "groco_version": groco.__version__, "computed_at": now(),
            "generation": store.generation, "index_file": manifest.get("index_file"),
            "layout_count": n, "placed": 0, "removed": 0, "params": params,
            "umap": {"a": a, "b": b, "version": getattr(umap, "__version__", "?")},
            "layout": "landmarks" if n > above else "umap",
            "graph": {key_: report.graph.info.get(key_) for key_ in
                      ("k", "cells", "probes", "recall", "recall_sample", "exact")},
            "timings_s": {k_: round(v, 2) for k_, v in report.timings.items()},
            "cpu_s": {k_: round(v, 2) for k_, v in report.cpu.items()},
        }
        data.info["clusters"] = cluster_facts(store, data)
        write_map(index_dir, data)
    report.count, report.clusters = n, n_clusters
    report.seconds = time.perf_counter() - start
    return report


def place_new_items(index_dir: str | Path, progress: bool = True) -> MapReport | None:
    """:func:`update_map` under the directory's writer lock; ``None`` when it has no map."""
    index_dir = Path(index_dir)
    if not has_map(index_dir):
        return None
    with writer_lock(index_dir, "groco index update (map)"), \
            Store(index_dir / DB_NAME) as store:
        return update_map(index_dir, store, progress)


def update_map(index_dir: Path, store: Store, progress: bool = True) -> MapReport | None:
    """Bring the stored map level with the index (module docstring): new items placed on
    it, deleted ones dropped, clusters' sizes and representatives updated.

    ``None`` when the directory has no map. The caller holds the writer lock and
    ``store``, the directory's open metadata. Works without umap-learn (weighted-mean
    placement, ``refined=False``).
    """
    if not has_map(index_dir):
        return None
    start = time.perf_counter()
    try:
        umap_mod = umap_module()
    except MapExtraMissing:
        umap_mod = None
    report = MapReport(index_dir=index_dir, refined=umap_mod is not None)
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
        with progress_bar(len(new_pos), desc="placing", unit="item",
                          disable=not progress) as bar:
            for lo, hi in chunks(len(new_pos), KNN_CHUNK):
                sel = new_pos[lo:hi]
                queries = shards.gather(index_dir, shard_numbers[sel], rows[sel])
                knn_idx[lo:hi], knn_dist[lo:hi] = mapped_neighbours(index, queries, base_ids,
                                                                    k, want)
                s, c = centroids.search(np.ascontiguousarray(queries), 1)
                cluster_new[lo:hi], sim_new[lo:hi] = c[:, 0], s[:, 0]
                bar.update(hi - lo)
        lonely = knn_idx[:, 0] < 0
        if lonely.any():  # no mapped neighbour found: start at the cluster's centre
            log.warning("%d new items have no mapped neighbour in the index's answer",
                        int(lonely.sum()))
        xy_new, _ = place(umap_mod, knn_idx, knn_dist, base_xy, k, old.info["umap"]["a"],
                          old.info["umap"]["b"], params.get("n_epochs"),
                          params.get("seed") or 0)
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
    data.label, data.label_names = label_codes(store, data.ids)
    info = data.info
    info["placed"] = int(info.get("placed", 0)) + report.placed
    info["removed"] = int(info.get("removed", 0)) + report.removed
    info["generation"] = store.generation
    info["index_file"] = manifest.get("index_file")
    info["clusters"] = cluster_facts(store, data)
    changed = info["placed"] + info["removed"]
    report.recompute_advised = changed > RECOMPUTE_FRACTION * max(1, info["layout_count"])
    info["recompute_advised"] = report.recompute_advised
    write_map(index_dir, data)
    report.count, report.clusters = len(data.ids), len(data.centroids)
    report.seconds = time.perf_counter() - start
    return report
