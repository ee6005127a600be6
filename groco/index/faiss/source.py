"""Vectors read a chunk at a time: the :class:`VectorSource` protocol an index is built
from, :class:`ArraySource` (one array in memory), :class:`MaskedSource` (a subset of
another source), the checks every vector and id passes (unit rows, distinct ids), and
:func:`positions_of` (where ids sit in a sorted id list)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import faiss
import numpy as np


def positions_of(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The position of each of ``wanted`` (any shape) in the ascending, non-negative
    ``ids``; ``-1`` where it is not there (FAISS's ``-1``, no result, included)."""
    wanted = np.asarray(wanted)
    if len(ids) == 0:
        return np.full(wanted.shape, -1, np.int64)
    at = np.minimum(np.searchsorted(ids, wanted), len(ids) - 1)
    return np.where(ids[at] == wanted, at, -1)


def as_unit_vectors(x: np.ndarray, name: str = "vectors") -> np.ndarray:
    """``x`` as a C-contiguous float32 ``(n, d)`` array of unit rows.

    A 1-D array is one row. Rows already unit-norm (within 1e-4) are returned without a
    copy; otherwise a normalised copy is returned. Raises ``ValueError`` on a wrong
    shape, a non-finite value or a zero row (an embedding bug upstream, not a vector).
    """
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"{name} must be 2-D (n, dim), got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    sq = np.einsum("ij,ij->i", x, x)  # no (n, d) temporary, unlike np.linalg.norm
    if not np.isfinite(sq).all():
        raise ValueError(f"{name} contain non-finite values")
    if (sq == 0).any():
        raise ValueError(f"{name} row {int(np.argmax(sq == 0))} is all zeros")
    if np.abs(sq - 1.0).max(initial=0.0) > 2e-4:
        x = x.copy()
        faiss.normalize_L2(x)
    return x


def check_ids(ids: np.ndarray | None, n: int) -> np.ndarray:
    """``ids`` as C-contiguous int64 of shape ``(n,)``, all distinct; ``None`` is ``0..n-1``.

    ``ValueError`` for another shape or a repeated id.
    """
    if ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (n,):
        raise ValueError(f"ids must have shape ({n},), got {ids.shape}")
    if len(np.unique(ids)) != n:
        raise ValueError("ids must be distinct")
    return ids


def sample_positions(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted positions of a uniform sample of ``size`` of ``n`` (all of them if fewer)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


class VectorSource(Protocol):
    """Unit vectors under ids, read a chunk at a time: what an index is built from.

    Position ``i`` (``0 <= i < count``) is one vector. :meth:`chunks` yields every
    position once, in order, as ``(ids, vectors)``: C-contiguous int64 ``(m,)`` and float32
    unit rows ``(m, dim)``. :meth:`take` reads the ``(ids, vectors)`` at sorted positions;
    :meth:`subset` is the source of the positions where ``keep`` is true. A build from a
    source holds one chunk at a time (plus a training sample), never every vector:
    :class:`ArraySource` is one array in memory, :class:`groco.index.stored.ShardSource`
    the shards of an index directory.
    """

    count: int
    dim: int

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...

    def take(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def subset(self, keep: np.ndarray) -> VectorSource: ...


class ArraySource:
    """A :class:`VectorSource` over ``vectors`` under ``ids`` in memory (one chunk).

    ``vectors`` pass :func:`as_unit_vectors` (normalised on a copy if needed), ``ids``
    :func:`check_ids` (``None``: ``0..n-1``): the way arrays enter a build or a tuning.
    """

    def __init__(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> None:
        self.vectors = as_unit_vectors(vectors)
        self.count, self.dim = self.vectors.shape
        self.ids = check_ids(ids, self.count)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield self.ids, self.vectors

    def take(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.ids[positions], self.vectors[positions]

    def subset(self, keep: np.ndarray) -> MaskedSource:
        return MaskedSource(self, keep)


class MaskedSource:
    """The positions of ``source`` where ``keep`` is true, as a :class:`VectorSource`."""

    def __init__(self, source: VectorSource, keep: np.ndarray) -> None:
        self.source, self.keep = source, np.asarray(keep, dtype=bool)
        if self.keep.shape != (source.count,):
            raise ValueError(f"keep must have shape ({source.count},), got {self.keep.shape}")
        self.positions = np.flatnonzero(self.keep)
        self.count, self.dim = len(self.positions), source.dim

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        start = 0
        for ids, vectors in self.source.chunks():
            mask = self.keep[start:start + len(ids)]
            start += len(ids)
            if mask.all():
                yield ids, vectors
            elif mask.any():
                yield ids[mask], np.ascontiguousarray(vectors[mask])

    def take(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.source.take(self.positions[positions])

    def subset(self, keep: np.ndarray) -> MaskedSource:
        mask = np.zeros(self.source.count, dtype=bool)
        mask[self.positions[np.asarray(keep, dtype=bool)]] = True
        return MaskedSource(self.source, mask)
