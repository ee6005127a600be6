"""The index state of a directory: the FAISS index file and ``manifest.json`` that names it.

The FAISS index is always made from the shards and ``meta.sqlite`` (never from images):
the embedded rows' vectors are gathered, then either

- the current index is brought up to date in place (ids no longer in the metadata
  removed, new ones added) when its type is still the one wanted and FAISS can remove
  from it (Flat, IVF; any state-based difference, so an interrupted update is repaired
  too), or
- a new index is built (``HNSW`` cannot remove vectors; a type change; no index yet; a
  damaged index file) by :func:`groco.index.faiss.tune.build_tuned_index`.

Either way the search parameters are tuned by the one procedure of
:mod:`groco.index.faiss.tune`: on held-out vectors that the searched index does not hold
(an in-place update removes them while tuning, :func:`~groco.index.faiss.tune.retune`), so
an updated index is tuned as a fresh build of the same collection is.

**A new state is swapped in atomically.** The index is written to a *new* file,
``index-NNNNNN.faiss`` (numbers only grow), and the manifest naming it is written last
(temporary file + rename): until that rename readers see the previous manifest, the
previous index file (kept) and, for the ids of rows the update deleted, the retired rows
(:mod:`groco.index.store`); after it, the new state. A writer killed at any moment
leaves one of the two states current, never neither. The state before the previous one
(its index file, retired rows and the shards only they used) is deleted after the
switch (:func:`finish_switch`); one previous state stays for readers that opened it
just before. No torch here.

**Streaming (issue 12).** Neither path holds every vector: the stored embeddings are read
through :class:`groco.index.stored.ShardSource`, the index is trained on a sample and
filled shard by shard, and recall is tuned against an exact search streamed shard by
shard, so peak memory is the index plus one shard.

**On disk.** With ``on_disk`` the index is an IVF whose inverted lists are a second file,
``index-NNNNNN.ivfdata``, beside ``index-NNNNNN.faiss`` (:mod:`groco.index.ondisk`). It
follows its index file: written under a new number before the manifest switch, named in
the manifest (``ivfdata_file``, ``ivfdata_bytes``), opened memory-mapped and read-only by
readers (:func:`open_index`), deleted with its index file. It is never edited in place
(an update writes a new pair), so a reader of the previous state keeps a valid mapping.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

import groco

from . import shards
from .expansion import (
    expansion_names,
    is_expansion_file,
    write_expansion,
)
from .faiss.choose import factory_for
from .faiss.io import load_index, save_index
from .faiss.spec import BuildSpec, TuningSpec
from .faiss.tune import build_tuned_index, retune
from .manifest import (
    FORMAT,
    INDEX_NAME,
    DamagedFileError,
    IndexDirError,
    damaged,
    read_manifest,
    write_manifest,
)
from .ondisk import IVFDATA_SUFFIX, build_ondisk_index, ivfdata_name
from .postprocess import DEFAULT_POSTPROCESS, Postprocess
from .store import BROKEN, Store
from .stored import ShardSource

log = logging.getLogger(__name__)

MANIFEST_K = 10
"""The manifest records recall@10 (``recall_at_10``): the ``k`` of every tuning here."""
_VERSIONED = re.compile(r"^index-(\d{6,})\.faiss$")
_NUMBERED = re.compile(r"^index-(\d{6,})\.(faiss|ivfdata)$")
OPEN_ATTEMPTS = 3
"""How often :func:`open_current` rereads a manifest that a writer switched meanwhile."""


def index_ids(index: faiss.Index) -> np.ndarray | None:
    """The ids stored in ``index`` (IDMap/IDMap2 or IVF), or ``None`` if they cannot be read."""
    top = faiss.downcast_index(index)
    if isinstance(top, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.vector_to_array(top.id_map).astype(np.int64)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return None
    lists = ivf.invlists
    parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
             for i in range(ivf.nlist) if lists.list_size(i)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def _update_in_place(index: faiss.Index, source: ShardSource) -> bool:
    """Make ``index`` hold exactly the source's ids; False (index untouched) if it cannot
    remove. Only the vectors to add are read."""
    present = index_ids(index)
    if present is None:
        return False
    remove = np.setdiff1d(present, source.ids)
    add = ~np.isin(source.ids, present)
    if len(remove):
        try:
            index.remove_ids(remove)
        except RuntimeError:  # e.g. HNSW: FAISS refuses before changing anything
            return False
    if add.any():
        ids, vectors = source.take(np.flatnonzero(add))
        index.add_with_ids(vectors, ids)
    log.info("index updated in place: %d removed, %d added", len(remove), int(add.sum()))
    return True


def index_path(index_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """The index file ``manifest`` names (``index.faiss`` for directories of older versions)."""
    return Path(index_dir) / manifest.get("index_file", INDEX_NAME)


def open_index(index_dir: str | Path, manifest: dict[str, Any]) -> faiss.Index:
    """The FAISS index ``manifest`` describes, with its tuned search parameters applied.

    :class:`DamagedFileError` (naming the file and ``groco index repair``) for a missing or
    unreadable file, or one holding another number of vectors than the manifest says.
    """
    path = index_path(index_dir, manifest)
    if not path.is_file():
        raise damaged(path, "missing", index_dir)
    data = manifest.get("ivfdata_file")
    if data and not (Path(index_dir) / data).is_file():
        raise damaged(Path(index_dir) / data, "missing", index_dir)
    try:
        index = load_index(path, manifest.get("search_params") or None,
                           read_only=bool(data))
    except (RuntimeError, OSError, ValueError) as error:
        reason = (str(error).strip().splitlines() or ["unreadable"])[-1]
        raise damaged(path, f"FAISS cannot read it: {reason}", index_dir) from error
    if index.ntotal != manifest["count"]:
        raise damaged(path, f"holds {index.ntotal} vectors, the manifest {manifest['count']}",
                      index_dir)
    return index


def open_current(index_dir: str | Path) -> tuple[dict[str, Any], faiss.Index]:
    """``(manifest, index)`` of the directory's current state, for readers.

    If the index file cannot be opened because a writer switched to a newer state (and
    deleted an older file) between reading the manifest and opening the file, the
    manifest is read again, up to :data:`OPEN_ATTEMPTS` times.
    """
    for attempt in range(OPEN_ATTEMPTS):
        manifest = read_manifest(index_dir)
        try:
            return manifest, open_index(index_dir, manifest)
        except DamagedFileError:
            newer = read_manifest(index_dir)
            if attempt + 1 == OPEN_ATTEMPTS or newer.get("index_file") == manifest.get(
                    "index_file"):
                raise
    raise AssertionError("unreachable")


def recorded_specs(manifest: dict[str, Any] | None) -> tuple[BuildSpec, TuningSpec]:
    """The build and tuning settings ``manifest`` records (``index_type_requested``,
    ``memory_bytes``, ``target_recall``), the specs' defaults where it has none."""
    manifest = manifest or {}
    build, tuning = BuildSpec(), TuningSpec()
    return (replace(build, factory=manifest.get("index_type_requested", build.factory),
                    memory_bytes=manifest.get("memory_bytes", build.memory_bytes)),
            replace(tuning, target_recall=manifest.get("target_recall",
                                                       tuning.target_recall)))


