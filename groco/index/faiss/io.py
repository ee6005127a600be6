"""Index files and the process around FAISS: atomic save, load (on-disk lists mapped,
search parameters applied), silencing what FAISS's C++ prints, pinning OpenMP threads."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import faiss

from groco.fileio import atomic_path

from .factory import apply_search_params


@contextlib.contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Run the block with FAISS on ``n`` OpenMP threads, then restore the previous count."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def save_index(index: faiss.Index, path: str | os.PathLike[str]) -> None:
    """Write ``index`` to ``path`` atomically (:func:`groco.fileio.atomic_path`).

    Readers see the old file or the new one, never a partial one, and a failed write
    leaves no temporary file behind.
    """
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def load_index(
    path: str | os.PathLike[str], params: Mapping[str, float] | None = None,
    read_only: bool = False,
) -> faiss.Index:
    """Read a CPU index written by :func:`save_index` and apply ``params`` to it.

    ``params`` is what :func:`groco.index.faiss.tune.tune_search_params` returned
    (FAISS also stores efSearch and nprobe in the file; applying them again makes the
    recorded values win). An
    index with on-disk inverted lists (:mod:`groco.index.ondisk`) finds its ``.ivfdata``
    file beside ``path`` (``IO_FLAG_ONDISK_SAME_DIR``: the name stored in the index is a
    bare file name) and memory-maps it rather than reading it; ``read_only`` maps it
    read-only (``IO_FLAG_READ_ONLY``), as searchers do. Its lists are paged in by the
    searches themselves (FAISS's prefetch threads are turned off).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no index file at {path}")
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR | (faiss.IO_FLAG_READ_ONLY if read_only else 0)
    with quiet_stdout():  # FAISS prints the .ivfdata path it switched to on stdout
        index = faiss.read_index(str(path), flags)
    ivf = faiss.try_extract_index_ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
    if isinstance(lists, faiss.OnDiskInvertedLists):
        # FAISS starts ONDISK_PREFETCH_THREADS (32) threads a search to page the probed
        # lists in; page faults serve a query faster (20k x 64, IVF512 nprobe=64 on 2
        # cores: p50 7.7 ms with the threads, in-RAM speed without).
        lists.prefetch_nthread = 0
    apply_search_params(index, params)
    return index


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence what FAISS's C++ code ``printf``s (on-disk lists print file names and
    sizes) by pointing file descriptor 1 at ``/dev/null`` meanwhile; C's and Python's
    buffers are flushed on both sides, so nothing of it reaches ``--json`` output later."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    try:
        saved = os.dup(1)
    except OSError:  # no stdout at all
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
