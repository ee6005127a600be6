"""``manifest.json`` of an index directory, and the errors an index directory raises.

The manifest is written (atomically, by rename) *last*, after the index file it names: it
is what makes a new state of the directory current, so a reader always finds a complete
state, the previous or the new one (see :mod:`groco.index.indexfile`). It holds:

    format               1
    groco_version        version of groco that wrote it
    built_at             UTC time of writing, ISO 8601
    images_root          absolute path of the indexed folder (metadata paths are relative)
    encoder_hash         ``groco.hash`` of the encoder: a searcher refuses any other one
    encoder_path         absolute path of the encoder file used
    encoder_backbone     backbone named in the encoder's metadata
    image_size           the encoder's input size
    dim                  embedding dimension
    metric               "inner_product" (cosine on unit vectors)
    index_file           the FAISS index's file in the directory (``index-000007.faiss``;
                         ``index.faiss`` in directories written before versioned files)
    index_bytes          that file's size: a truncated file is rebuilt by ``update``
    index_type           FAISS factory string of the index file
    index_type_requested what was asked for ("auto" or a factory string)
    memory_bytes         memory budget asked for ("auto" uses it), null = default
    target_recall        recall@10 target of the tuning
    search_params        e.g. {"efSearch": 64}; empty for exact indices
    recall_at_10         recall@10 measured against exact search (1.0 for Flat)
    count                vectors in the index file
    broken               files recorded as broken (not in the index)
    generation           ``meta.sqlite``'s generation the index was built from
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from groco.fileio import atomic_write_text

MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.faiss"
FORMAT = 1


class IndexDirError(ValueError):
    """An index directory that is missing, incomplete or unreadable (one-line message)."""


class IndexMismatchError(ValueError):
    """An encoder (or images folder) that is not the one the index was built with."""


class DamagedFileError(IndexDirError):
    """A file of an index directory that cannot be read; the message names it and the way
    out (one line)."""


def damaged(path: str | Path, reason: object, index_dir: str | Path,
            way_out: str | None = None) -> DamagedFileError:
    """The :class:`DamagedFileError` for ``path`` in ``index_dir``: ``"<path>: damaged
    (<reason>); <way out>"``, by default ``run `groco index repair <index_dir>```."""
    reason = " ".join(str(reason).split()) or "unreadable"
    way_out = way_out or (f"run `groco index repair {index_dir}` (rebuilds the index from "
                          "the stored embeddings, no re-embedding)")
    return DamagedFileError(f"{path}: damaged ({reason}); {way_out}")


def write_manifest(index_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically."""
    atomic_write_text(Path(index_dir) / MANIFEST_NAME,
                      json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(index_dir: str | Path) -> dict[str, Any]:
    """The manifest of a built index; :class:`IndexDirError` if there is none."""
    path = Path(index_dir) / MANIFEST_NAME
    if not Path(index_dir).is_dir():
        raise IndexDirError(f"{index_dir}: index directory not found")
    if not path.is_file():
        raise IndexDirError(f"{index_dir}: no {MANIFEST_NAME} (not an index, or its build "
                            "did not finish: run `groco index build` again to resume)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise damaged(path, error, index_dir) from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise damaged(path, f"not a groco index manifest of format {FORMAT}", index_dir)
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise damaged(path, f"no {', '.join(missing)}", index_dir)
    return manifest


_REQUIRED = ("images_root", "encoder_hash", "encoder_path", "dim", "index_type", "count",
             "search_params", "generation", "broken")


def check_encoder_hash(expected: str, actual: str, encoder_path: str | Path,
                       where: str | Path) -> None:
    """:class:`IndexMismatchError` unless the encoder's hash is the index's."""
    if expected != actual:
        raise IndexMismatchError(
            f"encoder {encoder_path} (hash {actual}) is not the encoder {where} was built "
            f"with (hash {expected}); use that encoder or build a new index")
