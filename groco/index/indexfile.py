"""Write ``index.faiss`` and ``manifest.json`` of an index directory from its stored embeddings.

The FAISS index is always made from the shards and ``meta.sqlite`` (never from images):
the embedded rows' vectors are gathered, then either

- the existing ``index.faiss`` is brought up to date in place (ids no longer in the
  metadata removed, new ones added) when its type is still the one wanted and FAISS can
  remove from it (Flat, IVF; any state-based difference, so an interrupted update is
  repaired too), or
- a new index is built (``HNSW`` cannot remove vectors; a type change; no index yet).

Search parameters are then tuned to the recall target and both files are written
atomically, the index first. No torch here.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
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
    IndexDirError,
    read_manifest,
    write_manifest,
)
from .store import BROKEN, Store

log = logging.getLogger(__name__)

RECALL_K = 10


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


def wanted_type(index_type: str, n: int, dim: int, memory_bytes: int | None) -> str:
    """The factory string to use: ``index_type``, or the auto choice for ``n`` x ``dim``."""
    return choose_index_type(n, dim, memory_bytes) if index_type == "auto" else index_type


def index_is_current(index_dir: Path, store: Store, index_type: str,
                     memory_bytes: int | None, target_recall: float) -> bool:
    """True when the manifest was written from this metadata with these settings."""
    try:
        manifest = read_manifest(index_dir)
    except IndexDirError:
        return False
    return (manifest.get("generation") == store.generation
            and (Path(index_dir) / INDEX_NAME).is_file()
            and manifest.get("index_type_requested") == index_type
            and manifest.get("memory_bytes") == memory_bytes
            and manifest.get("target_recall") == target_recall)


def write_index(
    index_dir: str | Path,
    store: Store,
    index_type: str = "auto",
    memory_bytes: int | None = None,
    target_recall: float = 0.95,
) -> dict[str, Any]:
    """Build or update ``index.faiss`` from the stored embeddings; write the manifest.

    ``index_type``: ``"auto"`` (:func:`~groco.index.faiss_index.choose_index_type` with
    ``memory_bytes``) or any FAISS factory string. Search parameters are tuned to
    ``target_recall`` at recall@10 (leave-one-out queries from the collection). The
    encoder facts come from ``store``'s info. Returns the manifest written.
    Raises :class:`IndexDirError` when no image is embedded.
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
    path = index_dir / INDEX_NAME
    if old is not None and old.get("index_type") == factory and path.is_file():
        try:
            candidate = load_index(path)
        except (RuntimeError, OSError) as error:
            log.warning("rebuilding: cannot read %s (%s)", path, error)
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
    }
    write_manifest(index_dir, manifest)
    return manifest
