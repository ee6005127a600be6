"""Embedding shard files of an index directory: ``shards/emb-00001.npy`` + ``ids-00001.npy``.

Shard ``n`` holds ``emb-{n:05d}.npy`` (``(rows, dim)`` float32 unit vectors),
``ids-{n:05d}.npy`` (``(rows,)`` int64 ids, the same order) and ``sum-{n:05d}.json`` (the
CRC-32 of both files' bytes). All three are written atomically (temporary file, fsync,
rename), the embeddings last: a shard exists when its ``emb`` file does. A shard becomes
part of the index only when the metadata rows pointing to it are committed
(:meth:`groco.index.store.Store.commit`); :func:`reconcile` removes the rest on start-up,
and with ``verify`` (``groco index repair``) also drops shards whose bytes no longer match
their checksums, the damage a file that still parses would otherwise hide. Shards written
without a ``sum`` file are read as they are.
"""

from __future__ import annotations

import io
import json
import logging
import re
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from groco.fileio import atomic_path

from .manifest import DamagedFileError, damaged
from .store import Store

log = logging.getLogger(__name__)

SHARD_DIR = "shards"
_NAME = re.compile(r"^(emb-|ids-|sum-)(\d+)\.(npy|json)$")
_CHUNK = 1 << 24


def emb_path(index_dir: Path, number: int) -> Path:
    return Path(index_dir) / SHARD_DIR / f"emb-{number:05d}.npy"


def ids_path(index_dir: Path, number: int) -> Path:
    return Path(index_dir) / SHARD_DIR / f"ids-{number:05d}.npy"


