"""Building the stored neighbour graph of an index directory and keeping it current.

- :func:`build_graph`: the graph of every embedded item from the stored vectors
  (:mod:`.partition`: exact within the cells each vector probes, the probes chosen to
  reach a recall@k measured on a sample), resumable after a kill (work files in
  ``neighbours/work``), stored by :mod:`.files`. A graph that matches the index state and
  holds at least the ``k`` asked for is reused: the map and the duplicate groups share it.
- :func:`update_graph` (run by ``groco index update``): rows of deleted items go, and so
  do the edges to them; new items, and the rows that lost an edge, get their ``k``
  nearest from the index's own search; every new item enters the rows of the items it
  found when it beats their worst edge (the graph is symmetric in what it can hold).

The caller holds the directory's writer lock (:func:`ensure_graph` takes it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from groco.progress import progress_bar

from .. import shards
from ..faiss.query import search
from ..faiss.source import positions_of
from ..indexfile import open_current
from ..lock import writer_lock
from ..manifest import IndexDirError
from ..store import DB_NAME, Store
from .files import NeighbourGraph, folder, read_graph, read_info, write_graph
from .partition import RECALL_TARGET, knn_graph, merge

DEFAULT_K = 16
"""Neighbours stored per item: the duplicate scan's 16, and the map's 15 (itself included)."""
UPDATE_CHUNK = 1024
"""Rows searched at a time by :func:`update_graph`."""
CANDIDATES = 2
""":func:`update_graph` asks the index for this many times ``k`` candidates a row and
keeps the ``k`` of highest cosine between the stored vectors (the index may hold
post-processed vectors, whose order differs a little)."""


@dataclass
class GraphReport:
    """What :func:`build_graph` did."""

    index_dir: Path
    count: int
    k: int
    built: bool
    """False: a current graph was reused (its build took no time here)."""
    seconds: float
    info: dict[str, Any]

    def summary(self) -> str:
        facts = self.info
        how = ("exact" if facts.get("exact") else
               f"{facts.get('cells')} cells, {facts.get('probes')} probed")
        verb = f"built in {self.seconds:.1f} s" if self.built else "reused"
        resumed = facts.get("resumed_cells") if self.built else 0
        more = f", resumed after {resumed} cells" if resumed else ""
        return (f"neighbour graph {verb}: {self.count} items x {self.k} neighbours "
                f"({how}; recall@{self.k} {facts.get('recall', float('nan')):.3f} on "
                f"{facts.get('recall_sample')} sampled items{more})")


def is_current(info: dict[str, Any] | None, generation: int, k: int) -> bool:
    """``info`` (``graph.json``) describes a graph of this index state with ``>= k``
    neighbours an item (or all the others, in a smaller index)."""
    if not info or info.get("generation") != generation:
        return False
    return int(info.get("k", 0)) >= min(k, int(info.get("count", 0)) - 1)


def build_graph(index_dir: Path, store: Store, k: int = DEFAULT_K, *,
                store_k: int | None = None, vectors: np.ndarray | None = None,
                force: bool = False, seed: int = 0, recall_target: float = RECALL_TARGET,
                progress: bool = True) -> GraphReport:
    """The stored graph of ``index_dir`` with ``>= k`` neighbours an item, built unless a
    current one exists (or ``force``), with ``store_k`` (default ``k``) neighbours then.
    ``vectors``: the embedded items' vectors in id order when the caller holds them
    already (else read from the shards)."""
    start = time.perf_counter()
    if k < 1:
        raise ValueError(f"neighbours must be >= 1, got {k}")
    info = read_info(index_dir)
    if not force and is_current(info, store.generation, k):
        return GraphReport(index_dir, int(info["count"]), int(info["k"]), False, 0.0, info)
    ids, shard_numbers, rows = store.embedded_locations()
    n = len(ids)
    if n < 2:
        raise IndexDirError(f"{index_dir}: {n} items; a neighbour graph needs at least 2")
    if vectors is None:
        vectors = shards.gather(index_dir, shard_numbers, rows)
    k = min(max(k, store_k or 0), n - 1)
    work = folder(index_dir) / "work"
    key = {"generation": store.generation, "count": n, "k": k, "first": int(ids[0]),
           "last": int(ids[-1])}
    pos, scores, facts = knn_graph(np.ascontiguousarray(vectors, dtype=np.float32), k, work,
                                   key, seed, recall_target, progress)
    neighbours = np.where(pos >= 0, ids[pos.clip(0)], -1)
    del pos
    seconds = time.perf_counter() - start
    graph = NeighbourGraph(ids, neighbours, scores, {
        **facts, "generation": store.generation, "seconds": round(seconds, 2),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "added": 0, "removed": 0})
    write_graph(index_dir, graph)
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    return GraphReport(index_dir, n, k, True, seconds, graph.info)


def ensure_graph(index_dir: str | Path, k: int = DEFAULT_K, *, force: bool = False,
                 progress: bool = True, command: str = "groco index graph") -> GraphReport:
    """:func:`build_graph` under the directory's writer lock."""
    index_dir = Path(index_dir)
    if not (index_dir / DB_NAME).is_file():
        raise IndexDirError(f"{index_dir}: not an index directory (no {DB_NAME})")
    with writer_lock(index_dir, command), Store(index_dir / DB_NAME) as store:
        return build_graph(index_dir, store, k, force=force, progress=progress)


