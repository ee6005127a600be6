"""Embed image files into the shards and metadata of an index directory, crash-safely.

:func:`embed_files` reads, hashes, decodes and preprocesses files in a thread pool that
runs ahead of the encoder through a bounded prefetch window (so the ONNX session is
never waiting on I/O), embeds them in batches of the encoder's ``batch_size``, and
every ``shard_size`` embedded images:

1. writes ``shards/emb-NNNNN.npy`` + ``ids-NNNNN.npy`` atomically (fsync + rename),
2. then commits the shard's rows (and the broken files met since the last shard) to
   ``meta.sqlite`` in one transaction.

A ``kill -9`` between 1 and 2 leaves a shard that no row references; the next run's
:func:`groco.index.shards.reconcile` deletes it and those files are embedded again. So a
rerun resumes after the last committed shard and never records an image twice. A file
that cannot be read or decoded is recorded as ``broken`` with its one-line error,
counted and logged, never fatal.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.contrib.logging import logging_redirect_tqdm

from groco.encoder.runtime import Encoder, default_threads
from groco.images import ImageError, label_of_relpath, load_image
from groco.prefetch import prefetch
from groco.progress import progress_bar

from . import shards
from .store import BROKEN, EMBEDDED, FileRow, Store

log = logging.getLogger(__name__)

HASH_BYTES = 8
"""blake2b digest size: 16 hex characters of content hash."""


def content_hash(data: bytes) -> str:
    """blake2b of ``data`` with an 8-byte digest, as 16 hex characters."""
    return hashlib.blake2b(data, digest_size=HASH_BYTES).hexdigest()


@dataclass(frozen=True)
class Task:
    """A file to (re-)embed.

    ``path``: POSIX path relative to the images root. ``replaces``: id of the row the new
    row replaces (a changed file), deleted in the same transaction. ``same_hash``: when
    the file's bytes hash to this, its content is unchanged: only its size/mtime are
    updated on row ``replaces`` and nothing is decoded.
    """

    path: str
    replaces: int | None = None
    same_hash: str | None = None


@dataclass
class PreparedFile:
    """A file read, hashed and (unless ``unchanged`` or broken) preprocessed into ``array``
    by :func:`prepare_file`; ``id`` is given by :meth:`ShardWriter.reserve_id`."""

    task: Task
    size: int
    mtime_ns: int
    hash: str
    array: np.ndarray | None = None
    error: str | None = None
    unchanged: bool = False
    id: int = -1


@dataclass
class EmbedStats:
    """What :func:`embed_files` did.

    ``embedded``/``broken``: files embedded / recorded broken; ``replaced``: of the
    embedded, those replacing a row (changed files); ``unchanged``: files whose hash
    matched ``Task.same_hash``; ``broken_files``: ``(path, reason)`` of this run.
    """

    embedded: int = 0
    broken: int = 0
    unchanged: int = 0
    replaced: int = 0
    shards: int = 0
    seconds: float = 0.0
    broken_files: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        done = self.embedded + self.broken + self.unchanged
        return done / self.seconds if self.seconds > 0 else 0.0


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def prepare_file(root: Path, task: Task, *, encoder: Encoder) -> PreparedFile:
    """Read, hash, decode and preprocess one file; errors become a broken record."""
    try:
        with open(root / task.path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as error:
        return PreparedFile(task, 0, 0, "", error=f"cannot read ({_one_line(error)})")
    digest = content_hash(data)
    item = PreparedFile(task, st.st_size, st.st_mtime_ns, digest)
    if task.same_hash is not None and digest == task.same_hash:
        item.unchanged = True
        return item
    try:
        item.array = encoder.preprocess(load_image(data))
    except ImageError as error:
        item.error = error.reason
    except Exception as error:  # a bad image is never fatal: PIL/NumPy raise many types
        item.error = f"cannot preprocess ({_one_line(error)})"
    return item


class ShardWriter:
    """Collects rows and vectors; :meth:`flush` writes one shard then commits its rows.

    The crash-safe write order of every embedding pass (a build, an update, a part of a
    sharded build, the Ray path): shard file first, rows referencing it second.
    """

    def __init__(self, index_dir: Path, store: Store, stats: EmbedStats) -> None:
        self.index_dir, self.store, self.stats = index_dir, store, stats
        self.next_id = store.next_id()
        existing = shards.shards_on_disk(index_dir) | set(store.referenced_shards())
        # numbers are never reused (a running Searcher may have an old shard mapped)
        self.next_shard = max(max(existing, default=0) + 1,
                              int(store.get_info("next_shard", "1") or 1))
        self.rows: list[FileRow] = []  # rows to commit, embedded ones without shard yet
        self.vectors: list[np.ndarray] = []
        self.deletes: list[int] = []
        self.touches: list[tuple[int, int, int]] = []
        self.embedded_pending = 0

    def reserve_id(self, item: PreparedFile) -> None:
        """Give ``item`` the next id (called in task order, so ids follow it)."""
        item.id = self.next_id
        self.next_id += 1

    def add(self, item: PreparedFile, vector: np.ndarray | None = None) -> None:
        """Queue ``item``'s row (embedded with ``vector``, or broken without one), or the new
        size/mtime of an unchanged file."""
        task = item.task
        if item.unchanged:
            self.touches.append((int(task.replaces), item.size, item.mtime_ns))
            return
        if task.replaces is not None:
            self.deletes.append(task.replaces)
        row = FileRow(item.id, task.path, item.size, item.mtime_ns, item.hash,
                      label_of_relpath(task.path), BROKEN if vector is None else EMBEDDED,
                      error=item.error)
        self.rows.append(row)
        if vector is not None:
            self.vectors.append(vector)
            self.embedded_pending += 1
            self.stats.replaced += task.replaces is not None

    def flush(self) -> None:
        """Write the queued vectors as one shard, then commit the queued rows with it."""
        if not (self.rows or self.touches):
            return
        number = self.next_shard
        rows, row_in_shard = [], 0
        ids = []
        for row in self.rows:
            if row.status == EMBEDDED:
                row = replace(row, shard=number, shard_row=row_in_shard)
                ids.append(row.id)
                row_in_shard += 1
            rows.append(row)
        if ids:
            self.store.set_info({"next_shard": number + 1})
            shards.write_shard(self.index_dir, number, np.array(ids, dtype=np.int64),
                               np.stack(self.vectors))
            self.next_shard += 1
            self.stats.shards += 1
        self.store.commit(insert=rows, delete_ids=self.deletes, touch=self.touches)
        self.rows, self.vectors, self.deletes, self.touches = [], [], [], []
        self.embedded_pending = 0


def embed_files(
    index_dir: str | Path,
    store: Store,
    root: str | Path,
    tasks: Sequence[Task],
    encoder: Encoder,
    shard_size: int = 10_000,
    workers: int | None = None,
    progress: bool = True,
    skipped: int = 0,
    desc: str = "embedding",
) -> EmbedStats:
    """Embed ``tasks`` (files under ``root``) into ``index_dir``'s shards and ``store``.

    Rows get ids ``store.next_id()``, ``+1``, ... in task order (broken files too).
    Decoding runs on ``workers`` threads (default ``min(4, cores)``), at most
    ``2 * batch_size + 4 * workers`` files ahead of the encoder. ``shard_size``: embedded
    images per shard file (a shard may hold up to one batch more). ``skipped`` is only
    shown in the progress bar (files already recorded). Returns the counts; broken files
    are logged at WARNING, one line each.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    index_dir, root = Path(index_dir), Path(root)
    workers = workers or min(4, default_threads())
    batch_size = encoder.batch_size
    window = 2 * batch_size + 4 * workers
    stats = EmbedStats()
    writer = ShardWriter(index_dir, store, stats)
    start = time.perf_counter()
    bar = progress_bar(len(tasks), desc=desc, unit="img", disable=not progress,
                       smoothing=0.1)
    bar.set_postfix(skipped=skipped, broken=0, refresh=False)
    batch: list[PreparedFile] = []

    def run_batch() -> None:
        vectors = encoder.embed_arrays(np.stack([b.array for b in batch]))
        for item, vector in zip(batch, vectors, strict=True):
            writer.add(item, vector)
        stats.embedded += len(batch)
        bar.update(len(batch))
        batch.clear()
        if writer.embedded_pending >= shard_size:
            writer.flush()

    def handle(item: PreparedFile) -> None:
        if item.unchanged:
            writer.add(item)
            stats.unchanged += 1
            bar.update(1)
            return
        writer.reserve_id(item)  # in task order, so ids follow the tasks
        if item.array is None:
            log.warning("broken image %s: %s", item.task.path, item.error)
            stats.broken += 1
            stats.broken_files.append((item.task.path, item.error or ""))
            writer.add(item)
            bar.update(1)
            bar.set_postfix(skipped=skipped, broken=stats.broken, refresh=False)
        else:
            batch.append(item)
            if len(batch) == batch_size:
                run_batch()

    stream = prefetch(functools.partial(prepare_file, root, encoder=encoder), tasks,
                      workers, window)
    # closing: on an error the decoding threads stop now, not when the traceback is freed
    with bar, logging_redirect_tqdm(), contextlib.closing(stream):
        for item in stream:
            handle(item)
        if batch:
            run_batch()
        writer.flush()
    stats.seconds = time.perf_counter() - start
    return stats
