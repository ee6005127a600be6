"""Embed a collection on Ray Data (`groco index build ... --ray ADDRESS`, `groco[ray]`).

Ray Data runs the embedding; everything written is what a sharded build writes:

1. The images not yet recorded in any part are listed (a rerun resumes, as a plain build
   does) and become a Ray Dataset of relative paths.
2. ``map_batches`` with :class:`EmbedActor`, an actor pool of ``workers`` actors (one CPU,
   or ``gpus_per_worker`` GPUs, each): every actor holds one ONNX Runtime
   :class:`groco.encoder.runtime.Encoder` and reads, hashes, decodes and preprocesses
   its files with the plain build's own function (:func:`groco.index.pipeline.prepare_file`,
   so :mod:`groco.images` decodes them), then embeds them in one call a batch. A file
   that cannot be decoded comes back as a broken record, never an error.
3. The driver writes the results into ``OUT/parts/part-IIIII-of-NNNNN`` (the part a file
   goes to is :func:`groco.index.parts.slice_of` its path), through the plain build's
   crash-safe writer (:class:`groco.index.pipeline.ShardWriter`): a shard file, then its
   rows committed to that part's ``meta.sqlite``. A kill loses at most the uncommitted
   shards, which the rerun embeds again.
4. :func:`groco.index.build.merge_index_dirs` merges the parts into ``OUT`` (ids by path:
   the plain build's ids), builds the FAISS index (``--on-disk`` too) and tunes it.

``address``: ``"local"`` starts Ray on this machine (``num_cpus = workers``); anything
else is given to ``ray.init(address=...)`` (``"auto"``, ``ray://head:10001``). When Ray
is already initialised (a test, a notebook) it is used as it is. On a cluster every node
needs groco installed and ``OUT`` and the images on a shared filesystem, as for the
Slurm and Kubernetes slices.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from groco.encoder.runtime import Encoder, default_providers
from groco.progress import progress_bar

from . import shards
from .lock import writer_lock
from .parts import claim, list_parts, part_dir, slice_of
from .pipeline import EmbedStats, PreparedFile, ShardWriter, Task, prepare_file
from .store import DB_NAME, Store

log = logging.getLogger(__name__)

PARTS_DIR = "parts"


class RayMissingError(ValueError):
    """``--ray`` without Ray installed (one line, with the install command)."""


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise RayMissingError(f"--ray needs Ray Data: pip install 'groco[ray]' ({error})") \
            from error
    return ray


class EmbedActor:
    """A Ray Data actor: ``{"path": [...]}`` batches in, one row per file out.

    Output columns: ``path``, ``size``, ``mtime_ns``, ``hash``, ``error`` ('' when
    embedded) and ``vector`` (``(dim,)`` float32, zeros for a broken file).
    """

    def __init__(self, root: str, encoder_path: str, batch_size: int,
                 use_gpu: bool = False) -> None:
        providers = default_providers(0) if use_gpu else None
        self.root = Path(root)
        self.encoder = Encoder(encoder_path, providers=providers, batch_size=batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [prepare_file(self.root, Task(str(p)), encoder=self.encoder)
                 for p in batch["path"]]
        good = [i for i, item in enumerate(items) if item.array is not None]
        vectors = np.zeros((len(items), self.encoder.dim), dtype=np.float32)
        if good:
            vectors[good] = self.encoder.embed_arrays(np.stack([items[i].array
                                                                for i in good]))
        return {
            "path": np.array([item.task.path for item in items], dtype=object),
            "size": np.array([item.size for item in items], dtype=np.int64),
            "mtime_ns": np.array([item.mtime_ns for item in items], dtype=np.int64),
            "hash": np.array([item.hash for item in items], dtype=object),
            "error": np.array(["" if item.array is not None else (item.error or "broken")
                               for item in items], dtype=object),
            "vector": vectors,
        }


def _connect(ray: Any, address: str, workers: int) -> None:
    if ray.is_initialized():
        return
    if address == "local":
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)


def part_dirs(out_dir: Path, workers: int) -> list[Path]:
    """The part directories of a Ray build: the ones there already (a rerun keeps their
    number), else ``workers`` new ones."""
    parts = Path(out_dir) / PARTS_DIR
    existing = list_parts(parts)
    if existing:
        return existing
    return [part_dir(parts, i, workers) for i in range(workers)]


def embed_on_ray(
    images_root: Path,
    encoder_path: str | Path,
    out_dir: Path,
    relpaths: list[str],
    address: str,
    workers: int,
    batch_size: int,
    shard_size: int,
    gpus_per_worker: float = 0.0,
    progress: bool = True,
) -> tuple[EmbedStats, int, Path]:
    """Steps 1-3 of the module docstring: ``(stats, files skipped, parts folder)``."""
    ray = _import_ray()
    if workers < 1:
        raise ValueError(f"need at least one Ray worker, got {workers}")
    dirs = part_dirs(out_dir, workers)
    encoder = Encoder(encoder_path, batch_size=batch_size)  # the hash and dim, checked here
    stats = EmbedStats()
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stores: list[Store] = []
        for i, d in enumerate(dirs):
            stack.enter_context(writer_lock(d, "groco index build --ray"))
            store = stack.enter_context(Store(d / DB_NAME))
            stores.append(store)
            claim(store, d, images_root, encoder, (i, len(dirs)))
            shards.reconcile(d, store)
        known: set[str] = set()
        for store in stores:
            known |= store.paths()
        todo = [p for p in relpaths if p not in known]
        skipped = len(relpaths) - len(todo)
        writers = [ShardWriter(d, s, EmbedStats()) for d, s in zip(dirs, stores, strict=True)]
        if todo:
            _connect(ray, address, workers)
            blocks = max(1, min(len(todo) // batch_size + 1, 8 * workers))
            dataset = ray.data.from_items([{"path": p} for p in todo],
                                          override_num_blocks=blocks)
            embedded = dataset.map_batches(
                EmbedActor, batch_size=batch_size, batch_format="numpy",
                fn_constructor_kwargs={"root": str(images_root),
                                       "encoder_path": str(Path(encoder_path).resolve()),
                                       "batch_size": batch_size,
                                       "use_gpu": gpus_per_worker > 0},
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=1, num_gpus=gpus_per_worker or None)
            with progress_bar(len(todo), desc="embedding on Ray", unit="img",
                              disable=not progress) as bar:
                for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
                    _write_batch(batch, writers, len(dirs), shard_size, stats)
                    bar.update(len(batch["path"]))
        for writer in writers:
            writer.flush()
        for store in stores:
            store.set_info({"part_complete": 1})
        stats.shards = sum(w.stats.shards for w in writers)
    stats.seconds = time.perf_counter() - start
    return stats, skipped, out_dir / PARTS_DIR


def _write_batch(batch: dict[str, np.ndarray], writers: list[ShardWriter], parts: int,
                 shard_size: int, stats: EmbedStats) -> None:
    for path, size, mtime, digest, error, vector in zip(
            batch["path"], batch["size"], batch["mtime_ns"], batch["hash"], batch["error"],
            batch["vector"], strict=True):
        path = str(path)
        writer = writers[slice_of(path, parts)]
        item = PreparedFile(Task(path), int(size), int(mtime), str(digest),
                         error=str(error) or None)
        writer.reserve_id(item)
        if error:
            log.warning("broken image %s: %s", path, error)
            stats.broken += 1
            stats.broken_files.append((path, str(error)))
            writer.add(item)
        else:
            writer.add(item, np.asarray(vector, dtype=np.float32))
            stats.embedded += 1
            if writer.embedded_pending >= shard_size:
                writer.flush()


def default_workers() -> int:
    """One Ray worker per CPU of this machine."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)