def recorded_postprocess(manifest: dict[str, Any] | None) -> Postprocess:
    """The post-processing ``manifest`` records (the default for a new index, or one
    written before post-processing existed)."""
    if not manifest or "postprocess" not in manifest:
        return DEFAULT_POSTPROCESS
    return Postprocess.from_dict(manifest["postprocess"])


def index_is_current(index_dir: Path, store: Store, build: BuildSpec, tuning: TuningSpec,
                     on_disk: bool | None = None,
                     postprocess: Postprocess | None = None) -> bool:
    """True when the manifest was written from this metadata with these settings, and its
    index file (and ``.ivfdata``, and expansion) is there with the size it was written
    with. ``on_disk=None``: either kind; ``postprocess=None``: any."""
    try:
        manifest = read_manifest(index_dir)
    except IndexDirError:
        return False
    return (manifest.get("generation") == store.generation
            and _intact(index_dir, manifest)
            and manifest.get("index_type_requested") == build.factory
            and manifest.get("memory_bytes") == build.memory_bytes
            and manifest.get("target_recall") == tuning.target_recall
            and (on_disk is None or bool(manifest.get("on_disk")) == on_disk)
            and (postprocess is None or (manifest.get("postprocess")
                                         == postprocess.to_dict())))


def write_index(
    index_dir: str | Path,
    store: Store,
    build: BuildSpec = BuildSpec(),
    tuning: TuningSpec = TuningSpec(),
    rebuild: bool = False,
    on_disk: bool | None = None,
    postprocess: Postprocess | None = None,
) -> dict[str, Any]:
    """Write a new index state from the stored embeddings and make it current (module
    docstring): a new index file, then the manifest, then :func:`finish_switch`.

    ``build.factory``: ``"auto"`` (:func:`~groco.index.faiss.choose.choose_index_type`
    with ``build.memory_bytes``) or any FAISS factory string. Search parameters are tuned
    as ``tuning`` says (its ``k`` must be 10, the manifest's recall@10). ``rebuild``:
    never edit the current index in place
    (repair). ``on_disk``: an IVF with its lists in ``index-NNNNNN.ivfdata``
    (:mod:`groco.index.ondisk`; never edited in place); ``None`` keeps what the current
    manifest has (in RAM when there is none). The encoder facts come from ``store``'s
    info. Returns the manifest written. Raises :class:`IndexDirError` when no image is
    embedded.
    """
    if tuning.k != MANIFEST_K:
        raise ValueError(f"index directories record recall@{MANIFEST_K}, not {tuning.key}")
    index_dir = Path(index_dir)
    info = store.info()
    ids, shard_numbers, rows = store.embedded_locations()
    if len(ids) == 0:
        raise IndexDirError(f"{index_dir}: no image could be embedded "
                            f"({store.count(BROKEN)} broken files); nothing to index")
    source = ShardSource(index_dir, ids, shard_numbers, rows)
    n, dim = source.count, source.dim
    try:
        old = read_manifest(index_dir)
    except IndexDirError:
        old = None
    if on_disk is None:
        on_disk = bool(old is not None and old.get("on_disk"))
    factory = factory_for(build, n, dim, on_disk)
    index = None
    if (old is not None and old.get("index_type") == factory and not rebuild
            and not on_disk and not old.get("on_disk")):
        try:
            candidate = open_index(index_dir, old)
        except DamagedFileError as error:
            log.warning("rebuilding the index from the stored embeddings: %s", error)
        else:
            if candidate.d == dim and _update_in_place(candidate, source):
                index = candidate
    path = index_dir / _new_index_name(index_dir, old)
    if index is not None:
        tuned = retune(index, source, tuning)
    elif on_disk:
        log.info("building a %s index of %d vectors (dim %d), lists on disk", factory, n,
                 dim)
        index, tuned = build_ondisk_index(index_dir, source, path.name,
                                          replace(build, factory=factory), tuning)
    else:
        log.info("building a %s index of %d vectors (dim %d)", factory, n, dim)
        index, tuned = build_tuned_index(source, replace(build, factory=factory), tuning)
    recall = tuned.pop(tuning.key)
    kept = old is not None and _intact(index_dir, old)
    save_index(index, path)
    expansion = write_expansion(index_dir, path.name, index, source,
                                postprocess or recorded_postprocess(old))
    data = index_dir / ivfdata_name(path.name) if on_disk else None
    manifest = {
        "format": FORMAT,
        "groco_version": groco.__version__,
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "images_root": info["images_root"],
        "encoder_hash": info["encoder_hash"],
        "encoder_path": info["encoder_path"],
        "encoder_backbone": info.get("encoder_backbone", ""),
        "image_size": int(info["image_size"]),
        "dim": dim,
        "metric": "inner_product",
        "index_type": factory,
        "index_type_requested": build.factory,
        "memory_bytes": build.memory_bytes,
        "target_recall": tuning.target_recall,
        "search_params": tuned,
        "recall_at_10": None if math.isnan(recall) else recall,
        "count": int(index.ntotal),
        "broken": store.count(BROKEN),
        "generation": store.generation,
        "index_file": path.name,
        "index_bytes": path.stat().st_size,
        "on_disk": on_disk,
        "ivfdata_file": data.name if data is not None else None,
        "ivfdata_bytes": data.stat().st_size if data is not None else None,
        # the previous state stays for its readers, unless its index file is damaged
        "previous_index_file": old.get("index_file", INDEX_NAME) if kept else None,
        "previous_generation": old.get("generation") if kept else None,
        **expansion,
    }
    del index  # unmaps the .ivfdata before the switch may delete older files
    write_manifest(index_dir, manifest)  # the switch: from here on the new state is current
    finish_switch(index_dir, store, manifest)
    return manifest


