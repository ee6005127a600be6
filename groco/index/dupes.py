"""Near-duplicate groups of an index directory: exact copies (same content hash) and near
copies (cosine similarity >= a threshold), found without an N x N matrix.

How (bounded memory at any collection size):

1. **Candidate pairs.** The edges of the index's stored neighbour graph
   (:mod:`groco.index.neighbours`: each item's ``neighbours`` nearest, cosines of the
   stored embeddings; built once and shared with the map) scoring ``>= floor``. Where no
   current graph can be had (the app's reader, another writer busy), the stored
   embeddings are read shard by shard in batches of ``batch_size`` and searched in the
   directory's own FAISS index instead; with an index whose scores are approximate (PQ,
   SQ) the candidates within :data:`RESCORE_MARGIN` of the floor are rescored exactly
   from the stored vectors. Exact copies are paired by the ``hash`` column of
   ``meta.sqlite`` (blake2b of the file's bytes, recorded at build time by every groco
   version), whatever their vectors.
2. **Groups** at a threshold ``t >= floor``, from the pairs scoring ``>= t``. Byte-identical
   files always share a group. Then *star* grouping (Aslam et al., "The star clustering
   algorithm", 2004, here greedy over the k-NN graph): files are taken as centres in
   the order of their best pair's score (then their number of pairs); a centre that no
   earlier group took makes a group with its pairs that are still free. So every file of
   a group is a byte copy of the group's first file (its *representative*) or scores
   ``>= t`` with it, and that score is the one listed. Plain union-find (connected
   components, ``linkage="connected"``) chains in dense regions: on Fashion-MNIST with
   the raw-pixel encoder at 0.95 it put 962 files in one group (pair precision 0.000,
   see BENCHMARKS.md, Near-duplicates).

:func:`find_duplicate_groups` does both in one call. :func:`scan_duplicates` does step 1
once at a low ``floor`` and returns a :class:`DuplicateScan` whose
:meth:`DuplicateScan.groups` regroups at any threshold ``>= floor`` in milliseconds (a UI
slider). Memory: the pairs kept (at most ``N x neighbours``, far fewer above a useful
floor), the id table (24 bytes an image) and the graph's arrays (12 bytes an edge); on
the search route one batch and the FAISS index as loaded.

Each group lists its representative first (of byte-identical files the largest, then
the first path), then the others by their cosine similarity to it, best first. No
torch here (FAISS, NumPy, SciPy and SQLite).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from . import shards
from .faiss.query import search
from .faiss.source import positions_of
from .indexfile import open_current
from .lock import IndexBusyError
from .manifest import damaged, read_manifest
from .neighbours import ensure_graph, is_current, read_graph, read_info
from .store import DB_NAME, EMBEDDED, FileRow, Store

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.97
"""Default cosine threshold of ``groco index dupes``: the lowest at which the groups' pair
precision is >= 0.95 with the ImageNet EfficientNet-Lite0 encoder on Fashion-MNIST with
planted copies, both at 28 px (0.964; 0.96 gave 0.904) and resized to 112 px (0.980;
0.96 gave 0.946). At 112 px it finds 100/100 byte copies, 99/100 JPEG (q70) copies,
100/100 resized ones, 0/100 crops of 81 % of the area (those need ~0.90 and come with
far more false pairs); ``benchmarks/dupes.py quality``, BENCHMARKS.md (Near-duplicates)."""
DEFAULT_NEIGHBOURS = 16
"""Candidates searched per image (the k of the k-NN graph)."""
DEFAULT_BATCH = 4096
"""Query vectors searched at a time."""
RESCORE_MARGIN = 0.1
"""Approximate-score indexes: candidates within this of the floor are rescored exactly."""
APPROXIMATE_CODES = ("PQ", "SQ", "LSH", "RaBitQ")
"""Factory-string parts of indexes that score compressed codes, not the stored floats."""
GROUP_BATCH = 4096
"""Groups whose metadata rows are read at a time by :meth:`DuplicateScan.groups`."""
LINKAGES = ("star", "connected")
"""How pairs become groups (:meth:`DuplicateScan.groups`)."""

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called after each batch of the scan."""


