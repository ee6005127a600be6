"""``groco index repair``: make a damaged index directory whole again without re-embedding.

1. **meta.sqlite.** ``PRAGMA quick_check``; if SQLite cannot read the file or finds it
   damaged, the file (with its ``-wal``/``-shm``) is moved aside to
   ``meta.sqlite.damaged-<UTC time>`` and a new one is filled with what can be read back:
   through the ``sqlite3`` shell's ``.recover`` where that program has it working, and
   by id ranges through Python's ``sqlite3`` (ranges whose pages are unreadable are
   retried id by id, then skipped); a file whose 100-byte header is destroyed ("file is
   not a database") is read again with a new header. The way that reads back the most
   rows is kept (the reads themselves: :mod:`groco.index.store.salvage`). Facts the
   ``info`` table lost come from ``manifest.json``. A recovered row is kept only when it
   is sound: an embedded row whose shard's ids file does not hold its id at its row is
   dropped.
2. **Shards.** :func:`groco.index.shards.reconcile` with ``verify``: rows stored in an
   unreadable shard, or in one whose bytes no longer match its checksums, are dropped
   (``groco index update`` embeds those images again); shard files no row references
   are deleted.
3. **index.faiss and manifest.json** are rebuilt from the stored embeddings (never
   edited in place), with the settings of the old manifest where it is readable, and
   swapped in atomically (:mod:`groco.index.indexfile`).

What cannot come back is said, not hidden: a row SQLite lost (its path, size, hash and
label are nowhere else) leaves its embedding unusable, so its shard rows are dropped and
the file counts as *not recorded*: ``groco index update`` embeds the images not recorded
(and retries broken ones) afterwards. The moved-aside database is kept for inspection.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from groco.images import find_images

from . import shards
from .indexfile import recorded_specs, write_index
from .lock import writer_lock
from .manifest import MANIFEST_NAME, DamagedFileError, IndexDirError, read_manifest
from .store import (
    DB_NAME,
    EMBEDDED,
    FileRow,
    Store,
    read_back,
    recover_with_shell,
    with_new_header,
)

log = logging.getLogger(__name__)

PAGE_SIZES = (4096, 1024, 2048, 8192, 16384, 32768, 65536, 512)
"""Page sizes tried when the header is rebuilt (SQLite's default first)."""
_INFO_FROM_MANIFEST = ("images_root", "encoder_hash", "encoder_path", "encoder_backbone",
                       "image_size", "dim")


@dataclass
class RepairReport:
    """What :func:`repair_index_dir` found and did.

    ``database``: ``"sound"``, or ``"recovered"`` (rows read back from a damaged file,
    moved to ``moved_aside``). ``rows``: file rows in the repaired metadata;
    ``rows_dropped``: recovered rows that were unsound or stored in an unreadable shard;
    ``vectors_lost``: embeddings in the shards whose row could not be recovered;
    ``unrecorded``: image files in the folder without a row (``groco index update``
    embeds them). ``count``/``index_type``: the rebuilt index (``None`` for a part of a
    sharded build, which has no index of its own).
    """

    index_dir: Path
    database: str
    rows: int
    rows_dropped: int = 0
    vectors_lost: int = 0
    unrecorded: int | None = None
    count: int | None = None
    index_type: str | None = None
    moved_aside: Path | None = None
    method: str | None = None

    def summary(self) -> str:
        """One paragraph for the command line."""
        if self.database == "sound":
            db = f"{DB_NAME} sound ({self.rows} rows)"
        else:
            db = (f"{DB_NAME} damaged: {self.rows} rows recovered by {self.method} "
                  f"(the damaged file is kept as {self.moved_aside})")
        lost = []
        if self.rows_dropped:
            lost.append(f"{self.rows_dropped} unsound or unreadable rows dropped")
        if self.vectors_lost:
            lost.append(f"{self.vectors_lost} embeddings without a recoverable row dropped")
        index = ("" if self.count is None
                 else f"; index rebuilt from the stored embeddings: {self.count} vectors, "
                      f"{self.index_type}")
        todo = ""
        if self.unrecorded:
            todo = (f"; {self.unrecorded} images are not recorded: run "
                    f"`groco index update {self.index_dir}` to embed them")
        return f"{self.index_dir}: {db}" + "".join(f"; {x}" for x in lost) + index + todo


def _damage(db: Path) -> str | None:
    """Why ``db`` is damaged, or ``None`` when SQLite reads it whole."""
    try:
        with Store(db, readonly=True) as store:
            errors = store.integrity_errors()
            if not errors:
                store.info()
                return None
            return "; ".join(errors[:3])
    except DamagedFileError as error:
        return str(error)


def _move_aside(db: Path) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    aside = db.with_name(f"{db.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{db}{suffix}")
        if src.exists():
            src.replace(Path(f"{aside}{suffix}"))
    return aside


def _shard_ids(index_dir: Path) -> dict[int, np.ndarray]:
    found = {}
    for number in sorted(shards.shards_on_disk(index_dir)):
        with contextlib.suppress(DamagedFileError):
            found[number] = shards.load_ids(index_dir, number)
    return found


def _sound(row: FileRow, shard_ids: dict[int, np.ndarray]) -> bool:
    if row.status != EMBEDDED:
        return row.status == "broken" and row.shard is None
    ids = shard_ids.get(row.shard)
    return ids is not None and 0 <= row.shard_row < len(ids) and int(ids[row.shard_row]) == row.id


def _recover_database(index_dir: Path, manifest: dict | None,
                      report: RepairReport) -> None:
    """Replace a damaged meta.sqlite by what can be read back (module docstring, step 1)."""
    db = index_dir / DB_NAME
    shard_ids = _shard_ids(index_dir)
    top_id = max((int(ids.max()) for ids in shard_ids.values() if len(ids)), default=0)
    report.moved_aside = _move_aside(db)
    with tempfile.TemporaryDirectory(dir=index_dir, prefix=".repair-") as tmp:
        tries = []
        scratch = Path(tmp) / "recovered.sqlite"
        if recover_with_shell(report.moved_aside, scratch):
            tries.append(("sqlite3 .recover", read_back(scratch, top_id)))
        tries.append(("reading by id ranges", read_back(report.moved_aside, top_id)))
        if not tries[-1][1][1]:  # nothing readable: the 100-byte header may be what broke
            for page_size in PAGE_SIZES:
                copy = Path(tmp) / f"header-{page_size}.sqlite"
                if with_new_header(report.moved_aside, copy, page_size):
                    tries.append((f"reading by id ranges after restoring the SQLite header "
                                  f"(page size {page_size})", read_back(copy, top_id)))
        report.method, (info, values) = max(tries, key=lambda t: (len(t[1][1]), len(t[1][0])))
    for key in _INFO_FROM_MANIFEST:
        if key not in info and manifest is not None and key in manifest:
            info[key] = str(manifest[key])
    missing = [key for key in _INFO_FROM_MANIFEST[:3] if key not in info]
    if missing:
        raise IndexDirError(f"{report.moved_aside}: neither it nor {index_dir}/manifest.json "
                            f"tells {', '.join(missing)}; rebuild the index with "
                            "`groco index build`")
    rows: dict[int, FileRow] = {}
    paths: set[str] = set()
    for value in values:
        try:
            row = FileRow(*value)
        except TypeError:
            continue
        if row.id in rows or row.path in paths or not _sound(row, shard_ids):
            report.rows_dropped += 1
            continue
        rows[row.id] = row
        paths.add(row.path)
    recorded = {r.id for r in rows.values() if r.status == EMBEDDED}
    report.vectors_lost = sum(int((~np.isin(ids, list(recorded))).sum())
                              for ids in shard_ids.values())
    with Store(db) as store:
        store.set_info(info)
        store.commit(insert=sorted(rows.values(), key=lambda r: r.id))
        store.set_info({"generation": store.generation + 1})  # the index is rebuilt anyway
    report.database = "recovered"
    log.warning("%s: recovered %d rows (%s); %d dropped, %d embeddings without a row",
                db, len(rows), report.method, report.rows_dropped, report.vectors_lost)


def repair_index_dir(index_dir: str | Path) -> RepairReport:
    """Repair ``index_dir`` (module docstring); holds its writer lock meanwhile.

    Raises :class:`IndexDirError` for a folder that is not an index directory, or when
    not even the images root and encoder can be recovered (neither the database nor the
    manifest holds them).
    """
    index_dir = Path(index_dir)
    db = index_dir / DB_NAME
    if not db.is_file():
        raise IndexDirError(f"{index_dir}: not an index directory (no {DB_NAME})")
    with writer_lock(index_dir, "groco index repair"):
        try:
            manifest = read_manifest(index_dir)
        except IndexDirError:
            manifest = None
        report = RepairReport(index_dir=index_dir, database="sound", rows=0)
        reason = _damage(db)
        if reason is not None:
            log.warning("%s", reason)
            _recover_database(index_dir, manifest, report)
        with Store(db) as store:
            _, dropped = shards.reconcile(index_dir, store, verify=True)
            report.rows_dropped += dropped
            report.rows = store.count()
            info = store.info()
            if not info.get("slice") and not store.count(EMBEDDED):
                # nothing to index: the directory becomes an unfinished build, which
                # `groco index update` (or build) completes
                (index_dir / MANIFEST_NAME).unlink(missing_ok=True)
                log.warning("%s: no embedding is left to index", index_dir)
            elif not info.get("slice"):
                written = write_index(index_dir, store, *recorded_specs(manifest),
                                      rebuild=True)
                report.count, report.index_type = written["count"], written["index_type"]
            root = Path(info["images_root"])
            if root.is_dir() and not info.get("slice"):
                recorded = store.paths()
                report.unrecorded = sum(p.relative_to(root).as_posix() not in recorded
                                        for p in find_images(root))
    return report
