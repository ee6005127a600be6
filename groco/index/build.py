"""Build, update and merge index directories (``groco index build / update / merge``).

An index directory holds::

    meta.sqlite          one row per image file (groco.index.store)
    shards/              emb-00001.npy + ids-00001.npy, ... (groco.index.shards)
    index.faiss          the FAISS index over every embedded file (groco.index.indexfile)
    manifest.json        what index.faiss is and how it was made (groco.index.manifest)
    neighbours/          each item's nearest others, once computed (groco.index.neighbours)

- :func:`build_index_dir` embeds the images not yet recorded (so a rerun after a crash
  or a kill resumes after the last committed shard) and writes the index.
- :func:`update_index_dir` embeds new files, drops deleted ones and re-embeds changed
  ones (size or mtime differ *and* the content hash differs), then updates the index from
  the stored embeddings.
- A sharded build (``shard``/``num_shards``, or ``RANK``/``WORLD_SIZE`` from torchrun)
  embeds only its slice into ``OUT/part-IIIII-of-NNNNN/``, and :func:`merge_index_dirs`
  joins the parts into one index (slices, parts, claims and merge checks:
  :mod:`groco.index.parts`; the Ray path: :mod:`groco.index.ray_embed`).

No torch here: embedding runs on ONNX Runtime (:class:`groco.encoder.runtime.Encoder`).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from groco.encoder.runtime import Encoder, default_providers
from groco.images import find_images

from . import ray_embed, shards
from .faiss.spec import DEFAULT_TUNING, BuildSpec, TuningSpec
from .indexfile import (
    finish_switch,
    index_is_current,
    recorded_postprocess,
    recorded_specs,
    write_index,
)
from .lock import writer_lock
from .manifest import IndexDirError, check_encoder_hash, read_manifest
from .map import MapReport, update_map
from .neighbours import update_graph
from .parts import (
    check_parts,
    claim,
    copy_rows,
    find_index_dirs,
    merge_source,
    part_dir,
    prepare_merge_target,
    resolve_slice,
    slice_of,
)
from .pipeline import EmbedStats, Task, embed_files
from .postprocess import DEFAULT_POSTPROCESS, Postprocess
from .store import BROKEN, DB_NAME, EMBEDDED, Store

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
DEFAULT_SHARD_SIZE = 10_000
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass
class BuildReport:
    """What a build, update or merge did.

    ``embedded``/``broken``: files embedded / found broken by this run; ``skipped``:
    files already recorded (a resumed build); ``changed``/``deleted``/``touched``
    (updates): files re-embedded, dropped, and with a new mtime but the same content.
    ``count``/``broken_total``: vectors in the index / broken files recorded.
    ``index_type`` is ``None`` for a part of a sharded build (no index of its own).
    ``map``/``graph``: what an update did to the index's map / neighbour graph
    (``{"added", "removed", "searched"}``), ``None`` when it has none.
    """

    index_dir: Path
    embedded: int = 0
    broken: int = 0
    skipped: int = 0
    copied: int = 0
    changed: int = 0
    deleted: int = 0
    touched: int = 0
    count: int = 0
    broken_total: int = 0
    index_type: str | None = None
    search_params: dict[str, float] = field(default_factory=dict)
    recall_at_10: float | None = None
    embed_seconds: float = 0.0
    seconds: float = 0.0
    broken_files: list[tuple[str, str]] = field(default_factory=list)
    part: tuple[int, int] | None = None
    map: MapReport | None = None
    graph: dict[str, int] | None = None

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def add(self, stats: EmbedStats) -> None:
        """Count an embedding pass (:func:`groco.index.pipeline.embed_files`) in."""
        self.embedded += stats.embedded
        self.broken += stats.broken
        self.embed_seconds += stats.seconds
        self.broken_files.extend(stats.broken_files)


# ----------------------------------------------------------------------------- helpers


def parse_memory(value: int | str | None) -> int | None:
    """Bytes from ``8G``, ``512M``, ``1.5GiB``, ``2T`` (binary units) or an int; None stays."""
    if value is None or isinstance(value, int):
        if value is not None and value < 1:
            raise ValueError(f"memory must be positive, got {value}")
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.I)
    if not match:
        raise ValueError(f"memory must look like 8G, 512M or 2T, got {value!r}")
    amount = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if amount < 1:
        raise ValueError(f"memory must be positive, got {value!r}")
    return amount


def _relpaths(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in find_images(root)]


def _providers() -> list | None:
    """Under torchrun on GPUs, CUDA device ``LOCAL_RANK`` for this process; else default."""
    local = os.environ.get("LOCAL_RANK")
    return None if local is None else default_providers(int(local))


def _open_encoder(path: str | Path, batch_size: int) -> Encoder:
    encoder = Encoder(path, providers=_providers(), batch_size=batch_size)
    log.info("encoder %s: %s, dim %d, %d px, on %s", path, encoder.backbone or "?",
             encoder.dim, encoder.image_size, encoder.provider)
    return encoder


def as_postprocess(value: Postprocess | str) -> Postprocess:
    """``value``, or the :class:`Postprocess` its short form names (``centre+dba3``)."""
    return value if isinstance(value, Postprocess) else Postprocess.parse(value)


def _finish(report: BuildReport, store: Store, index_dir: Path, index_type: str,
            memory: int | None, target_recall: float, stats: EmbedStats | None,
            on_disk: bool | None, postprocess: Postprocess) -> BuildReport:
    if stats is not None:
        report.add(stats)
    build, tuning = BuildSpec(index_type, memory), TuningSpec(target_recall)
    if index_is_current(index_dir, store, build, tuning, on_disk, postprocess):
        manifest = read_manifest(index_dir)
        finish_switch(index_dir, store, manifest)  # in case a kill stopped it
        log.info("%s is up to date", index_dir)
    else:
        manifest = write_index(index_dir, store, build, tuning, on_disk=on_disk,
                               postprocess=postprocess)
    report.count = manifest["count"]
    report.broken_total = manifest["broken"]
    report.index_type = manifest["index_type"]
    report.search_params = manifest["search_params"]
    report.recall_at_10 = manifest["recall_at_10"]
    return report


def _check_settings(target_recall: float, batch_size: int, shard_size: int) -> None:
    TuningSpec(target_recall)  # ValueError outside (0, 1]
    if batch_size < 1 or shard_size < 1:
        raise ValueError("batch size and shard size must be >= 1")


# ----------------------------------------------------------------------------- build


def build_index_dir(
    images_root: str | Path,
    encoder_path: str | Path,
    out_dir: str | Path,
    index_type: str = "auto",
    memory: int | str | None = None,
    target_recall: float = DEFAULT_TUNING.target_recall,
    shard: int | None = None,
    num_shards: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int | None = None,
    progress: bool = True,
    on_disk: bool = False,
    ray_address: str | None = None,
    ray_gpus: float = 0.0,
    postprocess: Postprocess | str = DEFAULT_POSTPROCESS,
) -> BuildReport:
    """Embed every image under ``images_root`` into ``out_dir`` and build its FAISS index.

    - Resumable: files already recorded in ``out_dir/meta.sqlite`` are skipped; shard
      files left uncommitted by a crash are deleted first (see
      :func:`groco.index.shards.reconcile`). A directory made for another images folder,
      encoder (hash) or slice raises :class:`IndexMismatchError`.
    - ``index_type``: ``"auto"`` (by collection size and ``memory``, e.g. ``"8G"``) or any
      FAISS factory string; search parameters are tuned to ``target_recall`` (recall@10).
    - ``shard``/``num_shards`` (or torchrun's ``RANK``/``WORLD_SIZE``): embed only the
      files with :func:`~groco.index.parts.slice_of` ``== shard`` into
      :func:`~groco.index.parts.part_dir` of ``out_dir``; no
      FAISS index is built there (see :func:`merge_index_dirs`).
    - ``batch_size``: images per ONNX Runtime call; ``shard_size``: images per shard file;
      ``workers``: decoding threads.
    - ``on_disk``: an IVF index whose inverted lists live in a memory-mapped ``.ivfdata``
      file (:mod:`groco.index.ondisk`); the index is always trained on a sample and
      filled shard by shard from the stored embeddings, so no step holds every vector.
    - ``ray_address`` (``"local"`` or a Ray address): embed on Ray Data, ``workers``
      ONNX Runtime actors (``ray_gpus`` GPUs each), into the parts of a sharded build
      under ``out_dir/parts``, then merge them into ``out_dir``
      (:mod:`groco.index.ray_embed`; needs ``groco[ray]``).
    - ``postprocess``: the label-free post-processing of search
      (:mod:`groco.index.expansion`), e.g. ``"centre+dba3"`` (the default) or ``"none"``.

    Broken images are recorded, counted, logged and listed in the report; they never stop
    the build. ``FileNotFoundError``/``NotADirectoryError`` for a bad ``images_root``,
    :class:`groco.encoder.runtime.EncoderError` for a bad encoder file.
    """
    start = time.perf_counter()
    _check_settings(target_recall, batch_size, shard_size)
    postprocess = as_postprocess(postprocess)
    memory_bytes = parse_memory(memory)
    root = Path(images_root).resolve()
    relpaths = _relpaths(root)
    part = resolve_slice(shard, num_shards)
    index_dir = Path(out_dir)
    if ray_address is not None:
        if part is not None:
            raise ValueError("--ray embeds every slice itself: leave out --shard/--num-shards")
        return _build_on_ray(root, relpaths, encoder_path, index_dir, index_type, memory,
                             target_recall, batch_size, shard_size, workers, progress,
                             on_disk, ray_address, ray_gpus, start, postprocess)
    if part is not None:
        index_dir = part_dir(out_dir, *part)
        relpaths = [p for p in relpaths if slice_of(p, part[1]) == part[0]]
    encoder = _open_encoder(encoder_path, batch_size)
    report = BuildReport(index_dir=index_dir, part=part)
    with writer_lock(index_dir, "groco index build"), Store(index_dir / DB_NAME) as store:
        claim(store, index_dir, root, encoder, part)
        shards.reconcile(index_dir, store)
        known = store.paths()
        tasks = [Task(p) for p in relpaths if p not in known]
        report.skipped = len(relpaths) - len(tasks)
        if report.skipped:
            log.info("resuming: %d of %d files already recorded", report.skipped,
                     len(relpaths))
        stats = embed_files(index_dir, store, root, tasks, encoder, shard_size, workers,
                            progress, skipped=report.skipped)
        if part is not None:
            store.set_info({"part_complete": 1})
            report.add(stats)
            report.count, report.broken_total = store.count(EMBEDDED), store.count(BROKEN)
        else:
            _finish(report, store, index_dir, index_type, memory_bytes, target_recall, stats,
                    on_disk, postprocess)
    report.seconds = time.perf_counter() - start
    return report


def _build_on_ray(root: Path, relpaths: list[str], encoder_path: str | Path, out: Path,
                  index_type: str, memory: int | str | None, target_recall: float,
                  batch_size: int, shard_size: int, workers: int | None, progress: bool,
                  on_disk: bool, address: str, gpus: float, start: float,
                  postprocess: Postprocess) -> BuildReport:
    stats, skipped, parts = ray_embed.embed_on_ray(root, encoder_path, out, relpaths, address,
                                         workers or ray_embed.default_workers(), batch_size,
                                         shard_size, gpus, progress)
    report = merge_index_dirs([parts], out, index_type=index_type, memory=memory,
                              target_recall=target_recall, shard_size=shard_size,
                              progress=progress, on_disk=on_disk, postprocess=postprocess)
    report.skipped, report.copied = skipped, 0
    report.add(stats)
    report.seconds = time.perf_counter() - start
    return report


# ----------------------------------------------------------------------------- update


def update_index_dir(
    index_dir: str | Path,
    encoder_path: str | Path | None = None,
    index_type: str | None = None,
    memory: int | str | None = None,
    target_recall: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int | None = None,
    progress: bool = True,
    postprocess: Postprocess | str | None = None,
) -> BuildReport:
    """Bring ``index_dir`` up to date with its images folder, re-embedding only what changed.

    - new files are embedded; files gone from the folder are dropped;
    - a recorded file whose size or mtime differs is read and hashed: a different
      content hash re-embeds it (new id), the same one only records the new size/mtime;
      a broken file is retried when it changed;
    - the FAISS index is updated from the stored embeddings, never from images: in place
      where FAISS can remove vectors (Flat, IVF), rebuilt otherwise (HNSW) or when
      ``"auto"`` now chooses another type for the new size;
    - the index's neighbour graph and map, where it has them, get the new items and lose
      the deleted ones (:mod:`groco.index.neighbours`, :mod:`groco.index.map`).

    ``encoder_path`` defaults to the one recorded; its hash must match
    (:class:`IndexMismatchError`). ``index_type``/``memory``/``target_recall``/
    ``postprocess`` default to the manifest's; the post-processed search vectors are
    recomputed whenever the index is (every item: the mean and the neighbours move).
    Also finishes an interrupted build or update.
    """
    start = time.perf_counter()
    index_dir = Path(index_dir)
    if not (index_dir / DB_NAME).is_file():
        raise IndexDirError(f"{index_dir}: not an index directory (no {DB_NAME})")
    try:
        manifest = read_manifest(index_dir)
    except IndexDirError:
        manifest = {}
    index_type = index_type or manifest.get("index_type_requested", "auto")
    memory_bytes = parse_memory(memory) if memory is not None else manifest.get("memory_bytes")
    if target_recall is None:
        target_recall = recorded_specs(manifest)[1].target_recall
    postprocess = (recorded_postprocess(manifest) if postprocess is None
                   else as_postprocess(postprocess))
    _check_settings(target_recall, batch_size, shard_size)
    report = BuildReport(index_dir=index_dir)
    with writer_lock(index_dir, "groco index update"), Store(index_dir / DB_NAME) as store:
        info = store.info()
        if info.get("slice"):
            raise IndexDirError(f"{index_dir} is one part of a sharded build: merge the "
                                "parts (`groco index merge`) and update the merged index")
        root = Path(info["images_root"])
        encoder = _open_encoder(encoder_path or info["encoder_path"], batch_size)
        check_encoder_hash(info["encoder_hash"], encoder.hash, encoder.path, index_dir)
        shards.reconcile(index_dir, store)
        tasks, deleted = _changes(root, store)
        report.deleted = len(deleted)
        if deleted:
            store.commit(delete_ids=deleted)
            shards.remove_unreferenced(index_dir, store.referenced_shards())
        stats = embed_files(index_dir, store, root, tasks, encoder, shard_size, workers,
                            progress, desc="updating")
        report.touched, report.changed = stats.unchanged, stats.replaced
        _finish(report, store, index_dir, index_type, memory_bytes, target_recall, stats,
                None, postprocess)  # on disk or in RAM: as built
        report.embedded -= stats.replaced  # new files and changed ones apart
        report.graph = update_graph(index_dir, store, progress)  # None: it has no graph
        report.map = update_map(index_dir, store, progress)  # None: the index has no map
    log.info("update: %d new, %d changed, %d deleted, %d touched, %d broken",
             report.embedded, report.changed, report.deleted, report.touched, report.broken)
    report.seconds = time.perf_counter() - start
    return report


def _changes(root: Path, store: Store) -> tuple[list[Task], list[int]]:
    """(tasks for new and possibly changed files, ids of files no longer on disk)."""
    states = store.states()
    tasks: list[Task] = []
    seen: set[str] = set()
    for rel in _relpaths(root):
        seen.add(rel)
        old = states.get(rel)
        if old is None:
            tasks.append(Task(rel))
            continue
        try:
            st = os.stat(root / rel)
        except OSError:
            continue  # vanished since the listing: the next update drops it
        if st.st_size != old.size or st.st_mtime_ns != old.mtime_ns:
            tasks.append(Task(rel, replaces=old.id, same_hash=old.hash or None))
    deleted = [s.id for p, s in states.items() if p not in seen]
    return tasks, deleted


# ----------------------------------------------------------------------------- merge


def merge_index_dirs(
    shard_dirs: Sequence[str | Path],
    out_dir: str | Path,
    index_type: str = "auto",
    memory: int | str | None = None,
    target_recall: float = DEFAULT_TUNING.target_recall,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
    on_disk: bool = False,
    postprocess: Postprocess | str = DEFAULT_POSTPROCESS,
) -> BuildReport:
    """Join the parts of a sharded build (or index dirs of one folder) into one index.

    ``shard_dirs``: part directories, or folders holding ``part-*`` directories. They must
    share images root, encoder and dim; parts must be complete and cover every slice once.
    Every file gets a new id by its relative path (``0..n-1`` in path order, the order
    of a single build), embeddings are copied (never recomputed) into new shards of
    ``shard_size``, metadata is merged, and the FAISS index is built as in
    :func:`build_index_dir` (``on_disk`` too). ``out_dir`` must be new, an interrupted
    merge (restarted) or this same merge finished (nothing to copy; the index is checked and kept).
    """
    start = time.perf_counter()
    _check_settings(target_recall, 1, shard_size)
    postprocess = as_postprocess(postprocess)
    memory_bytes = parse_memory(memory)
    out = Path(out_dir)
    dirs = find_index_dirs(shard_dirs)
    stores = [Store(d / DB_NAME, readonly=True) for d in dirs]
    try:
        infos = [s.info() for s in stores]
        check_parts(dirs, infos)
        rows = [(row, p) for p, s in enumerate(stores) for row in s.iter_rows()]
    finally:
        for s in stores:
            s.close()
    rows.sort(key=lambda item: item[0].path)
    for (a, _), (b, _) in zip(rows, rows[1:], strict=False):
        if a.path == b.path:
            raise IndexDirError(f"{a.path} is in more than one of the merged directories")
    report = BuildReport(index_dir=out)
    keep = ("images_root", "encoder_hash", "encoder_path", "encoder_backbone", "image_size",
            "dim")
    with writer_lock(out, "groco index merge"):
        source = merge_source(dirs, rows)
        done = prepare_merge_target(out, source)
        with Store(out / DB_NAME) as store:
            if done:
                report.skipped = len(rows)
            else:
                store.set_info({**{k: infos[0][k] for k in keep if k in infos[0]},
                                "slice": "", "merged_from": len(dirs)})
                copy_rows(out, store, dirs, rows, shard_size, progress)
                report.copied = len(rows)
                store.set_info({"merge_source": source})
            _finish(report, store, out, index_type, memory_bytes, target_recall, None,
                    on_disk, postprocess)
    report.seconds = time.perf_counter() - start
    return report