def _intact(index_dir: Path, manifest: dict[str, Any]) -> bool:
    """The manifest's index file (and ``.ivfdata``) is there with the size it was written
    with."""
    path = index_path(index_dir, manifest)
    if not (path.is_file() and manifest.get("index_bytes", path.stat().st_size) ==
            path.stat().st_size):
        return False
    if not _expansion_intact(index_dir, manifest):
        return False
    data = manifest.get("ivfdata_file")
    if not data:
        return True
    data_path = Path(index_dir) / data
    return data_path.is_file() and manifest.get("ivfdata_bytes") == data_path.stat().st_size


def _expansion_intact(index_dir: Path, manifest: dict[str, Any]) -> bool:
    names = [manifest.get("expansion_file"), manifest.get("expansion_ids_file")]
    return all((Path(index_dir) / name).is_file() for name in names if name)


def _new_index_name(index_dir: Path, old: dict[str, Any] | None) -> str:
    """``index-NNNNNN.faiss`` with a number above every index (or ``.ivfdata``) file there
    and the manifest's."""
    numbers = [int(m.group(1)) for f in index_dir.iterdir()
               if (m := _NUMBERED.match(f.name))]
    if old is not None and (m := _VERSIONED.match(old.get("index_file", ""))):
        numbers.append(int(m.group(1)))
    return f"index-{max(numbers, default=0) + 1:06d}.faiss"


