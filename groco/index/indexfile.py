"""The index state of a directory: the FAISS index file and ``manifest.json`` that names it.

The FAISS index is always made from the shards and ``meta.sqlite`` (never from images):
the embedded rows' vectors are gathered, then either

- the current index is brought up to date in place (ids no longer in the metadata
  removed, new ones added) when its type is still the one wanted and FAISS can remove
  from it (Flat, IVF; any state-based difference, so an interrupted update is repaired
  too), or
- a new index is built (``HNSW`` cannot remove vectors; a type change; no index yet; a
  damaged index file) by :func:`groco.index.faiss_index.build_tuned_index`.

**A new state is swapped in atomically.** The index is written to a *new* file,
``index-NNNNNN.faiss`` (numbers only grow), and the manifest naming it is written last
(temporary file + rename): until that rename readers see the previous manifest, the
previous index file (kept) and, for the ids of rows the update deleted, the retired rows
(:mod:`groco.index.store`); after it, the new state. A writer killed at any moment
leaves one of the two states current, never neither. The state before the previous one
(its index file, retired rows and the shards only they used) is deleted after the
switch (:func:`finish_switch`); one previous state stays for readers that opened it
just before. No torch here.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from pathlib import Path
from typing import Any

import faiss
import numpy as np

import groco

from . import shards
from .faiss_index import (
    build_tuned_index,
    choose_index_type,
    load_index,
    save_index,
    tune_search_params,
)
from .manifest import (
    FORMAT,
    INDEX_NAME,
    DamagedFileError,
    IndexDirError,
    damaged,
    read_manifest,
    write_manifest,
)
from .store import BROKEN, Store

log = logging.getLogger(__name__)

RECALL_K = 10
_VERSIONED = re.compile(r"^index-(\d{6,})\.faiss$")
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


def _update_in_place(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray) -> bool:
    """Make ``index`` hold exactly ``ids``; False (index untouched) if it cannot remove."""
    present = index_ids(index)
    if present is None:
        return False
    remove = np.setdiff1d(present, ids)
    add = ~np.isin(ids, present)
    if len(remove):
        try:
            index.remove_ids(remove)
        except RuntimeError:  # e.g. HNSW: FAISS refuses before changing anything
            return False
    if add.any():
        index.add_with_ids(np.ascontiguousarray(vectors[add]), ids[add])
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
    try:
        index = load_index(path, manifest.get("search_params") or None)
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


def wanted_type(index_type: str, n: int, dim: int, memory_bytes: int | None) -> str:
    """The factory string to use: ``index_type``, or the auto choice for ``n`` x ``dim``."""
    return choose_index_type(n, dim, memory_bytes) if index_type == "auto" else index_type


def index_is_current(index_dir: Path, store: Store, index_type: str,
                     memory_bytes: int | None, target_recall: float) -> bool:
    """True when the manifest was written from this metadata with these settings, and its
    index file is there with the size it was written with."""
    try:
        manifest = read_manifest(index_dir)
    except IndexDirError:
        return False
    return (manifest.get("generation") == store.generation
            and _intact(index_dir, manifest)
            and manifest.get("index_type_requested") == index_type
            and manifest.get("memory_bytes") == memory_bytes
            and manifest.get("target_recall") == target_recall)


def write_index(
    index_dir: str | Path,
    store: Store,
    index_type: str = "auto",
    memory_bytes: int | None = None,
    target_recall: float = 0.95,
    rebuild: bool = False,
) -> dict[str, Any]:
    """Write a new index state from the stored embeddings and make it current (module
    docstring): a new index file, then the manifest, then :func:`finish_switch`.

    ``index_type``: ``"auto"`` (:func:`~groco.index.faiss_index.choose_index_type` with
    ``memory_bytes``) or any FAISS factory string. Search parameters are tuned to
    ``target_recall`` at recall@10. ``rebuild``: never edit the current index in place
    (repair). The encoder facts come from ``store``'s info. Returns the manifest
    written. Raises :class:`IndexDirError` when no image is embedded.
    """
    index_dir = Path(index_dir)
    info = store.info()
    ids, shard_numbers, rows = store.embedded_locations()
    if len(ids) == 0:
        raise IndexDirError(f"{index_dir}: no image could be embedded "
                            f"({store.count(BROKEN)} broken files); nothing to index")
    vectors = shards.gather(index_dir, shard_numbers, rows)
    n, dim = vectors.shape
    factory = wanted_type(index_type, n, dim, memory_bytes)
    index = None
    try:
        old = read_manifest(index_dir)
    except IndexDirError:
        old = None
    if old is not None and old.get("index_type") == factory and not rebuild:
        try:
            candidate = open_index(index_dir, old)
        except DamagedFileError as error:
            log.warning("rebuilding the index from the stored embeddings: %s", error)
        else:
            if candidate.d == dim and _update_in_place(candidate, ids, vectors):
                index = candidate
    key = f"recall@{RECALL_K}"
    if index is not None:
        tuned = (tune_search_params(index, vectors, ids=ids, target_recall=target_recall,
                                    k=RECALL_K) if n > RECALL_K else {key: math.nan})
    else:
        log.info("building a %s index of %d vectors (dim %d)", factory, n, dim)
        index, tuned = build_tuned_index(vectors, ids, factory=factory,
                                         memory_bytes=memory_bytes,
                                         target_recall=target_recall, k=RECALL_K)
    recall = tuned.pop(key)
    kept = old is not None and _intact(index_dir, old)
    path = index_dir / _new_index_name(index_dir, old)
    save_index(index, path)
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
        "index_type_requested": index_type,
        "memory_bytes": memory_bytes,
        "target_recall": target_recall,
        "search_params": tuned,
        "recall_at_10": None if math.isnan(recall) else recall,
        "count": int(index.ntotal),
        "broken": store.count(BROKEN),
        "generation": store.generation,
        "index_file": path.name,
        "index_bytes": path.stat().st_size,
        # the previous state stays for its readers, unless its index file is damaged
        "previous_index_file": old.get("index_file", INDEX_NAME) if kept else None,
        "previous_generation": old.get("generation") if kept else None,
    }
    write_manifest(index_dir, manifest)  # the switch: from here on the new state is current
    finish_switch(index_dir, store, manifest)
    return manifest


def _intact(index_dir: Path, manifest: dict[str, Any]) -> bool:
    """The manifest's index file is there with the size it was written with."""
    path = index_path(index_dir, manifest)
    return path.is_file() and manifest.get("index_bytes", path.stat().st_size) == \
        path.stat().st_size


