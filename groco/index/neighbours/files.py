"""The stored neighbour graph of an index directory: ``neighbours/graph.json`` and the
arrays it names.

``graph.json`` holds the facts (format, the index state it matches: ``generation`` and
``count``; ``k``; how it was computed: cells, probes, the recall@k measured on a sample;
seconds; items added and removed since) and the names of three ``.npy`` files written
before it, so a reader sees the old graph or the new one, never a mix:

- ``ids-T.npy``: the embedded ids, ascending (int64, ``N``), one row each;
- ``neighbours-T.npy``: each row's ``k`` nearest other ids, best first (int64, ``-1`` =
  none);
- ``scores-T.npy``: their cosine similarities (float32, ``-inf`` = none).

``T`` is a token unique to each write; the files of the previous write are removed after
``graph.json`` points at the new ones.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from groco.fileio import atomic_write_text

from ..manifest import IndexDirError

FOLDER = "neighbours"
INFO = "graph.json"
FORMAT = 1
ARRAYS = ("ids", "neighbours", "scores")


@dataclass
class NeighbourGraph:
    """An index's k-NN graph (module docstring): row ``i`` is the item ``ids[i]``."""

    ids: np.ndarray
    neighbours: np.ndarray
    scores: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.neighbours.shape[1])

    def positions(self) -> np.ndarray:
        """``neighbours`` as row positions (int64, ``-1`` = none or not a row)."""
        found = np.searchsorted(self.ids, self.neighbours).clip(0, max(0, len(self.ids) - 1))
        hit = (self.neighbours >= 0) & (self.ids[found] == self.neighbours)
        return np.where(hit, found, -1)

    def pairs(self, floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every edge scoring ``>= floor`` as ``(a, b, score)`` ids, both directions kept."""
        keep = (self.scores >= floor) & (self.neighbours >= 0)
        rows = np.broadcast_to(self.ids[:, None], self.neighbours.shape)
        return rows[keep], self.neighbours[keep], self.scores[keep]


def folder(index_dir: Path) -> Path:
    return Path(index_dir) / FOLDER


def read_info(index_dir: Path) -> dict[str, Any] | None:
    """``graph.json``, or ``None`` when the directory has no (readable) graph."""
    try:
        info = json.loads((folder(index_dir) / INFO).read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("format") == FORMAT else None


def read_graph(index_dir: Path, mmap: bool = False) -> NeighbourGraph | None:
    """The stored graph (``None`` without one); ``mmap`` leaves the arrays on disk."""
    info = read_info(index_dir)
    if info is None:
        return None
    base = folder(index_dir)
    try:
        arrays = [np.load(base / info["files"][name], mmap_mode="r" if mmap else None)
                  for name in ARRAYS]
    except (OSError, ValueError, KeyError) as error:
        raise IndexDirError(f"{base}: the neighbour graph is damaged ({error}); rebuild it "
                            f"with `groco index graph {index_dir} --force`") from error
    ids, neighbours, scores = arrays
    if neighbours.shape != scores.shape or len(ids) != len(neighbours):
        raise IndexDirError(f"{base}: the neighbour graph's arrays disagree; rebuild it with "
                            f"`groco index graph {index_dir} --force`")
    return NeighbourGraph(ids, neighbours, scores, info)


def write_graph(index_dir: Path, graph: NeighbourGraph) -> None:
    """Write ``graph``'s arrays under a new token, then ``graph.json`` naming them, then
    remove the previous write's files."""
    base = folder(index_dir)
    base.mkdir(parents=True, exist_ok=True)
    old = read_info(index_dir)
    token = secrets.token_hex(4)
    files = {name: f"{name}-{token}.npy" for name in ARRAYS}
    for name in ARRAYS:
        tmp = base / f".{files[name]}.tmp"
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(getattr(graph, name)))
        tmp.replace(base / files[name])
    info = {**graph.info, "format": FORMAT, "files": files, "count": len(graph.ids),
            "k": graph.k}
    atomic_write_text(base / INFO, json.dumps(info, indent=1))
    graph.info = info
    if old:
        for name in (old.get("files") or {}).values():
            if name not in files.values():
                (base / name).unlink(missing_ok=True)
