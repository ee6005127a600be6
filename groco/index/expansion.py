"""An index state's post-processed search (:mod:`groco.index.postprocess`): written with
the index file, read by every search.

With post-processing on, each index state ``index-NNNNNN.faiss`` has two files beside it:

    index-NNNNNN.expand.npy       (n, dim) float32: each stored item's search vector d_i
                                  (centred, then DBA), rows in ascending id order
    index-NNNNNN.expand-ids.npy   (n,) int64: the ids of those rows

and its manifest records the settings (``postprocess``) and the collection's mean
(``postprocess_mean``). Both are written before the manifest switch, so a reader always
sees the expansion of the state it opened, and an update (which writes a new state)
recomputes every stored vector: the mean moves with the collection, and an item's DBA
vector with its neighbours.

**Search.** The FAISS index keeps the encoder's own vectors (duplicates and the map use
them). A query is searched there for a pool of candidates (``max(POOL, k + 1)``), and the
pool is ranked by the post-processed similarity: ``c(q) . d_j``, or with alpha-QE
``q' . d_j`` where ``q'`` expands ``c(q)`` with its best ``qe_k`` candidates. A result's
``score`` stays the encoder's cosine similarity to the query (what ``min_score`` and the
duplicate thresholds mean); the order is the post-processed one, near copies of the query
first (:meth:`Expansion.rank`).

DBA neighbours come from the index itself: each stored vector is searched for
``CANDIDATES * dba_k + 1`` neighbours in the encoder's space (itself dropped), and the
``dba_k`` nearest of them in the centred space are averaged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .faiss.query import search
from .faiss.source import VectorSource, positions_of
from .postprocess import Fitted, Postprocess, weighted_mean

log = logging.getLogger(__name__)

POOL = 100
"""Candidates a query takes from the FAISS index before the post-processed ranking."""
VECTORS_SUFFIX = ".expand.npy"
IDS_SUFFIX = ".expand-ids.npy"
CANDIDATES = 4
"""DBA candidates per neighbour kept: centring reorders neighbours, so the encoder-space
search takes more than ``dba_k``."""
_CHUNK = 1024


def expansion_names(index_file: str) -> tuple[str, str]:
    """The vectors and ids file names of index file ``index-NNNNNN.faiss``."""
    stem = index_file.removesuffix(".faiss")
    return stem + VECTORS_SUFFIX, stem + IDS_SUFFIX


def is_expansion_file(name: str) -> bool:
    return name.endswith(VECTORS_SUFFIX) or name.endswith(IDS_SUFFIX)


def collection_mean(source: VectorSource) -> np.ndarray:
    """The mean of the source's unit vectors (float64 sums, one chunk at a time)."""
    total = np.zeros(source.dim, np.float64)
    for _, vectors in source.chunks():
        total += vectors.sum(axis=0, dtype=np.float64)
    return (total / source.count).astype(np.float32)


def write_expansion(index_dir: Path, index_file: str, index: faiss.Index,
                    source: VectorSource, settings: Postprocess) -> dict[str, Any]:
    """Write the expansion of the state whose FAISS index ``index`` holds ``source`` (ids
    ascending); return the manifest fields that name it. Nothing is written when
    ``settings`` is all off."""
    if not settings.active:
        return {"postprocess": settings.to_dict(), "postprocess_mean": None}
    mean = collection_mean(source) if settings.centre else None
    fitted = Fitted(settings, mean)
    vectors_name, ids_name = expansion_names(index_file)
    tmp = index_dir / f".{vectors_name}.tmp"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                    shape=(source.count, source.dim))
    all_ids = np.empty(source.count, np.int64)
    for ids, vectors in source.chunks():
        for start in range(0, len(ids), _CHUNK):
            part_ids, part = ids[start:start + _CHUNK], vectors[start:start + _CHUNK]
            positions = np.searchsorted(source_ids(source), part_ids)
            out[positions] = _dba_rows(fitted, part_ids, part, index, source)
            all_ids[positions] = part_ids
    out.flush()
    del out
    os.replace(tmp, index_dir / vectors_name)
    _save_atomic(index_dir / ids_name, all_ids)
    return {"postprocess": settings.to_dict(),
            "postprocess_mean": None if mean is None else mean.tolist(),
            "expansion_file": vectors_name, "expansion_ids_file": ids_name}


