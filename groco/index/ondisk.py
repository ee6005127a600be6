"""IVF indexes whose inverted lists live on disk (``groco index build|merge --on-disk``).

FAISS's recipe (``faiss.contrib.ondisk.merge_ondisk``, ``benchs/distributed_ondisk``):
train the IVF once on a sample, fill *empty copies of the trained index* part by part
(each part written to its own file), then merge every part's inverted lists into one
``.ivfdata`` file that the index references. Nothing holds every vector: the build's
memory is the trained index plus one fill group (:data:`FILL_BYTES` of codes) plus one
shard, and a searcher memory-maps the lists (the OS pages in what a query touches), so
its resident memory stays near the coarse quantizer.

Files, in the index directory (:mod:`groco.index.indexfile` swaps them in and out):

    index-NNNNNN.faiss     the trained index; its lists are a reference to
    index-NNNNNN.ivfdata   the inverted lists, by *bare file name*: readers open it beside
                           the index file (``IO_FLAG_ONDISK_SAME_DIR``), so the directory
                           can be moved or copied.

The ``.ivfdata`` is merged into ``.index-NNNNNN.ivfdata.tmp``, synced, and renamed to its
final name before the index file naming it is written (atomically) and the manifest after
that: until the manifest switch nothing names the new files, and a killed build leaves
only files that the next writer deletes (:func:`groco.index.indexfile.finish_switch`).
A file is never written again once named: an update builds a new pair.

Recall tuning is the in-RAM build's (:mod:`groco.index.faiss.tune`: held-out queries,
:func:`~groco.index.faiss.tune.tune_search_params`): the held-out vectors are filled into
their own part, and the index searched while tuning is a read-only view over the other
parts (``HStackInvertedLists``), so the queries are not in what they search. FAISS's
on-disk lists do not support adding after a merge (the new entries overwrite others),
which is why nothing is ever added to a merged index.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import faiss
from faiss.contrib.ondisk import merge_ondisk

from .faiss.build import trained_empty_index
from .faiss.factory import apply_search_params
from .faiss.io import quiet_stdout
from .faiss.source import VectorSource
from .faiss.spec import BuildSpec, TuningSpec
from .faiss.tune import hold_out, tune_search_params

log = logging.getLogger(__name__)

FILL_BYTES = 64 << 20
"""A fill part is written once its codes and ids reach this many bytes (or at the end)."""
IVFDATA_SUFFIX = ".ivfdata"


def ivfdata_name(index_file: str) -> str:
    """``index-000007.ivfdata`` for ``index-000007.faiss``."""
    return Path(index_file).stem + IVFDATA_SUFFIX


def check_ondisk_factory(factory: str) -> None:
    """``ValueError`` unless ``factory`` names an IVF that FAISS can keep on disk (not
    IVF-PQR, not under a refinement)."""
    probe = factory.replace(" ", "")
    if "IVF" not in probe or "PQR" in probe or "Refine" in probe or "RFlat" in probe:
        raise ValueError(f"--on-disk needs an IVF index (IVF...,Flat or IVF...,PQ...), not "
                         f"{factory!r}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fill_parts(index: faiss.Index, source: VectorSource, work: Path, first: int) -> list[str]:
    """Fill ``index`` (empty, trained) from ``source`` in groups of about
    :data:`FILL_BYTES`, writing each group to ``work/fill-NNNNN.faiss`` and emptying
    ``index`` again; returns the file names."""
    ivf = faiss.extract_index_ivf(index)
    per_vector = ivf.code_size + 8
    names: list[str] = []

    def flush() -> None:
        if index.ntotal:
            name = str(work / f"fill-{first + len(names):05d}.faiss")
            faiss.write_index(index, name)
            names.append(name)
            index.reset()

    t0 = time.perf_counter()
    for ids, vectors in source.chunks():
        index.add_with_ids(vectors, ids)
        if index.ntotal * per_vector >= FILL_BYTES:
            flush()
    flush()
    log.info("filled %d vectors into %d parts in %.1f s", source.count, len(names),
             time.perf_counter() - t0)
    return names


def _tuning_view(index: faiss.Index, part_files: list[str]) -> tuple[faiss.Index, list]:
    """A copy of the empty trained ``index`` searching the parts' lists (memory-mapped,
    read-only) as one; the list returned keeps the parts alive while the view is used."""
    parts = [faiss.read_index(name, faiss.IO_FLAG_MMAP) for name in part_files]
    lists = faiss.InvertedListsPtrVector()
    for part in parts:
        lists.push_back(faiss.extract_index_ivf(part).invlists)
    stacked = faiss.HStackInvertedLists(lists.size(), lists.data())
    view = faiss.clone_index(index)
    view_ivf = faiss.extract_index_ivf(view)
    view_ivf.replace_invlists(stacked, True)
    stacked.this.disown()
    total = sum(part.ntotal for part in parts)
    view.ntotal = view_ivf.ntotal = total
    return view, [parts, lists]


def build_ondisk_index(
    index_dir: str | Path,
    source: VectorSource,
    index_file: str,
    build: BuildSpec,
    tuning: TuningSpec,
) -> tuple[faiss.Index, dict[str, float]]:
    """An IVF ``build.factory`` index of ``source`` with its lists in
    ``index_dir/<stem>.ivfdata``.

    ``index_file`` is the name the caller will save the returned index under
    (``index-NNNNNN.faiss``, with :func:`groco.index.faiss.io.save_index`); the
    ``.ivfdata`` beside it is complete and final when this returns. Returns ``(index,
    params)`` like :func:`groco.index.faiss.tune.build_tuned_index`: the same hold-out,
    training sample and tuning, so the lists hold the same vectors under the same ids as
    the in-RAM build of the same factory. ``ValueError`` for a factory that is not an IVF
    (``"auto"`` included: resolve it with ``on_disk=True`` first).
    """
    check_ondisk_factory(build.factory)
    index_dir = Path(index_dir)
    split = hold_out(source, tuning)
    index = trained_empty_index(split.rest, build)
    if faiss.try_extract_index_ivf(index) is None:
        raise ValueError(f"--on-disk needs an IVF index, not {build.factory!r}")
    work = Path(tempfile.mkdtemp(prefix=".ondisk-", suffix=".tmp", dir=index_dir))
    data_tmp = index_dir / f".{ivfdata_name(index_file)}.tmp"
    try:
        part_files = _fill_parts(index, split.rest, work, 0)
        params = None
        if split.held is not None:
            view, keep_alive = _tuning_view(index, part_files)
            params = tune_search_params(view, split, tuning)
            del view, keep_alive
            part_files += _fill_parts(index, split.held, work, len(part_files))
        log.info("merging %d parts into %s", len(part_files), ivfdata_name(index_file))
        t0 = time.perf_counter()
        with quiet_stdout():  # the on-disk lists printf their resizes
            merge_ondisk(index, part_files, str(data_tmp))
        log.info("merged in %.1f s", time.perf_counter() - t0)
        _fsync(data_tmp)
        final = index_dir / ivfdata_name(index_file)
        os.replace(data_tmp, final)
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
        lists.filename = final.name  # a bare name: readers look beside the index file
    finally:
        shutil.rmtree(work, ignore_errors=True)
        data_tmp.unlink(missing_ok=True)
    if params is None:  # nothing held out: tuned on the merged index
        params = tune_search_params(index, split, tuning)
    else:
        apply_search_params(index, params)
    return index, params