@dataclass(frozen=True)
class DuplicateFile:
    """One file of a group."""

    id: int
    """Its FAISS id (``meta.sqlite`` row id)."""
    relpath: str
    """POSIX path relative to the images root."""
    path: str
    """Absolute path (the images root recorded in the manifest + ``relpath``)."""
    label: str | None
    """First subfolder under the images root, ``None`` for files directly in it."""
    hash: str
    """Content hash (blake2b of the bytes, 16 hex); equal hashes = byte-identical files."""
    size: int
    """Bytes."""
    score: float
    """Cosine similarity to the group's representative (its first file; 1.0 for it)."""
    exact: bool
    """Byte-identical to another file of the group."""

    def to_dict(self) -> dict[str, Any]:
        return {"relpath": self.relpath, "path": self.path, "id": self.id,
                "label": self.label, "hash": self.hash, "size": self.size,
                "score": round(self.score, 6), "exact": self.exact}


@dataclass(frozen=True)
class DuplicateGroup:
    """Files that are copies of each other: ``files[0]`` is the representative."""

    files: tuple[DuplicateFile, ...]

    @property
    def size(self) -> int:
        return len(self.files)

    @property
    def exact(self) -> bool:
        """Every file has the same content hash."""
        return len({f.hash for f in self.files}) == 1 and bool(self.files[0].hash)

    @property
    def min_score(self) -> float:
        """The lowest similarity of a file to the representative."""
        return min(f.score for f in self.files[1:])

    @property
    def relpaths(self) -> list[str]:
        return [f.relpath for f in self.files]

    def to_dict(self) -> dict[str, Any]:
        """``{"size", "exact", "min_score", "files": [DuplicateFile.to_dict(), ...]}``."""
        return {"size": self.size, "exact": self.exact,
                "min_score": round(self.min_score, 6),
                "files": [f.to_dict() for f in self.files]}




