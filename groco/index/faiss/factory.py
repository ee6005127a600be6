"""FAISS index objects: made from a factory string for cosine search, unwrapped to their
core, told exact or approximate, and set to search parameters.

Every index scores by inner product (:data:`METRIC`) on L2-normalised vectors, which is
cosine similarity. An index that does not carry ids itself (anything but IVF) is wrapped
in ``IndexIDMap2`` (ids plus a reverse map, so ``reconstruct(id)`` works).
"""

from __future__ import annotations

from collections.abc import Mapping

import faiss

METRIC = faiss.METRIC_INNER_PRODUCT
"""The metric of every index: inner product of unit vectors (cosine)."""


def make_index(dim: int, factory: str) -> faiss.Index:
    """An empty ``factory`` index of ``dim`` with :data:`METRIC`; ``ValueError`` (naming the
    factory and FAISS's reason) for an invalid factory string."""
    if not isinstance(factory, str) or not factory.strip():
        raise ValueError(f"factory must be a non-empty FAISS factory string, got {factory!r}")
    try:
        return faiss.index_factory(dim, factory, METRIC)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1]
        raise ValueError(f"invalid FAISS factory string {factory!r} for dim={dim}: {reason}") from e


def unwrap(index: faiss.Index) -> faiss.Index:
    """The innermost index under IDMap / PreTransform / Refine wrappers.

    The result does not own its memory: keep ``index`` alive while using it.
    """
    inner = faiss.downcast_index(index)
    while True:
        if isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
            inner = faiss.downcast_index(inner.index)
        elif isinstance(inner, faiss.IndexRefine):
            inner = faiss.downcast_index(inner.base_index)
        else:
            return inner


def is_exact(index: faiss.Index) -> bool:
    """True when ``index`` searches exactly (a Flat core), so it needs no tuning."""
    return isinstance(unwrap(index), faiss.IndexFlat)


def is_exact_factory(factory: str, dim: int) -> bool:
    """True when ``factory`` makes an exact (Flat) index."""
    return is_exact(make_index(dim, factory))


def with_ids(index: faiss.Index) -> faiss.Index:
    """``index`` if it stores ids itself (IVF, IDMap), else wrapped in ``IndexIDMap2``."""
    top = faiss.downcast_index(index)
    native_ids = faiss.try_extract_index_ivf(index) is not None or isinstance(
        top, (faiss.IndexIDMap, faiss.IndexIDMap2)
    )
    return index if native_ids else faiss.IndexIDMap2(index)


def gpu_wanted(use_gpu: bool | None) -> bool:
    """Whether to use a GPU: ``use_gpu``, or for ``None`` whether FAISS sees one;
    ``ValueError`` for ``True`` when it sees none."""
    ngpu = faiss.get_num_gpus()
    if use_gpu and ngpu == 0:
        raise ValueError("use_gpu=True but FAISS sees no GPU")
    return ngpu > 0 if use_gpu is None else use_gpu


def apply_search_params(index: faiss.Index, params: Mapping[str, float] | None) -> None:
    """Set search parameters such as ``{"efSearch": 64}`` or ``{"nprobe": 16}``.

    Keys are FAISS ``ParameterSpace`` names; ``recall@k`` entries (records of
    :func:`groco.index.faiss.tune.tune_search_params`) are skipped. Raises ``ValueError``
    for a parameter the index does not have.
    """
    if not params:
        return
    space = faiss.ParameterSpace()
    for name, value in params.items():
        if name.startswith("recall@"):
            continue
        try:
            space.set_index_parameter(index, name, float(value))
        except RuntimeError as e:
            raise ValueError(f"cannot set search parameter {name}={value}: {e}") from e