def update_graph(index_dir: Path, store: Store, progress: bool = True,
                 index: Any = None) -> dict[str, int] | None:
    """Bring the stored graph level with the index (module docstring); ``None`` when the
    directory has none. ``index``: the directory's current FAISS index (loaded here when
    ``None`` and there is work)."""
    info = read_info(index_dir)
    if info is None:
        return None
    if info.get("generation") == store.generation:
        return {"added": 0, "removed": 0, "searched": 0}
    old = read_graph(index_dir)
    ids, shard_numbers, rows = store.embedded_locations()
    if len(ids) < 2:
        return None
    k = old.k
    at = positions_of(ids, old.ids)  # each old row's position now (-1: deleted)
    keep = at >= 0
    neighbours = np.full((len(ids), k), -1, np.int64)
    scores = np.full((len(ids), k), -np.inf, np.float32)
    neighbours[at[keep]], scores[at[keep]] = old.neighbours[keep], old.scores[keep]
    gone = (neighbours >= 0) & (positions_of(ids, neighbours.ravel()).reshape(
        neighbours.shape) < 0)
    neighbours[gone], scores[gone] = -1, -np.inf
    is_new = np.ones(len(ids), bool)
    is_new[at[keep]] = False
    new_ids = ids[is_new]
    redo = np.flatnonzero(gone.any(axis=1) | is_new)
    if len(redo) and index is None:
        index = open_current(index_dir)[1]
    width = min(index.ntotal, CANDIDATES * k + 1) if len(redo) else 0
    with progress_bar(len(redo), desc="neighbour graph", unit="item",
                      disable=not progress or not len(redo)) as bar:
        for lo in range(0, len(redo), UPDATE_CHUNK):
            chunk = redo[lo:lo + UPDATE_CHUNK]
            queries = shards.gather(index_dir, shard_numbers[chunk], rows[chunk])
            found_pos = positions_of(ids, search(index, queries, width)[1])
            found_pos[found_pos == chunk[:, None]] = -1  # stale ids and itself
            found_s = _cosines(index_dir, queries, found_pos, shard_numbers, rows)
            own_pos = positions_of(ids, neighbours[chunk].ravel()).reshape(len(chunk), k)
            merged_pos, merged_s = merge(own_pos.astype(np.int32), scores[chunk],
                                         found_pos.astype(np.int32),
                                         np.where(found_pos >= 0, found_s, -np.inf))
            neighbours[chunk] = np.where(merged_pos >= 0, ids[merged_pos.clip(0)], -1)
            scores[chunk] = merged_s
            bar.update(len(chunk))
    _insert_new(ids, neighbours, scores, new_ids)
    graph = NeighbourGraph(ids, neighbours, scores, {
        **old.info, "generation": store.generation,
        "added": int(old.info.get("added", 0)) + len(new_ids),
        "removed": int(old.info.get("removed", 0)) + int((~keep).sum())})
    write_graph(index_dir, graph)
    return {"added": len(new_ids), "removed": int((~keep).sum()), "searched": len(redo)}


def _cosines(index_dir: Path, queries: np.ndarray, pos: np.ndarray,
             shard_numbers: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Cosine between each query and its candidates (positions, ``-1`` = none: ``-inf``)
    from the stored vectors."""
    out = np.full(pos.shape, -np.inf, np.float32)
    valid = pos >= 0
    if not valid.any():
        return out
    unique, slot = np.unique(pos[valid], return_inverse=True)
    base = shards.gather(index_dir, shard_numbers[unique], rows[unique])
    where = np.full(pos.shape, -1, np.int64)
    where[valid] = slot
    for col in range(pos.shape[1]):
        hit = where[:, col] >= 0
        out[hit, col] = np.einsum("ij,ij->i", queries[hit], base[where[hit, col]])
    return out


def _insert_new(ids: np.ndarray, neighbours: np.ndarray, scores: np.ndarray,
                new_ids: np.ndarray) -> None:
    """Each new item into the rows of the items in its own row (in place), where it beats
    their worst edge."""
    if not len(new_ids):
        return
    rows = np.searchsorted(ids, new_ids)
    targets = neighbours[rows]
    valid = targets >= 0
    src = np.broadcast_to(new_ids[:, None], targets.shape)[valid]
    dst_pos = np.searchsorted(ids, targets[valid])
    s = scores[rows][valid]
    better = s > scores[dst_pos, -1]
    src, dst_pos, s = src[better], dst_pos[better], s[better]
    if not len(src):
        return
    order = np.lexsort((-s, dst_pos))
    src, dst_pos, s = src[order], dst_pos[order], s[order]
    k = neighbours.shape[1]
    starts = np.flatnonzero(np.r_[True, dst_pos[1:] != dst_pos[:-1]])
    rank = np.arange(len(dst_pos)) - np.repeat(starts, np.diff(np.r_[starts, len(dst_pos)]))
    take = rank < k
    src, dst_pos, s, rank = src[take], dst_pos[take], s[take], rank[take]
    touched = np.unique(dst_pos)
    extra_ids = np.full((len(touched), k), -1, np.int64)
    extra_s = np.full((len(touched), k), -np.inf, np.float32)
    slot = np.searchsorted(touched, dst_pos)
    extra_ids[slot, rank], extra_s[slot, rank] = src, s
    own = neighbours[touched]
    both_ids = np.concatenate([own, extra_ids], axis=1)
    both_s = np.concatenate([scores[touched], extra_s], axis=1)
    held = (extra_ids[:, :, None] == own[:, None, :]).any(-1)
    both_s[:, k:][held] = -np.inf
    best = np.argsort(-both_s, axis=1, kind="stable")[:, :k]
    neighbours[touched] = np.take_along_axis(both_ids, best, axis=1)
    scores[touched] = np.take_along_axis(both_s, best, axis=1)
    neighbours[touched] = np.where(np.isfinite(scores[touched]), neighbours[touched], -1)