class DuplicateScan:
    """The candidate pairs of an index (step 1 of the module docstring), at ``floor``.

    Made by :func:`scan_duplicates`; :meth:`groups` groups them at any threshold
    ``>= floor``. Holds the pairs (12 bytes each), not the vectors: :meth:`groups` reads
    the metadata and vectors of the grouped files from the index directory (after a
    ``groco index update``, scan again).
    """

    def __init__(self, index_dir: Path, images_root: Path, floor: float, count: int,
                 pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
                 exact: tuple[np.ndarray, np.ndarray]) -> None:
        self.index_dir = index_dir
        self.images_root = images_root
        self.floor = floor
        """The lowest threshold :meth:`groups` accepts."""
        self.count = count
        """Embedded images scanned."""
        self._a, self._b, self._score = pairs  # ids (int64), a < b, and their cosine
        self._exact_a, self._exact_b = exact  # pairs of byte-identical files

    @property
    def pairs(self) -> int:
        """Candidate pairs kept (scoring ``>= floor``), exact pairs apart."""
        return len(self._score)

    def groups(self, threshold: float | None = None,
               linkage: str = "star") -> list[DuplicateGroup]:
        """The groups at ``threshold`` (default: the floor), largest first (ties: higher
        ``min_score``, then the representative's path).

        ``linkage``: ``"star"`` (default, module docstring: every file of a group is a
        byte copy of the representative or scores ``>= threshold`` with it, its
        ``score``) or ``"connected"`` (the connected components, transitive: a file's
        ``score`` is its best pair in the group; in dense regions chains grow into huge
        groups). ``ValueError`` for a threshold outside ``[floor, 1]`` or another linkage.
        """
        threshold = self.floor if threshold is None else float(threshold)
        if not self.floor <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [{self.floor:g}, 1] (the scan's floor "
                             f"is {self.floor:g}), got {threshold:g}")
        if linkage not in LINKAGES:
            raise ValueError(f"linkage must be one of {', '.join(LINKAGES)}, got {linkage!r}")
        keep = self._score >= threshold
        a, b, score = self._a[keep], self._b[keep], self._score[keep]
        nodes = np.unique(np.concatenate([a, b, self._exact_a, self._exact_b]))
        if len(nodes) == 0:
            return []
        # byte-identical files form one super-node (``copy_of``); pairs join super-nodes
        copy_of = _components(len(nodes), np.searchsorted(nodes, self._exact_a),
                              np.searchsorted(nodes, self._exact_b))
        supers = int(copy_of.max()) + 1
        sa, sb = copy_of[np.searchsorted(nodes, a)], copy_of[np.searchsorted(nodes, b)]
        sa, sb, score = _best_pairs(sa, sb, score)
        copies = np.bincount(copy_of, minlength=supers)
        best = np.full(supers, -np.inf, np.float32)
        np.maximum.at(best, sa, score)
        np.maximum.at(best, sb, score)
        best[copies > 1] = 1.0
        degree = np.bincount(sa, minlength=supers) + np.bincount(sb, minlength=supers)
        if linkage == "star":
            found = _stars(supers, sa, sb, score, best, degree, copies)
        else:
            label = _components(supers, sa, sb)
            order = np.argsort(label, kind="stable")
            found = []
            for part in np.split(order, np.flatnonzero(np.diff(label[order])) + 1):
                if len(part) > 1 or copies[part[0]] > 1:
                    centre = part[np.argmax(degree[part])]
                    found.append([(int(x), 1.0 if x == centre else float(best[x]))
                                  for x in [centre, *part[part != centre]]])
        members = np.argsort(copy_of, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(copies)])
        groups: list[DuplicateGroup] = []
        with Store(self.index_dir / DB_NAME, readonly=True) as store:
            for start in range(0, len(found), GROUP_BATCH):
                batch = found[start:start + GROUP_BATCH]
                ids = {x: [int(i) for i in nodes[members[bounds[x]:bounds[x + 1]]]]
                       for group in batch for x, _ in group}
                rows = store.rows(i for each in ids.values() for i in each)
                groups += [g for g in (self._group(group, ids, rows) for group in batch) if g]
        groups.sort(key=lambda g: (-g.size, -g.min_score, g.files[0].relpath))
        return groups

    def _group(self, group: list[tuple[int, float]], ids: dict[int, list[int]],
               rows: dict[int, FileRow]) -> DuplicateGroup | None:
        """One group from its super-nodes ``(node, score)``, the centre first; ``None``
        when fewer than two of its files are still in the metadata."""
        files = []
        for n, (node, score) in enumerate(group):
            present = [rows[i] for i in ids[node] if i in rows and rows[i].status == EMBEDDED]
            present.sort(key=lambda r: (-r.size, r.path))
            files += [self._file(r, 1.0 if n == 0 else min(score, 1.0), len(present) > 1)
                      for r in present]
            if n == 0 and not present:
                return None
        if len(files) < 2:
            return None
        first, *others = files
        return DuplicateGroup((first, *sorted(others, key=lambda f: (-f.score, f.relpath))))

    def _file(self, row: FileRow, score: float, exact: bool) -> DuplicateFile:
        return DuplicateFile(id=row.id, relpath=row.path, path=str(self.images_root / row.path),
                             label=row.label, hash=row.hash, size=row.size, score=score,
                             exact=exact)


