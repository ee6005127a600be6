"""Near-duplicate groups of an index directory: exact copies (same content hash) and near
copies (cosine similarity >= a threshold), found without an N x N matrix.

How (bounded memory at any collection size):

1. **Candidate pairs.** The stored embeddings are read shard by shard (memory-mapped) in
   batches of ``batch_size`` and each batch is searched in the directory's own FAISS
   index for its ``neighbours`` nearest vectors: a k-NN graph, ``batch_size x
   neighbours`` scores at a time, never ``N x N``. Pairs scoring below ``floor`` are
   dropped at once; with an index whose scores are approximate (PQ, SQ) the candidates
   within :data:`RESCORE_MARGIN` of the floor are rescored exactly from the stored
   vectors. Exact copies are paired by the ``hash`` column of ``meta.sqlite`` (blake2b of
   the file's bytes, recorded at build time by every groco version), whatever their
   vectors.
2. **Groups.** At a threshold ``t >= floor`` the pairs scoring ``>= t`` and the exact pairs
   are the edges of a graph; its connected components (union-find, transitive: A~B and
   B~C put A, B, C together) with two or more files are the groups.

:func:`find_duplicate_groups` does both in one call. :func:`scan_duplicates` does step 1
once at a low ``floor`` and returns a :class:`DuplicateScan` whose
:meth:`DuplicateScan.groups` regroups at any threshold ``>= floor`` in milliseconds (a UI
slider). Memory: the pairs kept (at most ``N x neighbours``, far fewer above a useful
floor), the id table (24 bytes an image) and one batch; the FAISS index as loaded for
search.

Each group lists its files best first: the *representative* (the file linked to most
others at the threshold; ties: the larger file, then the path), then the others by
their cosine similarity to it. No torch here (FAISS, NumPy, SciPy and SQLite).
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
from .faiss_index import search
from .indexfile import open_current
from .manifest import damaged
from .store import DB_NAME, EMBEDDED, FileRow, Store

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.95
"""Default cosine threshold of ``groco index dupes`` (see BENCHMARKS.md, Near-duplicates)."""
DEFAULT_NEIGHBOURS = 16
"""Candidates searched per image (the k of the k-NN graph)."""
DEFAULT_BATCH = 4096
"""Query vectors searched at a time."""
RESCORE_MARGIN = 0.1
"""Approximate-score indexes: candidates within this of the floor are rescored exactly."""
APPROXIMATE_CODES = ("PQ", "SQ", "LSH", "RaBitQ")
"""Factory-string parts of indexes that score compressed codes, not the stored floats."""
GROUP_CHUNK = 65_536
"""Files of groups whose rows and vectors are read at a time by :meth:`DuplicateScan.groups`."""

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

    def groups(self, threshold: float | None = None) -> list[DuplicateGroup]:
        """The groups at ``threshold`` (default: the floor), largest first (ties: higher
        ``min_score``, then the representative's path). ``ValueError`` for a threshold
        outside ``[floor, 1]``."""
        threshold = self.floor if threshold is None else float(threshold)
        if not self.floor <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [{self.floor:g}, 1] (the scan's floor "
                             f"is {self.floor:g}), got {threshold:g}")
        keep = self._score >= threshold
        a = np.concatenate([self._a[keep], self._exact_a])
        b = np.concatenate([self._b[keep], self._exact_b])
        if len(a) == 0:
            return []
        nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
        ea, eb = inverse[:len(a)], inverse[len(a):]
        graph = coo_matrix((np.ones(len(ea), np.int8), (ea, eb)),
                           shape=(len(nodes), len(nodes)))
        _, component = connected_components(graph, directed=False)
        degree = np.bincount(ea, minlength=len(nodes)) + np.bincount(eb, minlength=len(nodes))
        order = np.argsort(component, kind="stable")
        bounds = np.flatnonzero(np.diff(component[order])) + 1
        members = np.split(order, bounds)
        groups: list[DuplicateGroup] = []
        with Store(self.index_dir / DB_NAME, readonly=True) as store:
            batch: list[np.ndarray] = []
            size = 0
            for part in members:
                batch.append(part)
                size += len(part)
                if size >= GROUP_CHUNK:
                    groups += self._make_groups(store, batch, nodes, degree)
                    batch, size = [], 0
            groups += self._make_groups(store, batch, nodes, degree)
        groups.sort(key=lambda g: (-g.size, -g.min_score, g.files[0].relpath))
        return groups

    def _make_groups(self, store: Store, batch: list[np.ndarray], nodes: np.ndarray,
                     degree: np.ndarray) -> list[DuplicateGroup]:
        """The groups of a batch of components (node positions), with their scores."""
        if not batch:
            return []
        ids = [int(i) for part in batch for i in nodes[part]]
        rows = {i: r for i, r in store.rows(ids).items() if r.status == EMBEDDED}
        present = [i for i in ids if i in rows]  # a row an update deleted meanwhile is gone
        if not present:
            return []
        vectors = shards.gather(self.index_dir, np.array([rows[i].shard for i in present]),
                                np.array([rows[i].shard_row for i in present]))
        at = {i: n for n, i in enumerate(present)}
        out = []
        for part in batch:
            found = [(int(i), int(d)) for i, d in zip(nodes[part], degree[part], strict=True)
                     if int(i) in rows]
            if len(found) < 2:
                continue
            rep_id = min(found, key=lambda f: (-f[1], -rows[f[0]].size, rows[f[0]].path))[0]
            rep = rows[rep_id]
            ids_here = [i for i, _ in found]
            scores = vectors[[at[i] for i in ids_here]] @ vectors[at[rep_id]]
            hashes = [rows[i].hash for i in ids_here]
            files = []
            for i, score, digest in zip(ids_here, scores.tolist(), hashes, strict=True):
                exact = bool(digest) and hashes.count(digest) > 1
                same = exact and digest == rep.hash
                files.append(self._file(rows[i], 1.0 if same or i == rep_id
                                        else min(float(score), 1.0), exact))
            first = next(f for f in files if f.id == rep_id)
            others = sorted((f for f in files if f.id != rep_id),
                            key=lambda f: (-f.score, f.relpath))
            out.append(DuplicateGroup((first, *others)))
        return out

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
) -> DuplicateScan:
    """Find the candidate pairs of ``index`` scoring ``>= floor`` (module docstring).

    ``index``: an index directory, or an open :class:`groco.index.search.Searcher` (its
    loaded FAISS index is reused; no encoder is needed either way). Raises
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
    if isinstance(index, (str, Path)):
        index_dir = Path(index)
        manifest, faiss_index = open_current(index_dir)
    else:  # a Searcher: reuse what it loaded
        index_dir, manifest, faiss_index = Path(index.index_dir), index.manifest, index.index
    db = index_dir / DB_NAME
    if not db.is_file():
        raise damaged(db, "missing", index_dir)
    with Store(db, readonly=True) as store:
        ids, shard_numbers, shard_rows = store.embedded_locations()
        exact_groups = store.same_hash_ids()
        unhashed = store.count_unhashed()
    if unhashed:
        log.warning("%d embedded files have no content hash: their exact copies are found "
                    "by similarity only", unhashed)
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
) -> list[DuplicateGroup]:
    """The duplicate groups of ``index`` at cosine ``threshold``, largest first.

    Exact copies (same content hash) are always grouped; near copies when their
    embeddings' cosine similarity is ``>= threshold`` (transitively). Same arguments and
    errors as :func:`scan_duplicates`; equals ``scan_duplicates(index, t).groups(t)``.
    """
    return scan_duplicates(index, threshold, neighbours=neighbours, batch_size=batch_size,
                           progress=progress).groups(threshold)


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
            known = _positions(ids, b) >= 0  # a stale index may return deleted ids
            a, b, s = a[known], b[known], s[known]
            if approximate and len(a):
                s = _exact_scores(index_dir, ids, shard_numbers, shard_rows, a, b)
                a, b, s = a[s >= floor], b[s >= floor], s[s >= floor]
            found_a.append(np.minimum(a, b))
            found_b.append(np.maximum(a, b))
            found_s.append(s.astype(np.float32))
            done += len(chunk)
            if progress is not None:
                progress(done, len(ids))
    if not found_a:
        empty = np.zeros(0, np.int64)
        return empty, empty.copy(), np.zeros(0, np.float32)
    a, b, s = np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_s)
    order = np.lexsort((-s, b, a))  # each pair once (found from both ends), best score
    a, b, s = a[order], b[order], s[order]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[first], b[first], s[first]


def _positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Position of each of ``wanted`` in the sorted ``ids``; -1 where absent."""
    at = np.minimum(np.searchsorted(ids, wanted), max(len(ids) - 1, 0))
    return np.where(ids[at] == wanted, at, -1) if len(ids) else np.full(len(wanted), -1)


def _exact_scores(index_dir: Path, ids: np.ndarray, shard_numbers: np.ndarray,
                  shard_rows: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each pair ``(a[i], b[i])`` from the stored vectors."""
    pa, pb = _positions(ids, a), _positions(ids, b)
    va = shards.gather(index_dir, shard_numbers[pa], shard_rows[pa])
    vb = shards.gather(index_dir, shard_numbers[pb], shard_rows[pb])
    return np.einsum("ij,ij->i", va, vb)
