"""Train and fill a FAISS index from a :class:`~groco.index.faiss.source.VectorSource`.

One build routine, :func:`build_index`: resolve the :class:`~groco.index.faiss.spec.BuildSpec`'s
factory (``"auto"`` by size and memory), train an empty index on a uniform sample of the
source (:func:`trained_empty_index`), then add every vector under its id one chunk at a time
(:func:`fill_index`). Memory is the index plus one chunk and the training sample, never
every vector. A GPU, where FAISS sees one, runs the k-means of IVF training; the index
built is always a CPU index (the one a searcher loads, and the one tuned).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import faiss

from .choose import factory_for
from .factory import gpu_wanted, make_index, with_ids
from .source import ArraySource, VectorSource, sample_positions
from .spec import BuildSpec

log = logging.getLogger(__name__)

TRAIN_POINTS_PER_CENTROID = 64
"""Default training sample per IVF centroid (the guideline's range is 30..256)."""
MIN_TRAIN_SIZE = 65_536
"""Default training sample floor: what FAISS's PQ/OPQ training subsample to (256 * 256)."""


def resolved(spec: BuildSpec, source: VectorSource, on_disk: bool = False) -> BuildSpec:
    """``spec`` with ``"auto"`` replaced by the factory chosen for the whole ``source``
    (:func:`groco.index.faiss.choose.factory_for`)."""
    factory = factory_for(spec, source.count, source.dim, on_disk)
    if factory != spec.factory:
        log.info("auto index for n=%d, dim=%d: %s", source.count, source.dim, factory)
    return replace(spec, factory=factory)


def _train(index: faiss.Index, source: VectorSource, train_size: int | None, gpu: bool,
           seed: int) -> None:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and source.count < ivf.nlist:
        raise ValueError(f"{ivf.nlist} IVF lists need at least that many vectors, got "
                         f"{source.count}")
    if train_size is None:
        nlist = ivf.nlist if ivf is not None else 0
        train_size = max(TRAIN_POINTS_PER_CENTROID * nlist, MIN_TRAIN_SIZE)
    if isinstance(source, ArraySource) and source.count <= train_size:
        sample = source.vectors  # no copy
    else:
        sample = source.take(sample_positions(source.count, train_size, seed))[1]
    clustering_index = None
    if ivf is not None:
        # k-means assigns with an exact flat index (on the GPU when there is one) rather
        # than through the coarse quantizer itself, which for HNSW would rebuild a graph
        # every iteration.
        clustering_index = faiss.IndexFlat(ivf.d, ivf.metric_type)
        if gpu:
            try:
                clustering_index = faiss.index_cpu_to_all_gpus(clustering_index)
            except RuntimeError as e:
                log.warning("k-means on CPU, GPU clustering index failed: %s", e)
        ivf.clustering_index = clustering_index
        if isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ):
            # Polysemous training (on by default) reorders PQ codes for Hamming-distance
            # filtering, which groco does not use; it takes minutes of simulated annealing.
            faiss.downcast_index(ivf).do_polysemous_training = False
    t0 = time.perf_counter()
    try:
        index.train(sample)
    finally:
        if ivf is not None:
            ivf.clustering_index = None
    log.info("trained on %d vectors in %.1f s", len(sample), time.perf_counter() - t0)


def trained_empty_index(source: VectorSource, spec: BuildSpec) -> faiss.Index:
    """An empty index of ``spec.factory`` (not ``"auto"``), trained on a sample of ``source``.

    The sample is ``spec.train_size`` positions drawn uniformly with ``spec.seed``
    (default ``max(64 * K, 65536)`` for ``K`` IVF lists, inside the guideline's 30..256 a
    list), read from the source without loading the rest. Indices without native ids are
    wrapped in ``IndexIDMap2``. Fill it with :func:`fill_index` (or, for on-disk lists,
    :mod:`groco.index.ondisk`).
    """
    gpu = gpu_wanted(spec.use_gpu)
    index = make_index(source.dim, spec.factory)
    if not index.is_trained:
        _train(index, source, spec.train_size, gpu, spec.seed)
    return with_ids(index)


def fill_index(index: faiss.Index, source: VectorSource) -> faiss.Index:
    """Add every vector of ``source`` to ``index`` under its id, one chunk at a time."""
    t0 = time.perf_counter()
    for ids, vectors in source.chunks():
        index.add_with_ids(vectors, ids)
    log.info("added %d vectors in %.1f s", source.count, time.perf_counter() - t0)
    return index


def build_index(source: VectorSource, spec: BuildSpec) -> faiss.Index:
    """A cosine index of every vector of ``source`` under its id, built as ``spec`` says.

    ``spec.factory`` is a FAISS ``index_factory`` string used as given (with
    ``METRIC_INNER_PRODUCT``; ``ValueError`` for an invalid one) or ``"auto"``
    (:func:`resolved`). Returns a trained CPU index with every vector added: IVF-based
    indices carry the ids natively, others are wrapped in ``IndexIDMap2``. Search
    parameters are FAISS's defaults; :func:`groco.index.faiss.tune.build_tuned_index`
    builds and tunes. Arrays enter as :class:`~groco.index.faiss.source.ArraySource`.
    """
    spec = resolved(spec, source)
    return fill_index(trained_empty_index(source, spec), source)