def finish_switch(index_dir: str | Path, store: Store, manifest: dict[str, Any]) -> None:
    """Delete what only the states before the previous one used (idempotent: run again by
    the next writer when a kill stopped it): index files (with their ``.ivfdata``) other
    than the current and the previous one, what killed writes left (``.*.tmp`` files and
    folders), retired rows from before the previous state, the shards only they used."""
    index_dir = Path(index_dir)
    keep = {manifest.get("index_file", INDEX_NAME), manifest.get("previous_index_file")}
    keep_data = {ivfdata_name(name) for name in keep if name}
    keep_data |= {part for name in keep if name for part in expansion_names(name)}
    for f in index_dir.iterdir():
        old_index = (_VERSIONED.match(f.name) or f.name == INDEX_NAME) and f.name not in keep
        old_data = ((f.name.endswith(IVFDATA_SUFFIX) or is_expansion_file(f.name))
                    and f.name not in keep_data)
        if f.name.startswith(".") and f.name.endswith(".tmp"):  # killed writes
            if f.is_dir():
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)
        elif old_index or old_data:
            f.unlink(missing_ok=True)
    previous = manifest.get("previous_generation")
    store.purge_retired(manifest["generation"] if previous is None else int(previous))
    shards.remove_unreferenced(index_dir, store.referenced_shards())
