"""Sharded builds: slices, part directories, a directory's claim, and what a merge checks
and copies.

A sharded build splits one collection across workers (torchrun ranks, Slurm or
Kubernetes jobs, Ray actors). Each file belongs to one slice, :func:`slice_of` its
relative path; slice ``i`` of ``n`` is embedded into :func:`part_dir` ``OUT/part-IIIII-of-
NNNNN``, an index directory without a FAISS index whose ``info`` records ``slice = i/n``
and, once every file of it is recorded, ``part_complete = 1``.

- :func:`claim` records a directory's images root, encoder and slice when it is new, and
  checks them when a build resumes in it.
- A merge (:func:`groco.index.build.merge_index_dirs`) reads :func:`find_index_dirs`,
  :func:`check_parts` (same root, encoder and dim; every slice once; every part complete),
  fingerprints what it reads (:func:`merge_source`), makes its target ready
  (:func:`prepare_merge_target`: new, an interrupted merge to restart, or this same merge
  done) and copies the rows and embeddings in path order (:func:`copy_rows`).

Used by the plain build (:mod:`groco.index.build`) and the Ray path
(:mod:`groco.index.ray_embed`) alike.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from groco.encoder.runtime import Encoder
from groco.progress import progress_bar

from . import shards
from .manifest import MANIFEST_NAME, IndexDirError, IndexMismatchError, check_encoder_hash
from .store import BROKEN, DB_NAME, EMBEDDED, FileRow, Store, nothing_stored

log = logging.getLogger(__name__)

PART_PATTERN = re.compile(r"^part-(\d{5})-of-(\d{5})$")
"""The name of a part directory: ``part-IIIII-of-NNNNN``."""


def resolve_slice(shard: int | None, num_shards: int | None) -> tuple[int, int] | None:
    """``(shard, num_shards)`` of a sharded build, or ``None`` for a whole build.

    Explicit arguments win; with both ``None``, ``RANK``/``WORLD_SIZE`` (set by torchrun)
    are used when ``WORLD_SIZE > 1``. ``ValueError`` for an inconsistent pair.
    """
    if shard is None and num_shards is None:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return None
        shard, num_shards = int(os.environ.get("RANK", "0") or 0), world
    if shard is None or num_shards is None:
        raise ValueError("give both --shard and --num-shards")
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"need 0 <= shard < num_shards, got shard {shard} of {num_shards}")
    return (shard, num_shards) if num_shards > 1 else None


def slice_of(relpath: str, num_shards: int) -> int:
    """The slice a file belongs to: blake2b of its relative path mod ``num_shards``.

    Depends on the path alone, so every machine agrees without listing files in the same
    order, and a file keeps its slice when others are added.
    """
    digest = hashlib.blake2b(relpath.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


def part_dir(out_dir: str | Path, shard: int, num_shards: int) -> Path:
    """Where slice ``shard`` of ``num_shards`` is written: ``OUT/part-IIIII-of-NNNNN``."""
    return Path(out_dir) / f"part-{shard:05d}-of-{num_shards:05d}"


def list_parts(folder: str | Path) -> list[Path]:
    """The part directories under ``folder`` (names matching :data:`PART_PATTERN`), sorted."""
    return sorted(p for p in Path(folder).glob("part-*-of-*") if PART_PATTERN.match(p.name))


def claim(store: Store, index_dir: Path, root: Path, encoder: Encoder,
          part: tuple[int, int] | None) -> None:
    """Record the directory's root, encoder and slice, or check them on a resume.

    :class:`IndexMismatchError` when the directory was made for another images root,
    encoder (hash) or slice, or is a merged index.
    """
    info = store.info()
    slice_text = "" if part is None else f"{part[0]}/{part[1]}"
    if "images_root" not in info:
        store.set_info({
            "images_root": str(root), "encoder_hash": encoder.hash,
            "encoder_path": str(encoder.path.resolve()), "encoder_backbone": encoder.backbone,
            "image_size": encoder.image_size, "dim": encoder.dim, "slice": slice_text,
        })
        return
    if info["images_root"] != str(root):
        raise IndexMismatchError(f"{index_dir} indexes {info['images_root']}, not {root}; "
                                 "use another output directory")
    check_encoder_hash(info["encoder_hash"], encoder.hash, encoder.path, index_dir)
    if info.get("slice", "") != slice_text:
        raise IndexMismatchError(f"{index_dir} holds slice {info.get('slice') or 'all'}, "
                                 f"not {slice_text or 'all'}")
    if info.get("merged_from"):
        raise IndexMismatchError(f"{index_dir} is a merged index: use `groco index update`")
    store.set_info({"encoder_path": str(encoder.path.resolve())})


# ----------------------------------------------------------------------------- merge


def find_index_dirs(dirs: Sequence[str | Path]) -> list[Path]:
    """Index directories among ``dirs``: each one with a meta.sqlite, or its part-* children."""
    found: list[Path] = []
    for d in map(Path, dirs):
        if (d / DB_NAME).is_file():
            found.append(d)
            continue
        parts = [p for p in list_parts(d) if (p / DB_NAME).is_file()]
        if not parts:
            raise IndexDirError(f"{d}: neither an index directory nor a folder of parts")
        found.extend(parts)
    return found


def check_parts(dirs: list[Path], infos: list[dict[str, str]]) -> None:
    """Refuse to merge ``dirs`` (whose ``info`` tables are ``infos``) unless they share
    images root, encoder and dim, and, when they are parts of a sharded build, hold every
    slice ``0..n-1`` once, each complete (:class:`IndexDirError`, :class:`IndexMismatchError`)."""
    first = infos[0]
    for d, info in zip(dirs, infos, strict=True):
        for key in ("images_root", "encoder_hash", "dim"):
            if info.get(key) != first.get(key):
                raise IndexMismatchError(f"cannot merge {d} with {dirs[0]}: different {key} "
                                         f"({info.get(key)} vs {first.get(key)})")
    slices = [info.get("slice", "") for info in infos]
    if not any(slices):
        return
    if not all(slices):
        raise IndexDirError("cannot merge parts of a sharded build with whole indexes")
    pairs = [tuple(map(int, s.split("/"))) for s in slices]
    total = {n for _, n in pairs}
    if len(total) != 1:
        raise IndexDirError(f"parts of different sharded builds ({sorted(total)} shards)")
    (n,) = total
    have = sorted(i for i, _ in pairs)
    if have != list(range(n)):
        missing = sorted(set(range(n)) - set(have))
        dup = sorted({i for i in have if have.count(i) > 1})
        raise IndexDirError(f"need parts 0..{n - 1} once each: missing {missing}, "
                            f"repeated {dup}")
    unfinished = [str(d) for d, info in zip(dirs, infos, strict=True)
                  if info.get("part_complete") != "1"]
    if unfinished:
        raise IndexDirError(f"unfinished part(s): {', '.join(unfinished)} (rerun their build)")


def merge_source(dirs: list[Path], rows: list[tuple[FileRow, int]]) -> str:
    """A fingerprint of what a merge reads: each source directory and its row count."""
    counts = np.bincount([part for _, part in rows], minlength=len(dirs)).tolist()
    listing = [[str(d.resolve()), n] for d, n in zip(dirs, counts, strict=True)]
    return hashlib.sha256(json.dumps(sorted(listing)).encode()).hexdigest()[:16]


def prepare_merge_target(out: Path, source: str) -> bool:
    """Make ``out`` ready for a merge of ``source``; True when it already holds that merge
    (a rerun after the merge finished, or was killed at its very end: nothing to copy)."""
    db = out / DB_NAME
    if (out / MANIFEST_NAME).exists():
        if db.exists():
            with Store(db, readonly=True) as store:
                if store.get_info("merge_source") == source:
                    return True
        raise IndexDirError(f"{out} already holds an index; merge into a new directory")
    if db.exists():
        interrupted_merge = nothing_stored(db)
        if not interrupted_merge:
            with Store(db, readonly=True) as store:
                interrupted_merge = store.get_info("merged_from") is not None
        if not interrupted_merge:
            raise IndexDirError(f"{out} holds an unfinished build; merge into a new directory")
        log.info("%s: restarting an interrupted merge", out)
        for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
            (out / name).unlink(missing_ok=True)
        for index_file in (*out.glob("index*.faiss"), *out.glob("index*.ivfdata")):
            index_file.unlink()  # INDEX_NAME or a versioned one, and on-disk lists
        shutil.rmtree(out / shards.SHARD_DIR, ignore_errors=True)
    return False


def copy_rows(out: Path, store: Store, dirs: list[Path], rows: list[tuple[FileRow, int]],
              shard_size: int, progress: bool) -> None:
    """Commit ``rows`` (each with the index of its directory in ``dirs``) with ids 0.. in
    order, copying their embeddings into shards of ``out`` of ``shard_size`` vectors."""
    bar = progress_bar(len(rows), desc="merging", unit="img", disable=not progress)
    number, start = 1, 0
    try:
        while start < len(rows):
            # a chunk ends after shard_size embedded rows (broken rows ride along)
            end, embedded = start, 0
            while end < len(rows) and embedded < shard_size:
                embedded += rows[end][0].status == EMBEDDED
                end += 1
            chunk = rows[start:end]
            new_rows, where = [], []
            for offset, (row, part) in enumerate(chunk):
                new_id = start + offset
                if row.status == EMBEDDED:
                    where.append((part, row.shard, row.shard_row))
                    new_rows.append(FileRow(new_id, row.path, row.size, row.mtime_ns,
                                            row.hash, row.label, EMBEDDED, number,
                                            len(where) - 1))
                else:
                    new_rows.append(FileRow(new_id, row.path, row.size, row.mtime_ns,
                                            row.hash, row.label, BROKEN, error=row.error))
            if where:
                table = np.array(where, dtype=np.int64)
                vectors = np.empty((len(table), int(store.get_info("dim"))), np.float32)
                for part in np.unique(table[:, 0]):
                    mask = table[:, 0] == part
                    vectors[mask] = shards.gather(dirs[part], table[mask, 1], table[mask, 2])
                ids = np.array([r.id for r in new_rows if r.status == EMBEDDED], np.int64)
                shards.write_shard(out, number, ids, vectors)
                number += 1
            store.commit(insert=new_rows)
            bar.update(len(chunk))
            start = end
    finally:
        bar.close()