def scan_duplicates(
    index: str | Path | Any,
    floor: float = DEFAULT_THRESHOLD,
    *,
    neighbours: int = DEFAULT_NEIGHBOURS,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
    store_graph: bool = True,
    graph_progress: bool = False,
) -> DuplicateScan:
    """Find the candidate pairs of ``index`` scoring ``>= floor`` (module docstring).

    ``index``: an index directory, or an open :class:`groco.index.search.Searcher` (its
    loaded FAISS index is reused; no encoder is needed either way). The candidates are
    the index's stored neighbour graph (:mod:`groco.index.neighbours`) when it is current
    and holds ``neighbours`` an item; for a directory with ``store_graph``, the graph is
    built and stored first when it is not (under the writer lock; while another process
    writes, the index is searched instead). Otherwise the index's own search, batch by
    batch. ``graph_progress``: show the graph build's bar. Raises
    :class:`groco.index.manifest.IndexDirError` (one line) for a missing, unfinished or
    damaged directory, ``ValueError`` for a floor outside ``[-1, 1]`` or ``neighbours``
    / ``batch_size`` below 1.
    """
    floor = float(floor)
    if not -1.0 <= floor <= 1.0:
        raise ValueError(f"threshold must be in [-1, 1] (cosine similarity), got {floor:g}")
    if neighbours < 1 or batch_size < 1:
        raise ValueError(f"neighbours and batch_size must be >= 1, got {neighbours} and "
                         f"{batch_size}")
    searcher = not isinstance(index, (str, Path))
    index_dir = Path(index.index_dir) if searcher else Path(index)
    db = index_dir / DB_NAME
    if not db.is_file():
        raise damaged(db, "missing", index_dir)
    if not searcher and store_graph:
        try:
            report = ensure_graph(index_dir, neighbours, progress=graph_progress,
                                  command="groco index dupes")
            log.info("%s", report.summary())
        except IndexBusyError as error:
            log.warning("%s: searching the index instead of storing its neighbour graph", error)
    manifest = index.manifest if searcher else read_manifest(index_dir)
    with Store(db, readonly=True) as store:
        ids, shard_numbers, shard_rows = store.embedded_locations()
        exact_groups = store.same_hash_ids()
        unhashed = store.count_unhashed()
        generation = store.generation
    if unhashed:
        log.warning("%d embedded files have no content hash: their exact copies are found "
                    "by similarity only", unhashed)
    graph = read_graph(index_dir) if is_current(read_info(index_dir), generation,
                                                 neighbours) else None
    if graph is not None and np.array_equal(graph.ids, ids):
        a, b, score = graph.pairs(floor)
        pairs = _best_pairs(a, b, score)
        if progress is not None:
            progress(len(ids), len(ids))
    else:  # no current graph: the index's own search, batch by batch
        faiss_index = index.index if searcher else open_current(index_dir)[1]
        approximate = any(code in manifest["index_type"] for code in APPROXIMATE_CODES)
        pairs = _scan(index_dir, faiss_index, ids, shard_numbers, shard_rows, floor,
                      min(neighbours + 1, max(faiss_index.ntotal, 1)), batch_size,
                      approximate, progress)
    exact_a = np.array([g[0] for g in exact_groups for _ in g[1:]], dtype=np.int64)
    exact_b = np.array([i for g in exact_groups for i in g[1:]], dtype=np.int64)
    return DuplicateScan(index_dir, Path(manifest["images_root"]), floor, len(ids), pairs,
                         (exact_a, exact_b))


def find_duplicate_groups(
    index: str | Path | Any,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    neighbours: int = DEFAULT_NEIGHBOURS,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
    store_graph: bool = True,
) -> list[DuplicateGroup]:
    """The duplicate groups of ``index`` at cosine ``threshold``, largest first.

    Exact copies (same content hash) are always grouped; near copies when their
    embeddings' cosine similarity is ``>= threshold`` (transitively). Same arguments and
    errors as :func:`scan_duplicates`; equals ``scan_duplicates(index, t).groups(t)``.
    """
    return scan_duplicates(index, threshold, neighbours=neighbours, batch_size=batch_size,
                           progress=progress, store_graph=store_graph).groups(threshold)