def source_ids(source: VectorSource) -> np.ndarray:
    ids = getattr(source, "ids", None)
    if ids is None:
        raise TypeError("the expansion needs a source that lists its ids")
    return ids


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _dba_rows(fitted: Fitted, ids: np.ndarray, vectors: np.ndarray, index: faiss.Index,
              source: VectorSource) -> np.ndarray:
    """Search vectors of stored items ``(ids, vectors)``: centred, then DBA."""
    centred = fitted.centred(vectors)
    k = fitted.settings.dba_k
    if k == 0:
        return centred
    _, found = search(index, vectors, min(CANDIDATES * k + 1, index.ntotal))
    found = np.where(found == ids[:, None], -1, found)  # never itself
    positions = positions_of(source_ids(source), found)  # -1: no result, or not stored
    wanted = np.unique(positions[positions >= 0])
    if len(wanted) == 0:
        return centred
    _, neighbour_vectors = source.take(wanted)
    rows = np.where(positions >= 0, np.searchsorted(wanted, positions), -1)
    others = fitted.centred(neighbour_vectors)[np.maximum(rows, 0)]  # (n, k + 1, dim)
    sims = np.where(rows >= 0, np.einsum("nd,nkd->nk", centred, others), -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return weighted_mean(centred, np.take_along_axis(sims, order, axis=1),
                         np.take_along_axis(others, order[:, :, None], axis=1),
                         fitted.settings.alpha)


class Expansion:
    """The post-processed ranking of one index state (module docstring)."""

    def __init__(self, settings: Postprocess, mean: np.ndarray | None, vectors: np.ndarray,
                 ids: np.ndarray) -> None:
        self.fitted = Fitted(settings, mean)
        self.vectors = vectors
        self.ids = ids

    @classmethod
    def open(cls, index_dir: str | Path, manifest: dict[str, Any]) -> Expansion | None:
        """The expansion ``manifest`` names, memory-mapped; ``None`` when it has none."""
        settings = Postprocess.from_dict(manifest.get("postprocess"))
        name = manifest.get("expansion_file")
        if not settings.active or not name:
            return None
        from .manifest import damaged

        index_dir = Path(index_dir)
        paths = [index_dir / name, index_dir / manifest["expansion_ids_file"]]
        for path in paths:
            if not path.is_file():
                raise damaged(path, "missing", index_dir)
        try:
            vectors = np.load(paths[0], mmap_mode="r")
            ids = np.load(paths[1])
        except (OSError, ValueError) as error:
            raise damaged(paths[0], f"unreadable: {error}", index_dir) from error
        if vectors.shape != (manifest["count"], manifest["dim"]) or len(ids) != len(vectors):
            raise damaged(paths[0], f"holds {vectors.shape}, the manifest "
                          f"({manifest['count']}, {manifest['dim']})", index_dir)
        mean = manifest.get("postprocess_mean")
        return cls(settings, None if mean is None else np.asarray(mean, np.float32),
                   vectors, ids)

    @property
    def settings(self) -> Postprocess:
        return self.fitted.settings

    @property
    def expands_queries(self) -> bool:
        """Whether :meth:`expand` reads its candidate pool (alpha-QE is on)."""
        return self.settings.qe_k > 0

    def search_vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(found, d)``: which of ``ids`` the expansion holds, and their search vectors."""
        positions = positions_of(self.ids, ids)
        found = positions >= 0
        return found, np.asarray(self.vectors[positions[found]], dtype=np.float32)

    def expand(self, query: np.ndarray, pool_ids: np.ndarray,
               exclude: int | None = None) -> np.ndarray:
        """``q'``: the query centred, then alpha-QE with its best ``qe_k`` of the candidates
        ``pool_ids`` (``-1``: empty; ``exclude`` never used), as a ``(dim,)`` vector."""
        q = self.fitted.centred(np.asarray(query, np.float32).reshape(1, -1))[0]
        k = self.settings.qe_k
        pool_ids = pool_ids[(pool_ids >= 0) & (pool_ids != (-1 if exclude is None
                                                            else exclude))]
        if k == 0 or len(pool_ids) == 0:
            return q
        _, d = self.search_vectors(pool_ids)
        sims = d @ q
        top = np.argsort(-sims, kind="stable")[:k]
        return weighted_mean(q[None], sims[top][None], d[top][None], self.settings.alpha)[0]

    def rank(self, expanded: np.ndarray, scores: np.ndarray, ids: np.ndarray,
             copy_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates ``(scores, ids)`` (ids ``-1``: empty) reordered by the similarity of
        their search vectors to the expanded query: ``(scores, ids, rank_scores)``.
        Near copies of the query (encoder cosine ``score`` >= ``copy_score``, e.g. the
        duplicate threshold :data:`groco.index.dupes.DEFAULT_THRESHOLD`) come first, by
        ``score``: DBA moves a stored vector towards its neighbours, and a copy of the query
        is the best answer whatever they are. Candidates the expansion lacks are dropped."""
        keep = ids >= 0
        found, d = self.search_vectors(ids[keep])
        scores, ids = scores[keep][found], ids[keep][found]
        rank_scores = d @ expanded
        key = np.where(scores >= copy_score, 2.0 + scores, rank_scores)
        order = np.argsort(-key, kind="stable")
        return scores[order], ids[order], rank_scores[order]
