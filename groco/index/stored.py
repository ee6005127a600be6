"""The stored embeddings of an index directory as a :class:`~groco.index.faiss.source.VectorSource`.

:class:`ShardSource` reads ``shards/emb-NNNNN.npy`` one shard at a time (memory-mapped,
only the rows the metadata still references), so an index is trained on a sample and
filled shard by shard: peak memory is the index plus one shard, never every vector
(issue 12). Positions are the order of
:meth:`groco.index.store.Store.embedded_locations` (ids ascending); chunks come shard by
shard in the order each shard first appears there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import shards
from .faiss.source import MaskedSource, as_unit_vectors
from .store import Store


class ShardSource:
    """Vectors ``(ids[i], shard_numbers[i], rows[i])`` of the index directory ``index_dir``."""

    def __init__(self, index_dir: str | Path, ids: np.ndarray, shard_numbers: np.ndarray,
                 rows: np.ndarray) -> None:
        self.index_dir = Path(index_dir)
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.shard_numbers = np.asarray(shard_numbers, dtype=np.int64)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.count = len(self.ids)
        if self.count == 0:
            raise ValueError(f"{index_dir}: no stored embeddings")
        self.dim = int(shards.load_vectors(self.index_dir, int(self.shard_numbers[0])).shape[1])
        order = np.argsort(self.shard_numbers, kind="stable")
        bounds = np.flatnonzero(np.diff(self.shard_numbers[order])) + 1
        groups = np.split(order, bounds)
        groups.sort(key=lambda g: int(g[0]))  # by first position: in position order
        self._groups = groups

    @classmethod
    def from_store(cls, index_dir: str | Path, store: Store) -> ShardSource:
        """Every embedded row of ``store`` (``ValueError`` when there is none)."""
        ids, shard_numbers, rows = store.embedded_locations()
        return cls(index_dir, ids, shard_numbers, rows)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One shard at a time: ``(ids, unit vectors)`` of its referenced rows."""
        for group in self._groups:
            number = int(self.shard_numbers[group[0]])
            stored = shards.load_vectors(self.index_dir, number)
            try:
                vectors = np.ascontiguousarray(stored[self.rows[group]], dtype=np.float32)
            except (IndexError, ValueError) as error:  # shorter than recorded
                raise shards.damaged_shard(self.index_dir, number, error) from error
            if vectors.shape[1] != self.dim:
                raise shards.damaged_shard(self.index_dir, number,
                                           f"dim {vectors.shape[1]}, not {self.dim}")
            yield self.ids[group], as_unit_vectors(vectors)

    def take(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, unit vectors)`` at ``positions`` (read through the memory-mapped shards)."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) == 0:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        vectors = shards.gather(self.index_dir, self.shard_numbers[positions],
                                self.rows[positions])
        return self.ids[positions], as_unit_vectors(vectors)

    def subset(self, keep: np.ndarray) -> MaskedSource:
        return MaskedSource(self, keep)

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ``ids`` (which must all be in the source; ids are ascending)."""
        return np.searchsorted(self.ids, ids)