def _scan(index_dir: Path, index: faiss.Index, ids: np.ndarray, shard_numbers: np.ndarray,
          shard_rows: np.ndarray, floor: float, k: int, batch_size: int, approximate: bool,
          progress: Progress | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs ``(a, b, score)`` with ``a < b`` and ``score >= floor``, over the k-NN
    graph of the stored vectors searched in ``index`` batch by batch."""
    found_a, found_b, found_s = [], [], []
    cut = floor - RESCORE_MARGIN if approximate else floor
    order = np.lexsort((shard_rows, shard_numbers))  # read every shard once, in row order
    bounds = np.flatnonzero(np.diff(shard_numbers[order])) + 1
    done = 0
    for part in np.split(order, bounds) if len(order) else []:
        number = int(shard_numbers[part[0]])
        vectors = shards.load_vectors(index_dir, number)
        for start in range(0, len(part), batch_size):
            chunk = part[start:start + batch_size]
            try:
                queries = np.ascontiguousarray(vectors[shard_rows[chunk]], dtype=np.float32)
            except (IndexError, ValueError) as error:
                raise shards.damaged_shard(index_dir, number, error) from error
            scores, neighbour_ids = search(index, queries, k)
            query_ids = np.repeat(ids[chunk], k)
            scores, neighbour_ids = scores.ravel(), neighbour_ids.ravel()
            keep = ((neighbour_ids >= 0) & (neighbour_ids != query_ids) & (scores >= cut))
            a, b, s = query_ids[keep], neighbour_ids[keep], scores[keep]
            known = positions_of(ids, b) >= 0  # a stale index may return deleted ids
            a, b, s = a[known], b[known], s[known]
            if approximate and len(a):
                s = _exact_scores(index_dir, ids, shard_numbers, shard_rows, a, b)
                a, b, s = a[s >= floor], b[s >= floor], s[s >= floor]
            found_a.append(a)
            found_b.append(b)
            found_s.append(s.astype(np.float32))
            done += len(chunk)
            if progress is not None:
                progress(done, len(ids))
    if not found_a:
        empty = np.zeros(0, np.int64)
        return empty, empty.copy(), np.zeros(0, np.float32)
    # each pair once (found from both ends)
    return _best_pairs(np.concatenate(found_a), np.concatenate(found_b),
                       np.concatenate(found_s))


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component label of each of ``n`` nodes under the edges ``(a, b)``."""
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _best_pairs(a: np.ndarray, b: np.ndarray, score: np.ndarray,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each unordered pair once with its best score; self-pairs dropped."""
    a, b = np.minimum(a, b), np.maximum(a, b)
    keep = a != b
    a, b, score = a[keep], b[keep], score[keep]
    order = np.lexsort((-score, b, a))
    a, b, score = a[order], b[order], score[order]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[first], b[first], score[first]


def _stars(n: int, a: np.ndarray, b: np.ndarray, score: np.ndarray, best: np.ndarray,
           degree: np.ndarray, copies: np.ndarray) -> list[list[tuple[int, float]]]:
    """Star grouping of ``n`` super-nodes: centres by best pair score, then degree, then
    copies, each taking its still free neighbours; ``[(centre, 1.0), (node, score)...]``."""
    graph = coo_matrix((np.concatenate([score, score]),
                        (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n, n)).tocsr()
    free = np.ones(n, bool)
    stars = []
    for centre in np.lexsort((-copies, -degree, -best)):
        if not free[centre]:
            continue
        free[centre] = False
        lo, hi = graph.indptr[centre], graph.indptr[centre + 1]
        near, scores = graph.indices[lo:hi], graph.data[lo:hi]
        take = free[near]
        free[near[take]] = False
        if take.any() or copies[centre] > 1:
            stars.append([(int(centre), 1.0), *zip(near[take].tolist(),
                                                    scores[take].tolist(), strict=True)])
    return stars


def _exact_scores(index_dir: Path, ids: np.ndarray, shard_numbers: np.ndarray,
                  shard_rows: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each pair ``(a[i], b[i])`` from the stored vectors."""
    pa, pb = positions_of(ids, a), positions_of(ids, b)
    va = shards.gather(index_dir, shard_numbers[pa], shard_rows[pa])
    vb = shards.gather(index_dir, shard_numbers[pb], shard_rows[pb])
    return np.einsum("ij,ij->i", va, vb)
