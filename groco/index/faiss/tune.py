"""Search parameters tuned to a recall target on queries the searched index does not hold.

One procedure serves every index groco writes: in-RAM builds (:func:`build_tuned_index`),
on-disk builds (:mod:`groco.index.ondisk`) and in-place updates (:func:`retune`):

1. :func:`hold_out` sets ``m = min(n_queries, n // 10)`` positions of the collection
   aside, drawn with the :class:`~groco.index.faiss.spec.TuningSpec`'s seed (none when
   ``m <= k``, or for an exact index);
2. the index searched while tuning holds every other vector (``split.rest``): a build
   fills only those, the on-disk build searches a view of their parts, an update removes
   the held-out ids from its index;
3. :func:`tune_search_params` raises the search effort until recall@k of the held-out
   vectors as queries, against exact search over ``split.rest``, reaches the target;
4. the held-out vectors are added back: the index holds every vector, tuned.

The held-out queries are members of the collection that the searched index has not seen,
so the estimate is unbiased (recall on new images of the same collection). With too few
vectors to hold out ``k + 1`` queries, queries are made from the indexed vectors
(:func:`tuning_queries`, an estimate that errs low); an approximate index of ``k`` vectors
or fewer is left untuned (``{"recall@k": nan}``); an exact (Flat) index gives
``{"recall@k": 1.0}`` without measuring. Tuning aims at recall, not at a latency budget
(autofaiss tunes to latency and can silently drop recall).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import faiss
import numpy as np

from .build import build_index, resolved
from .factory import apply_search_params, is_exact, is_exact_factory, unwrap
from .query import exact_knn_source, query_recalls
from .source import VectorSource
from .spec import BuildSpec, TuningSpec

log = logging.getLogger(__name__)

EF_SEARCH_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
"""efSearch values :func:`tune_search_params` tries for HNSW, in order."""
TUNING_Z = 2.0
"""Standard errors the measured recall must clear the target by (one-sided ~98%)."""


@dataclass(frozen=True)
class Split:
    """A collection split for tuning: the searched index holds ``rest``; ``held`` are the
    queries (``None``: nothing held out, ``rest`` is the whole collection)."""

    rest: VectorSource
    held: VectorSource | None = None


def hold_out(source: VectorSource, spec: TuningSpec, exact: bool = False) -> Split:
    """``source`` split into the vectors to index and ``min(n_queries, n // 10)`` held-out
    queries drawn with ``spec.seed``; nothing is held out when that is ``<= k`` or when the
    index is ``exact``."""
    n = source.count
    m = min(spec.n_queries, n // 10)
    if exact or m <= spec.k:
        return Split(source)
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(spec.seed).choice(n, m, replace=False)] = True
    return Split(source.subset(~held), source.subset(held))


def every_vector(source: VectorSource) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, vectors)`` of every position of ``source`` (for the held-out few)."""
    ids, vectors = source.take(np.arange(source.count))
    return ids, np.ascontiguousarray(vectors)


def tuning_queries(source: VectorSource, spec: TuningSpec) -> np.ndarray:
    """Held-out-like queries made from ``spec.n_queries`` sampled indexed (unit) vectors.

    For each sampled ``v`` with nearest other indexed vector at distance ``r``, the query
    is ``normalize(v + r * g)`` with ``g`` a random unit direction: a new vector whose
    nearest indexed neighbour is as far as a typical vector's is. Querying with ``v``
    itself (leave-one-out) over-estimates recall, because the graph or list holding
    ``v`` leads straight to its neighbours; this estimate errs low instead. Measured with
    benchmarks/index.py's generator (50k x 384, 2000 clusters, intrinsic dim 32, spread
    1.5; HNSW32 at efSearch 16/24/32/48/64): fresh queries 0.906/0.961/0.983/0.989/0.994,
    this estimate 0.849/0.916/0.948/0.974/0.983, leave-one-out 0.987/0.993/0.995/0.996/
    0.997. Used only when the collection is too small to hold queries out.
    """
    rng = np.random.default_rng(spec.seed)
    rows = rng.choice(source.count, min(spec.n_queries, source.count), replace=False)
    v = np.ascontiguousarray(source.take(np.sort(rows))[1])
    sims = exact_knn_source(v, source, 2)[0][:, 1]  # column 0 is v itself (or a duplicate)
    r = np.sqrt(np.clip(2.0 - 2.0 * sims, 0.0, None)).astype(np.float32)
    g = rng.standard_normal(v.shape, dtype=np.float32)
    faiss.normalize_L2(g)
    q = v + r[:, None] * g
    faiss.normalize_L2(q)
    return q


def _nprobe_steps(nlist: int) -> list[int]:
    steps, p = [], 1
    while p < nlist:
        steps += [p, p * 3 // 2] if p >= 2 else [p]
        p *= 2
    return sorted({s for s in steps if s < nlist} | {nlist})


def _trials(index: faiss.Index, k: int) -> list[dict[str, float]]:
    """The settings :func:`tune_search_params` tries, in rising effort."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        hnsw_quantizer = isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)
        trials = []
        for p in _nprobe_steps(ivf.nlist):
            params = {"nprobe": float(p)}
            if hnsw_quantizer:
                params["quantizer_efSearch"] = float(max(64, 2 * p))
            trials.append(params)
        return trials
    if isinstance(unwrap(index), faiss.IndexHNSW):
        return [{"efSearch": float(ef)} for ef in EF_SEARCH_STEPS if ef >= k]
    return [{}]


def tune_search_params(index: faiss.Index, split: Split, spec: TuningSpec) -> dict[str, float]:
    """Raise the search effort of ``index`` (holding exactly ``split.rest``) until
    recall@k reaches ``spec.target_recall``; leave it applied.

    Queries are the held-out vectors ``split.held``, or :func:`tuning_queries` when none
    are held out (module docstring). The ground truth is an exact inner-product search
    over ``split.rest``, streamed chunk by chunk. Recall@k =
    ``|approx top-k ∩ exact top-k| / k`` averaged over queries.

    The knob rises through fixed steps, each set through ``faiss.ParameterSpace``:
    ``efSearch`` in ``EF_SEARCH_STEPS`` for HNSW, ``nprobe`` in 1, 2, 3, 4, 6, 8, 12 ...
    up to ``nlist`` for IVF (with ``quantizer_efSearch = max(64, 2 * nprobe)`` for an
    HNSW coarse quantizer). The first value whose recall minus ``TUNING_Z`` (2) standard
    errors over the queries reaches the target is kept, so that sampling noise in the
    estimate (about 0.003 with 1000 queries) does not land just below the target; if
    none does, the last is kept and a warning logged (compressed indices can top out
    below it). The returned recall is the measured mean.

    Returns the parameters and the measured recall, e.g. ``{"efSearch": 64,
    "recall@10": 0.97}`` or ``{"nprobe": 16, "recall@10": 0.96}``; exact indices give
    ``{"recall@10": 1.0}``, an approximate index of ``k`` vectors or fewer
    ``{"recall@10": nan}``; others without a knob give their measured recall alone.
    ``ValueError`` when the index does not hold as many vectors as ``split.rest``.
    """
    key, k = spec.key, spec.k
    if is_exact(index):
        return {key: 1.0}
    rest = split.rest
    if index.ntotal != rest.count:
        raise ValueError(f"the index holds {index.ntotal} vectors, the source {rest.count}")
    if split.held is not None:
        queries = every_vector(split.held)[1]
    elif rest.count > k:
        queries = tuning_queries(rest, spec)
    else:
        log.info("%d vectors: too few to measure %s, search parameters untuned",
                 rest.count, key)
        return {key: math.nan}
    exact = exact_knn_source(queries, rest, k)[1]
    for params in _trials(index, k):
        apply_search_params(index, params)
        per_query = query_recalls(index.search(queries, k)[1], exact, k)
        sem = per_query.std(ddof=1) / np.sqrt(len(per_query)) if len(per_query) > 1 else 0.0
        recall = float(per_query.mean())
        log.debug("%s -> %s=%.4f (lower bound %.4f)", params, key, recall,
                  recall - TUNING_Z * sem)
        if recall - TUNING_Z * sem >= spec.target_recall:
            break
    else:
        if params:
            log.warning("%s=%.4f < target %.2f at the largest setting %s",
                        key, recall, spec.target_recall, params)
    result = {name: int(v) for name, v in params.items()}
    result[key] = round(recall, 4)
    return result


def build_tuned_index(source: VectorSource, build: BuildSpec,
                      tuning: TuningSpec) -> tuple[faiss.Index, dict[str, float]]:
    """An index of every vector of ``source``, built as ``build`` says and tuned as
    ``tuning`` says: ``(index, params)`` with the parameters applied.

    ``"auto"`` is resolved for the whole collection first; then the procedure of the
    module docstring: hold out, build on the rest, tune, add the held-out vectors back
    (adding them grows the index by at most a tenth). Memory: the index plus one chunk,
    the training sample and the held-out queries.
    """
    build = resolved(build, source)
    split = hold_out(source, tuning, exact=is_exact_factory(build.factory, source.dim))
    index = build_index(split.rest, build)
    params = tune_search_params(index, split, tuning)
    if split.held is not None:
        held_ids, held_x = every_vector(split.held)
        index.add_with_ids(held_x, held_ids)
    return index, params


def retune(index: faiss.Index, source: VectorSource, tuning: TuningSpec) -> dict[str, float]:
    """Tune ``index``, which holds every vector of ``source`` and can remove vectors
    (Flat, IVF), exactly as a fresh build of ``source`` is tuned: the held-out vectors of
    :func:`hold_out` are removed, :func:`tune_search_params` runs with them as queries,
    and they are added back under their ids. Returns the parameters (applied)."""
    split = hold_out(source, tuning, exact=is_exact(index))
    if split.held is None:
        return tune_search_params(index, split, tuning)
    held_ids, held_x = every_vector(split.held)
    index.remove_ids(held_ids)
    params = tune_search_params(index, split, tuning)
    index.add_with_ids(held_x, held_ids)
    return params