def _new_index_name(index_dir: Path, old: dict[str, Any] | None) -> str:
    """``index-NNNNNN.faiss`` with a number above every index file there and the manifest's."""
    numbers = [int(m.group(1)) for f in index_dir.iterdir()
               if (m := _VERSIONED.match(f.name))]
    if old is not None and (m := _VERSIONED.match(old.get("index_file", ""))):
        numbers.append(int(m.group(1)))
    return f"index-{max(numbers, default=0) + 1:06d}.faiss"


def finish_switch(index_dir: str | Path, store: Store, manifest: dict[str, Any]) -> None:
    """Delete what only the states before the previous one used (idempotent: run again by
    the next writer when a kill stopped it): index files other than the current and the
    previous one, retired rows from before the previous state, the shards only they used."""
    index_dir = Path(index_dir)
    keep = {manifest.get("index_file", INDEX_NAME), manifest.get("previous_index_file")}
    for f in index_dir.iterdir():
        old_index = (_VERSIONED.match(f.name) or f.name == INDEX_NAME) and f.name not in keep
        if old_index or (f.name.startswith(".") and f.name.endswith(".tmp")):  # killed writes
            f.unlink(missing_ok=True)
    previous = manifest.get("previous_generation")
    store.purge_retired(manifest["generation"] if previous is None else int(previous))
    shards.remove_unreferenced(index_dir, store.referenced_shards())
