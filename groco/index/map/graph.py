"""The map's k-NN graph, from the index's own search, resumable after a kill.

Every stored vector queries the index (``index.search``, the tuned HNSW/IVF/Flat of
:mod:`groco.index.faiss`) for its ``k`` nearest items, in chunks streamed from the shard
files, so the slow part of UMAP is not done twice. Cosine similarity ``s`` becomes the
Euclidean distance between unit vectors, ``d = sqrt(2 - 2 s)``; each item is its own
first neighbour (``d = 0``), as UMAP expects; a slot with no neighbour holds position
``-1`` and distance ``inf``.

An HNSW index searches with ``efSearch`` at most :data:`GRAPH_EF_SEARCH` here, whatever
the index was tuned to: a layout needs neighbours, not the search's tuned recall@10
(UMAP's own NNDescent is approximate too). An index tuned to efSearch 2048 (the most its
tuning tries, on hard synthetic data) built the graph at 54 items/s at 1M x 512 on the
shared 2 cores; at 100k x 512, efSearch 64 finds 0.93 of the exact 15 neighbours at 1.5x
the rate of efSearch 128 (0.97).

The graph goes to ``map-work/knn-idx.npy`` and ``knn-dist.npy`` (``N x k``, memory-mapped),
chunk by chunk; ``map-work/state.json`` records the rows done and what they were made
from, so a killed run resumes after the last finished chunk, and a run for another index
state or other parameters starts afresh. Nothing holds an ``N x N`` matrix.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from groco.fileio import atomic_write_text
from groco.progress import progress_bar

from .. import shards
from ..faiss.factory import apply_search_params
from ..faiss.query import search
from ..faiss.source import positions_of

WORK_DIR = "map-work"
GRAPH_EF_SEARCH = 64
"""The most ``efSearch`` the graph's HNSW search uses (see the module docstring)."""
KNN_CHUNK = 8192
"""Query rows per index search while building the graph (the resume granularity)."""


def distances(scores: np.ndarray) -> np.ndarray:
    """Euclidean distance between unit vectors from their cosine similarity."""
    return np.sqrt(np.maximum(0.0, 2.0 - 2.0 * scores)).astype(np.float32)


def chunks(n: int, size: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """``(lo, hi)`` row ranges of at most ``size`` rows covering ``start..n``."""
    for lo in range(start, n, size):
        yield lo, min(n, lo + size)


def _found_first(pos: np.ndarray, scores: np.ndarray, width: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``width`` columns of positions (int32) and distances: each row's valid neighbours
    (``pos >= 0``) in search order, then the empty slots (``-1``, ``inf``)."""
    keep = pos >= 0
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]  # stable: search order
    kept = np.take_along_axis(keep, order, axis=1)
    idx = np.where(kept, np.take_along_axis(pos, order, axis=1), -1).astype(np.int32)
    dist = np.where(kept, distances(np.take_along_axis(scores, order, axis=1)), np.inf)
    return idx, dist.astype(np.float32)


def _knn_rows(index: faiss.Index, ids: np.ndarray, queries: np.ndarray, lo: int,
              k: int) -> tuple[np.ndarray, np.ndarray]:
    """Graph rows ``lo..lo+len(queries)``: positions (int32, ``-1`` = none) and distances
    (``inf`` = none) of each query's ``k`` nearest items, itself first."""
    m = len(queries)
    scores, found = search(index, queries, k)
    pos = positions_of(ids, found)
    own = np.arange(lo, lo + m)
    pos[pos == own[:, None]] = -1  # self goes first, once
    out_idx = np.empty((m, k), dtype=np.int32)
    out_dist = np.empty((m, k), dtype=np.float32)
    out_idx[:, 0], out_dist[:, 0] = own, 0.0
    out_idx[:, 1:], out_dist[:, 1:] = _found_first(pos, scores, k - 1)
    return out_idx, out_dist


def mapped_neighbours(index: faiss.Index, queries: np.ndarray, mapped_ids: np.ndarray,
                      k: int, want: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` nearest items among ``mapped_ids`` (sorted): their positions in
    it (``-1`` = none) and distances, from the index's ``want`` nearest items."""
    scores, found = search(index, queries, want)
    return _found_first(positions_of(mapped_ids, found), scores, k)


def graph_search_params(manifest: dict[str, Any]) -> dict[str, float]:
    """The search parameters the k-NN graph overrides on the index: ``efSearch`` capped
    at :data:`GRAPH_EF_SEARCH` where the index's tuned one is higher; else none."""
    ef = (manifest.get("search_params") or {}).get("efSearch")
    if ef is not None and float(ef) > GRAPH_EF_SEARCH:
        return {"efSearch": float(GRAPH_EF_SEARCH)}
    return {}


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


def build_graph(index_dir: Path, index: faiss.Index, manifest: dict[str, Any],
                key: dict[str, Any], locations: tuple[np.ndarray, np.ndarray, np.ndarray],
                k: int, chunk_size: int = KNN_CHUNK, progress: bool = True
                ) -> tuple[dict[str, float], int]:
    """Write the graph of the items at ``locations`` (``(ids, shards, shard_rows)``, ids
    ascending) into ``index_dir/map-work``, resuming a run made for the same ``key``.

    Returns the search parameters set on ``index`` for it (:func:`graph_search_params`)
    and the rows a killed run had done already.
    """
    ids, shard_numbers, rows = locations
    n = len(ids)
    work = index_dir / WORK_DIR
    state, done = _work_state(work, key, n, k)
    params = graph_search_params(manifest)
    apply_search_params(index, params)
    knn_idx = np.load(work / "knn-idx.npy", mmap_mode="r+")
    knn_dist = np.load(work / "knn-dist.npy", mmap_mode="r+")
    with progress_bar(n, initial=done, desc="k-NN graph", unit="item",
                      disable=not progress) as bar:
        for lo, hi in chunks(n, chunk_size, done):
            queries = shards.gather(index_dir, shard_numbers[lo:hi], rows[lo:hi])
            knn_idx[lo:hi], knn_dist[lo:hi] = _knn_rows(index, ids, queries, lo, k)
            knn_idx.flush()
            knn_dist.flush()
            state["rows_done"] = hi
            atomic_write_text(work / "state.json", json.dumps(state))
            bar.update(hi - lo)
    return params, done


def load_graph(index_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The finished graph, ``(positions, distances)``, read into memory."""
    work = index_dir / WORK_DIR
    return np.load(work / "knn-idx.npy"), np.load(work / "knn-dist.npy")


def remove_work(index_dir: Path) -> None:
    """Delete the work folder (once the map that used it is written)."""
    work = index_dir / WORK_DIR
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
