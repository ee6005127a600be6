"""Several index directories searched as one: the shards of a collection too large for one
machine's index, or collections indexed apart, all built with one encoder.

A query is embedded once (every shard must record the same encoder hash, else
:class:`~groco.index.manifest.IndexMismatchError`), searched in every shard at once (a
thread a shard: FAISS and ONNX Runtime release the GIL), and the shards' results are
merged: the best ``k`` by the encoder's cosine ``score``, or by the post-processed
``rank_score`` when every shard post-processes (:mod:`groco.index.expansion`; each shard
centres on its own mean, so a union of post-processed shards ranks close to, not exactly
as, one index over all their images). Without post-processing the union's top-k is the
top-k of one index over the same vectors.

Ids: item ``i`` of shard ``s`` (its position in the list) is ``s * ID_STRIDE + i`` in
the union, so shard 0's ids are its own. ``distinct`` collapses near copies within each
shard, not across shards.

A shard that cannot be opened, or fails during a query, is left out of the answer and
named in :attr:`ShardUnion.missing` (its path and the one-line reason) until the union is
opened again; a union with no shard left raises :class:`~groco.index.manifest.IndexDirError`.

With ``ray_address``, every shard but the first is searched in a Ray Serve replica of its
own (:mod:`.remote`) instead of a thread of this process.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..manifest import IndexDirError, IndexMismatchError
from ..search import QueryImage, Result
from ..store import FileRow
from .reader import IndexReader
from .remote import RemoteShard, first_line

log = logging.getLogger(__name__)

ID_STRIDE = 1 << 40
"""Union ids: ``shard * ID_STRIDE + id`` (an index's ids stay far below 2**40)."""
SHARD_FAILURES = (IndexDirError, OSError, RuntimeError, sqlite3.Error)
"""What a shard raising during a query means it is gone (a bad request raises
``ValueError``/``KeyError`` from every shard alike and is the caller's)."""


class ShardUnion:
    """Index directories ``index_dirs`` searched as one (module docstring; thread-safe)."""

    def __init__(self, index_dirs: Sequence[str | Path], encoder_path: str | Path | None = None,
                 providers: list[str] | None = None, batch_queries: bool = True,
                 ray_address: str | None = None, spinning: bool = False) -> None:
        if not index_dirs:
            raise ValueError("give at least one index directory")
        self.index_dirs = [Path(p) for p in index_dirs]
        self.readers: dict[int, IndexReader | RemoteShard] = {}
        self._missing: dict[int, str] = {}
        self._lock = threading.Lock()
        for shard, path in enumerate(self.index_dirs):
            try:
                self.readers[shard] = (
                    RemoteShard(path, ray_address) if ray_address and shard > 0 else
                    IndexReader(path, encoder_path, providers, batch_queries=batch_queries,
                                spinning=spinning))
            except IndexMismatchError:
                self.close()
                raise
            except (IndexDirError, OSError) as error:
                self._missing[shard] = first_line(error)
        if ray_address and 0 not in self.readers:
            self.close()
            raise IndexDirError(f"{self.index_dirs[0]}: the first shard embeds the queries "
                                f"and backs the page: {self._missing.get(0)}")
        if not self.readers:
            raise IndexDirError("no shard could be opened: " + "; ".join(
                f"{self.index_dirs[s]}: {why}" for s, why in self._missing.items()))
        hashes = {s: r.encoder.hash for s, r in self.readers.items()}
        first = min(hashes)
        for shard, value in hashes.items():
            if value != hashes[first]:
                self.close()
                raise IndexMismatchError(
                    f"shards built with different encoders: {self.index_dirs[first]} "
                    f"(encoder {hashes[first]}) and {self.index_dirs[shard]} (encoder "
                    f"{value}); a union searches one encoder's embeddings")
        self.encoder = self.readers[first].encoder
        self._pool = ThreadPoolExecutor(max_workers=len(self.index_dirs),
                                        thread_name_prefix="groco-shard")

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    def __enter__(self) -> ShardUnion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def missing(self) -> dict[Path, str]:
        """The shards left out, ``{index directory: one-line reason}``."""
        with self._lock:
            return {self.index_dirs[s]: why for s, why in sorted(self._missing.items())}

    def _alive(self) -> dict[int, IndexReader]:
        with self._lock:
            return {s: r for s, r in self.readers.items() if s not in self._missing}

    def label_counts(self) -> dict[str, int]:
        """How many embedded images each folder label has, over the shards served."""
        counts: dict[str, int] = {}
        for reader in self._alive().values():
            for label, n in reader.label_counts().items():
                counts[label] = counts.get(label, 0) + n
        return counts

    def shard_of(self, union_id: int) -> Path:
        """The index directory an item of the union comes from."""
        return self.index_dirs[int(union_id) // ID_STRIDE]

    # -- search

    def embed_image(self, image: QueryImage) -> np.ndarray:
        """The query's ``(dim,)`` unit embedding, by the shards' encoder (in this process:
        a shard served here, one still answering first)."""
        alive = self._alive()
        here = sorted(self.readers.items(), key=lambda pair: (pair[0] not in alive, pair[0]))
        reader = next(r for _, r in here if isinstance(r, IndexReader))
        return reader.embed_image(image)

    def search_image(self, image: QueryImage, k: int = 10, *, label: str | None = None,
                     min_score: float | None = None, distinct: bool = False,
                     near_copy: float | None = None) -> list[Result]:
        """The ``k`` items of every shard most similar to ``image`` (module docstring)."""
        return self.search_vector(self.embed_image(image), k, label=label,
                                  min_score=min_score, distinct=distinct,
                                  near_copy=near_copy)

    def search_vector(self, vector: np.ndarray, k: int = 10, *, label: str | None = None,
                      min_score: float | None = None, distinct: bool = False,
                      near_copy: float | None = None,
                      exclude: int | None = None) -> list[Result]:
        """The ``k`` nearest items of every shard to a ``(dim,)`` embedding, best first;
        ``exclude``: a union id left out. ``ValueError`` for a label no shard has."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        readers = self._alive()
        if label is not None:
            readers = {s: r for s, r in readers.items() if label in r.label_counts()}
            if not readers:
                raise ValueError(f"Unknown folder/label: {label!r} (in no shard)")
        futures = {s: self._pool.submit(
            r.search_vector, vector, k, label=label, min_score=min_score, distinct=distinct,
            near_copy=near_copy, exclude=_local(exclude, s)) for s, r in readers.items()}
        found: list[tuple[int, Result]] = []
        for shard, future in futures.items():
            try:
                found += [(shard, r) for r in future.result()]
            except SHARD_FAILURES as error:
                self._lose(shard, error)
        if not self._alive():
            raise IndexDirError("every shard failed: " + "; ".join(
                f"{p}: {why}" for p, why in self.missing.items()))
        ranked = all(r.rank_score is not None for _, r in found)
        found.sort(key=lambda pair: -(pair[1].rank_score if ranked else pair[1].score))
        return [dataclasses.replace(r, id=s * ID_STRIDE + r.id) for s, r in found[:k]]

    def more_like(self, item: int | str | Path, k: int = 10, *, label: str | None = None,
                  min_score: float | None = None, distinct: bool = False,
                  near_copy: float | None = None) -> list[Result]:
        """The ``k`` items of every shard most similar to an item of the union (its union
        id, or its path: absolute, or relative to a shard's images root, the first shard
        holding it), itself left out; ``KeyError`` for an unknown item."""
        shard, row = self.row(item)
        vector = self.readers[shard].stored_vector(row.id)
        return self.search_vector(vector, k, label=label, min_score=min_score,
                                  distinct=distinct, near_copy=near_copy,
                                  exclude=shard * ID_STRIDE + row.id)

    def row(self, item: int | str | Path) -> tuple[int, FileRow]:
        """``(shard, FileRow)`` of a union id or a path; ``KeyError`` when no shard has it."""
        readers = self._alive()
        if isinstance(item, (int, np.integer)):
            shard, local = divmod(int(item), ID_STRIDE)
            if shard not in readers:
                raise KeyError(f"no item {item} (shard {shard} is not served)")
            return shard, readers[shard].row(local)
        for shard, reader in readers.items():
            try:
                return shard, reader.row(item)
            except KeyError:
                continue
        raise KeyError(f"no item {item!r} in any shard")

    def _lose(self, shard: int, error: BaseException) -> None:
        with self._lock:
            self._missing[shard] = first_line(error)
        log.warning("shard %s left out: %s", self.index_dirs[shard], first_line(error))


def _local(union_id: int | None, shard: int) -> int | None:
    if union_id is None or int(union_id) // ID_STRIDE != shard:
        return None
    return int(union_id) % ID_STRIDE

