"""Outliers and a representative sample of an index directory, as files a user can open
(``groco index curate``, the page's Curate tab).

Both read what the index stores: the outliers its neighbour graph (built and stored first
when missing or out of date, as ``groco index dupes`` does), the sample its embeddings.
Neither moves, deletes or opens an image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import shards
from ..manifest import IndexDirError, read_manifest
from ..neighbours import DEFAULT_K, ensure_graph, read_graph
from ..store import DB_NAME, FileRow, Store
from .outliers import DEFAULT_SCORE, global_scores, top_outliers
from .sample import coverage, k_centre, random_sample


@dataclass(frozen=True)
class CuratedFile:
    """One item of a curation answer."""

    id: int
    relpath: str
    path: str
    label: str | None
    score: float
    """Outliers: the outlier score; samples: the cosine distance to the earlier picks
    (``inf`` for the first)."""
    nearest_relpath: str | None = None
    """Outliers: the most similar other item (context for the user)."""
    nearest_cosine: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"relpath": self.relpath, "path": self.path, "id": self.id,
                               "label": self.label,
                               "score": round(self.score, 6) if np.isfinite(self.score)
                               else None}
        if self.nearest_relpath is not None:
            out["nearest"] = {"relpath": self.nearest_relpath,
                              "cosine": round(float(self.nearest_cosine or 0.0), 6)}
        return out


@dataclass
class SampleReport:
    """A representative sample and how well it covers the collection."""

    files: list[CuratedFile]
    radius: float
    """Largest cosine distance from any item to its nearest pick."""
    random_radius: float
    """The median radius of uniform samples of the same size (``random_samples`` of them)."""
    count: int
    """Items in the collection."""

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "radius": round(self.radius, 6),
                "random_radius": round(self.random_radius, 6),
                "files": [f.to_dict() for f in self.files]}


def _check_count(count: int, n: int, what: str) -> None:
    if count < 1:
        raise ValueError(f"{what} must be at least 1, got {count}")
    if count > n:
        raise ValueError(f"{what} {count} is larger than the collection ({n} items)")


def _file(root: Path, row: FileRow, score: float, **nearest: Any) -> CuratedFile:
    return CuratedFile(id=row.id, relpath=row.path, path=str(root / row.path),
                       label=row.label, score=float(score), **nearest)


def find_outliers(index_dir: str | Path, count: int, score: str = DEFAULT_SCORE,
                  progress: bool = False, store_graph: bool = True) -> list[CuratedFile]:
    """The ``count`` most unusual items of ``index_dir`` (:mod:`.outliers`), most unusual
    first, each with its nearest other item. ``store_graph``: build and store the graph
    when it is missing or stale (else :class:`IndexDirError` naming the command)."""
    index_dir = Path(index_dir)
    if store_graph:
        ensure_graph(index_dir, DEFAULT_K, progress=progress, command="groco index curate")
    graph = read_graph(index_dir)
    with Store(index_dir / DB_NAME, readonly=True) as store:
        if graph is None or graph.info.get("generation") != store.generation:
            raise IndexDirError(f"{index_dir}: no current neighbour graph; run "
                                f"`groco index graph {index_dir}`")
        _check_count(count, len(graph.ids), "--outliers")
        values = None
        if score == "global":
            ids, numbers, rows_ = store.embedded_locations()  # ordered by id
            at = np.searchsorted(ids, graph.ids)  # graph row -> its location
            values = global_scores(len(graph.ids), lambda r: shards.gather(
                index_dir, numbers[at[r]], rows_[at[r]]))
        rows, values = top_outliers(graph, count, score, values)
        nearest = graph.neighbours[rows, 0]
        files = store.rows([*graph.ids[rows].tolist(), *nearest[nearest >= 0].tolist()])
    root = Path(read_manifest(index_dir)["images_root"])
    out = []
    for row, value, near, cosine in zip(rows, values, nearest, graph.scores[rows, 0],
                                        strict=True):
        item = files.get(int(graph.ids[row]))
        if item is None:
            continue
        other = files.get(int(near))
        out.append(_file(root, item, value, nearest_relpath=other.path if other else None,
                         nearest_cosine=float(cosine) if other else None))
    return out


def pick_sample(index_dir: str | Path, count: int, seed: int = 0, random_samples: int = 1,
                progress: Callable[[int], None] | None = None) -> SampleReport:
    """``count`` items of ``index_dir`` that cover it (:mod:`.sample`), deterministic for a
    ``seed``, with the radius reached beside the median of ``random_samples`` uniform
    samples of the same size (seeds ``seed``, ``seed + 1``, ...)."""
    index_dir = Path(index_dir)
    if not (index_dir / DB_NAME).is_file():
        raise IndexDirError(f"{index_dir}: not an index directory (no {DB_NAME})")
    with Store(index_dir / DB_NAME, readonly=True) as store:
        ids, numbers, rows = store.embedded_locations()
        _check_count(count, len(ids), "--sample")
        vectors = shards.gather(index_dir, numbers, rows)
        picks, gaps, radius = k_centre(vectors, count, seed, progress)
        files = store.rows(ids[picks].tolist())
    randoms = [coverage(vectors, random_sample(len(ids), count, seed + s))
               for s in range(max(1, random_samples))]
    root = Path(read_manifest(index_dir)["images_root"])
    picked = [_file(root, files[int(ids[p])], gap) for p, gap in zip(picks, gaps, strict=True)
              if int(ids[p]) in files]
    return SampleReport(picked, radius, float(np.median(randoms)), len(ids))

