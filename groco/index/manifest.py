"""``manifest.json`` of an index directory, and the errors an index directory raises.

The manifest is written (atomically) after ``index.faiss`` and describes it:

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
    index_type           FAISS factory string of index.faiss
    index_type_requested what was asked for ("auto" or a factory string)
    memory_bytes         memory budget asked for ("auto" uses it), null = default
    target_recall        recall@10 target of the tuning
    search_params        e.g. {"efSearch": 64}; empty for exact indices
    recall_at_10         recall@10 measured against exact search (1.0 for Flat)
    count                vectors in index.faiss
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
        raise IndexDirError(f"{path}: unreadable ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexDirError(f"{path}: not a groco index manifest (format {FORMAT})")
    return manifest


def check_encoder_hash(expected: str, actual: str, encoder_path: str | Path,
                       where: str | Path) -> None:
    """:class:`IndexMismatchError` unless the encoder's hash is the index's."""
    if expected != actual:
        raise IndexMismatchError(
            f"encoder {encoder_path} (hash {actual}) is not the encoder {where} was built "
            f"with (hash {expected}); use that encoder or build a new index")