def sum_path(index_dir: Path, number: int) -> Path:
    return Path(index_dir) / SHARD_DIR / f"sum-{number:05d}.json"


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_shard(index_dir: Path, number: int, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Write shard ``number`` atomically: the ids, the checksums, then the embeddings."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or ids.shape != (len(vectors),):
        raise ValueError(f"shard needs (n, dim) vectors and (n,) ids, got {vectors.shape} "
                         f"and {ids.shape}")
    ids_bytes, emb_bytes = _npy_bytes(ids), _npy_bytes(vectors)
    sums = json.dumps({"ids_crc32": zlib.crc32(ids_bytes),
                       "emb_crc32": zlib.crc32(emb_bytes)}).encode()
    for path, data in ((ids_path(index_dir, number), ids_bytes),
                       (sum_path(index_dir, number), sums),
                       (emb_path(index_dir, number), emb_bytes)):
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(data)


def checksum_problem(index_dir: Path, number: int) -> str | None:
    """Why shard ``number``'s files do not match its checksums, or None (they match, or
    the shard was written without a ``sum`` file). Reads both files whole."""
    try:
        sums = json.loads(sum_path(index_dir, number).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return f"unreadable checksums ({error})"
    for key, path in (("ids_crc32", ids_path(index_dir, number)),
                      ("emb_crc32", emb_path(index_dir, number))):
        try:
            if _file_crc32(path) != sums.get(key):
                return f"{path.name} does not match its checksum"
        except OSError as error:
            return f"{path.name}: {error}"
    return None


def damaged_shard(index_dir: Path, number: int, reason: object) -> DamagedFileError:
    """The one-line error for an unreadable shard, with its way out."""
    return damaged(emb_path(index_dir, number), reason, index_dir, way_out=(
        f"run `groco index repair {index_dir}` (drops the rows stored in it and rebuilds "
        f"the index), then `groco index update {index_dir}` to embed those images again"))


def load_vectors(index_dir: Path, number: int, mmap: bool = True) -> np.ndarray:
    """The ``(rows, dim)`` embeddings of shard ``number`` (memory-mapped by default).

    :class:`~groco.index.manifest.DamagedFileError` for a missing or unreadable file.
    """
    try:
        vectors = np.load(emb_path(index_dir, number), mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as error:
        raise damaged_shard(index_dir, number, error) from error
    if vectors.ndim != 2:
        raise damaged_shard(index_dir, number, f"shape {vectors.shape}, not (rows, dim)")
    return vectors


def load_ids(index_dir: Path, number: int) -> np.ndarray:
    """The ``(rows,)`` ids of shard ``number``; ``DamagedFileError`` if unreadable."""
    try:
        return np.load(ids_path(index_dir, number))
    except (OSError, ValueError, EOFError) as error:
        raise damaged_shard(index_dir, number, error) from error


def shards_on_disk(index_dir: Path) -> set[int]:
    """Numbers of the shards with an ``emb``, ``ids`` or ``sum`` file in ``shards/``."""
    folder = Path(index_dir) / SHARD_DIR
    if not folder.is_dir():
        return set()
    found = set()
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.add(int(match.group(2)))
    return found


def remove_shard(index_dir: Path, number: int) -> None:
    emb_path(index_dir, number).unlink(missing_ok=True)
    ids_path(index_dir, number).unlink(missing_ok=True)
    sum_path(index_dir, number).unlink(missing_ok=True)


def _shard_ok(index_dir: Path, number: int, rows: int, verify: bool) -> bool:
    try:
        vectors = load_vectors(index_dir, number)
        ids = load_ids(index_dir, number)
    except DamagedFileError:
        return False
    if not (len(vectors) == len(ids) and len(ids) >= rows):
        return False
    problem = checksum_problem(index_dir, number) if verify else None
    if problem is not None:
        log.warning("%s: %s", emb_path(index_dir, number).parent, problem)
    return problem is None


def reconcile(index_dir: Path, store: Store, verify: bool = False) -> tuple[int, int]:
    """Make shard files and metadata agree after a crash; returns ``(files, rows)`` removed.

    - temporary files left by an interrupted atomic write (``.*.tmp``) are deleted;
    - shard files that no committed row references (written, then killed before the
      commit) are deleted: their images are not recorded and get embedded again;
    - rows that reference a missing or unreadable shard (a damaged directory), or with
      ``verify`` one whose bytes do not match its checksums, are deleted, so those
      images are embedded again too.

    Afterwards every embedded row points into a readable shard and every shard file is
    referenced: a rerun never has an image twice.
    """
    index_dir = Path(index_dir)
    folder = index_dir / SHARD_DIR
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    referenced = store.referenced_shards()
    files_removed = 0
    for number in sorted(shards_on_disk(index_dir) - set(referenced)):
        remove_shard(index_dir, number)
        files_removed += 1
    bad = [n for n, rows in referenced.items()
           if not _shard_ok(index_dir, n, rows, verify)]
    rows_removed = store.delete_shards(bad)
    for number in bad:
        remove_shard(index_dir, number)
    if files_removed or rows_removed:
        log.info("recovered from an interrupted run: %d uncommitted shard(s) deleted, "
                 "%d row(s) in unreadable shards dropped", files_removed, rows_removed)
    return files_removed, rows_removed


def gather(index_dir: Path, shards: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The vectors at ``(shards[i], rows[i])``, in that order: ``(n, dim)`` float32."""
    shards = np.asarray(shards, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    if len(shards) == 0:
        raise ValueError("no vectors to gather")
    first = load_vectors(index_dir, int(shards[0]))
    out = np.empty((len(shards), first.shape[1]), dtype=np.float32)
    order = np.argsort(shards, kind="stable")
    bounds = np.flatnonzero(np.diff(shards[order])) + 1
    for group in np.split(order, bounds):
        number = int(shards[group[0]])
        vectors = load_vectors(index_dir, number)
        try:
            out[group] = vectors[rows[group]]
        except (IndexError, ValueError) as error:  # shorter or of another dim than recorded
            raise damaged_shard(index_dir, number, error) from error
    return out


def remove_unreferenced(index_dir: Path, referenced: Iterable[int]) -> int:
    """Delete shard files no row references any more (after updates); returns the count."""
    keep = set(referenced)
    gone = 0
    for number in shards_on_disk(index_dir) - keep:
        remove_shard(index_dir, number)
        gone += 1
    return gone
