"""Measure index directories (``groco index eval``): neighbourhood quality, recall, latency.

Labels are the images' first subfolders (:func:`groco.images.label_of_relpath`); files
directly in the images root are unlabelled and take no part in the label metrics. All
from the stored embeddings, so no image is decoded and the encoder is not needed:

- **k-NN top-1** (leave-one-out): each labelled image is classified by the weighted vote
  of its ``k`` nearest *other* labelled images, exact search; the vote is
  :func:`groco.knn.knn_vote` (``w_j = exp(s_j / T)``, ties to the smallest class), the
  protocol of the training monitor.
- **precision@10**: of the 10 neighbours the *index* returns for a labelled image
  (itself excluded), the fraction with its label: what a user of the search sees.
- **mAP@R** (Musgrave, Belongie and Lim, 2020, "A Metric Learning Reality Check"): for a
  labelled query ``q`` with label ``y_q``, ``R_q`` is the number of *other* labelled
  images with that label, and ``rel_q(i) = 1`` when the ``i``-th most similar other
  labelled image (exact cosine search) has label ``y_q``, else 0. Then

      P_q(i)   = (1 / i) * sum_{j <= i} rel_q(j)              precision at rank i
      AP@R(q)  = (1 / R_q) * sum_{i = 1..R_q} rel_q(i) * P_q(i)
      mAP@R    = mean of AP@R(q) over the labelled queries with R_q >= 1

  1 when every image's ``R_q`` nearest others are exactly its class, and unlike
  precision@10 it rewards the order of the whole class, not only the first ten.
- **recall@10**: ``|index top-10 ∩ exact top-10| / 10`` (itself excluded from both).
- **post-processed figures** (``post_*``): where the index post-processes search
  (:mod:`groco.index.expansion`), the same three figures again as its search ranks: each
  query expanded (:meth:`~groco.index.expansion.Expansion.expand`, itself never used),
  k-NN top-1 and mAP@R by exact search over the stored search vectors, precision@10
  through the index's own ranking of its candidate pool. The plain figures are the
  encoder's own vectors.
- **latency**: one query at a time through :func:`groco.index.faiss.query.search`
  (vector in, ids out; embedding the query image is not included), p50/p95/p99.

Up to ``max_queries`` images (a seeded sample, drawn over the files in path order) are
the queries; the bank is always the whole collection.

:func:`evaluate_indexes` measures several indexes *of one collection* (the same images
folder embedded by several encoders, e.g. a trained one beside its baselines) on the
same queries. Indexes of different collections are refused: another images root, or
another set of embedded files (``groco index update`` brings an index level with its
folder), raises :class:`~groco.index.manifest.IndexDirError` naming the difference, so
every row of the table is measured on the same images. No torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import faiss
import numpy as np

from groco.knn import KNN_K, KNN_TEMPERATURE, class_indices, knn_vote

from . import shards
from .dupes import DEFAULT_THRESHOLD
from .expansion import POOL, Expansion
from .faiss.query import recall_at_k, search
from .indexfile import open_index
from .manifest import IndexDirError, read_manifest
from .store import DB_NAME, EMBEDDED, Store

PRECISION_K = 10
SIMS_PER_CHUNK = 1 << 22
"""Similarities held at once by :func:`map_at_r` (float32: 16 MiB)."""


@dataclass(frozen=True)
class EvalReport:
    """Figures of :func:`evaluate_index` (label figures are ``None`` without 2+ classes)."""

    index_dir: str
    count: int
    labelled: int
    classes: int
    queries: int
    k: int
    temperature: float
    knn_top1: float | None
    precision_at_10: float | None
    map_at_r: float | None
    recall_at_10: float
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float
    latency_queries: int
    index_type: str
    search_params: dict[str, float]
    postprocess: str = "none"
    post_knn_top1: float | None = None
    post_precision_at_10: float | None = None
    post_map_at_r: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Collection:
    """One index directory's embedded files in path order (vectors read when measured)."""

    index_dir: Path
    manifest: dict[str, Any]
    paths: list[str]
    ids: np.ndarray
    locations: tuple[np.ndarray, np.ndarray]  # (shards, shard rows)
    labels: np.ndarray  # class index, -1 unlabelled
    classes: list[str]

    def vectors(self) -> np.ndarray:
        return shards.gather(self.index_dir, *self.locations)


def _describe(index_dir: Path) -> _Collection:
    manifest = read_manifest(index_dir)
    with Store(index_dir / DB_NAME, readonly=True) as store:
        rows = sorted(store.iter_rows(EMBEDDED), key=lambda r: r.path)
    if len(rows) < 2:
        raise IndexDirError(f"{index_dir}: need at least 2 indexed images to evaluate")
    classes, labels = class_indices([r.label for r in rows])
    locations = (np.array([r.shard for r in rows], np.int64),
                 np.array([r.shard_row for r in rows], np.int64))
    return _Collection(index_dir, manifest, [r.path for r in rows],
                       np.array([r.id for r in rows], np.int64), locations, labels, classes)


def _not_self(neighbours: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mask keeping, of each row's ``k + 1`` neighbours, the ``k`` that are not ``rows[i]``."""
    keep = neighbours != rows[:, None]
    keep[keep.all(axis=1), -1] = False  # self not found (a duplicate won the tie): drop the last
    return keep


def _without_self(neighbours: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Each row's first ``k`` entries other than ``rows[i]`` (``neighbours`` has ``k + 1``)."""
    return neighbours[_not_self(neighbours, rows)].reshape(len(rows), k)


def _labelled_bank(x: np.ndarray, labels: np.ndarray, queries: np.ndarray):
    """(bank of labelled rows, their labels, bank positions of the labelled queries)."""
    labelled = np.flatnonzero(labels >= 0)
    position = np.full(len(x), -1)
    position[labelled] = np.arange(len(labelled))
    q_rows = position[queries[labels[queries] >= 0]]
    return np.ascontiguousarray(x[labelled]), labels[labelled], q_rows


def _knn_top1(x: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int,
              temperature: float, query_vectors: np.ndarray | None = None) -> float | None:
    """Leave-one-out weighted k-NN accuracy over labelled rows, for query rows ``queries``
    (searched with ``query_vectors[i]`` for ``queries[i]`` when given, else their rows)."""
    bank, bank_labels, q_rows = _labelled_bank(x, labels, queries)
    num_classes = int(labels.max()) + 1
    if num_classes < 2 or len(bank) < 2 or len(q_rows) == 0:
        return None
    k = min(k, len(bank) - 1)
    asked = bank[q_rows] if query_vectors is None else np.ascontiguousarray(
        query_vectors[labels[queries] >= 0])
    sims, found = faiss.knn(asked, bank, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    keep = _not_self(found, q_rows)
    sims, found = sims[keep].reshape(-1, k), found[keep].reshape(-1, k)
    preds = knn_vote(sims, bank_labels[found], num_classes, temperature)
    return float(np.mean(preds == bank_labels[q_rows]))


def map_at_r(bank: np.ndarray, labels: np.ndarray,
             queries: np.ndarray | None = None,
             query_vectors: np.ndarray | None = None) -> float | None:
    """mAP@R (module docstring) of bank rows ``queries`` against the rest of ``bank``.

    ``bank``: ``(n, d)`` unit vectors, all labelled; ``labels``: ``(n,)`` int labels;
    ``queries``: row numbers (default: every row); ``query_vectors[i]``: what row
    ``queries[i]`` is searched with (default: its row). Exact search by inner product; a
    query whose class has no other member is skipped. ``None`` when no query counts.
    """
    labels = np.asarray(labels)
    queries = np.arange(len(bank)) if queries is None else np.asarray(queries)
    asked = bank[queries] if query_vectors is None else np.asarray(query_vectors)
    sizes = np.bincount(labels)
    r = sizes[labels[queries]] - 1
    queries, r, asked = queries[r >= 1], r[r >= 1], asked[r >= 1]
    if len(queries) == 0:
        return None
    chunk = max(1, SIMS_PER_CHUNK // len(bank))
    total = 0.0
    for start in range(0, len(queries), chunk):
        q, rq = queries[start:start + chunk], r[start:start + chunk]
        top = int(rq.max())
        sims = asked[start:start + chunk] @ bank.T
        sims[np.arange(len(q)), q] = -np.inf  # never itself
        part = np.argpartition(-sims, top - 1, axis=1)[:, :top]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        ranked = np.take_along_axis(part, order, axis=1)  # (c, top), most similar first
        rel = labels[ranked] == labels[q][:, None]
        rank = np.arange(1, top + 1)
        within = rank[None, :] <= rq[:, None]
        precision = np.cumsum(rel, axis=1) / rank
        total += float((((rel & within) * precision).sum(axis=1) / rq).sum())
    return total / len(queries)


def _latencies_ms(index: faiss.Index, sample: np.ndarray) -> list[float]:
    for q in sample[: min(10, len(sample))]:  # warm-up
        search(index, q, PRECISION_K)
    timings = []
    for q in sample:
        t0 = perf_counter()
        search(index, q, PRECISION_K)
        timings.append((perf_counter() - t0) * 1000)
    return timings


def _evaluate(c: _Collection, k: int, temperature: float, max_queries: int,
              latency_queries: int, seed: int) -> EvalReport:
    index = open_index(c.index_dir, c.manifest)
    x, labels = c.vectors(), c.labels
    n = len(x)
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(n, min(max_queries, n), replace=False))
    labelled_q = labels[queries] >= 0
    has_labels = len(c.classes) >= 2 and bool(labelled_q.any())

    knn_top1 = _knn_top1(x, labels, queries, k, temperature) if has_labels else None
    mean_ap = None
    if has_labels:
        bank, bank_labels, q_rows = _labelled_bank(x, labels, queries)
        mean_ap = map_at_r(bank, bank_labels, q_rows)

    top = min(PRECISION_K, n - 1)
    exact = _without_self(faiss.knn(x[queries], x, top + 1,
                                    metric=faiss.METRIC_INNER_PRODUCT)[1], queries, top)
    id_to_row = {int(i): r for r, i in enumerate(c.ids)}
    found = search(index, x[queries], top + 1)[1]
    found_rows = np.vectorize(lambda i: id_to_row.get(int(i), -1), otypes=[np.int64])(found)
    approx = _without_self(found_rows, queries, top)
    recall = recall_at_k(approx, exact, top)

    precision = None
    if has_labels:
        neighbour_labels = np.where(approx >= 0, labels[approx], -2)
        same = neighbour_labels[labelled_q] == labels[queries][labelled_q][:, None]
        precision = float(same.mean())

    sample = x[rng.choice(n, latency_queries, replace=n < latency_queries)]
    p50, p95, p99 = np.percentile(_latencies_ms(index, sample), [50, 95, 99])
    expansion = Expansion.open(c.index_dir, c.manifest)
    post = (_post_figures(c, x, queries, index, expansion, k, temperature)
            if expansion is not None and has_labels else {})
    return EvalReport(
        index_dir=str(c.index_dir), count=n, labelled=int((labels >= 0).sum()),
        classes=len(c.classes), queries=len(queries), k=k, temperature=temperature,
        knn_top1=knn_top1, precision_at_10=precision, map_at_r=mean_ap,
        recall_at_10=round(recall, 4), latency_ms_p50=float(p50),
        latency_ms_p95=float(p95), latency_ms_p99=float(p99),
        latency_queries=latency_queries, index_type=c.manifest["index_type"],
        search_params=c.manifest["search_params"],
        postprocess="none" if expansion is None else expansion.settings.name, **post,
    )


def _post_figures(c: _Collection, x: np.ndarray, queries: np.ndarray, index: faiss.Index,
                  expansion: Expansion, k: int, temperature: float) -> dict[str, float | None]:
    """The ``post_*`` figures (module docstring) of query rows ``queries``."""
    labels = c.labels
    _, d = expansion.search_vectors(c.ids)
    scores, pools = search(index, x[queries], min(POOL + 1, len(x)))
    expanded = np.stack([expansion.expand(x[r], pool, int(c.ids[r]))
                         for r, pool in zip(queries, pools, strict=True)])
    row_of = {int(i): r for r, i in enumerate(c.ids)}
    same = []
    for r, q, s, pool in zip(queries, expanded, scores, pools, strict=True):
        if labels[r] < 0:
            continue
        ranked = expansion.rank(q, s, pool, DEFAULT_THRESHOLD)[1]
        first = [row_of[int(i)] for i in ranked if int(i) != int(c.ids[r])][:PRECISION_K]
        same.extend(labels[first] == labels[r])
    bank, bank_labels, q_rows = _labelled_bank(d, labels, queries)
    return {
        "post_knn_top1": _knn_top1(d, labels, queries, k, temperature, expanded),
        "post_precision_at_10": float(np.mean(same)) if same else None,
        "post_map_at_r": map_at_r(bank, bank_labels, q_rows,
                                  expanded[labels[queries] >= 0]),
    }


def _check_same_collection(first: _Collection, other: _Collection) -> None:
    a, b = first.manifest["images_root"], other.manifest["images_root"]
    if a != b:
        raise IndexDirError(f"cannot compare {other.index_dir} with {first.index_dir}: they "
                            f"index different folders ({b} vs {a})")
    if other.paths != first.paths:
        only = sorted(set(other.paths) ^ set(first.paths))
        raise IndexDirError(
            f"cannot compare {other.index_dir} with {first.index_dir}: they hold different "
            f"files of {a} ({len(other.paths)} vs {len(first.paths)} embedded, e.g. "
            f"{only[0]!r} in one only); run `groco index update` on both")


def _check_settings(k: int, temperature: float, max_queries: int, latency_queries: int) -> None:
    if k < 1 or temperature <= 0 or max_queries < 1 or latency_queries < 1:
        raise ValueError("k, max_queries and latency_queries must be >= 1, temperature > 0")


def evaluate_indexes(
    index_dirs: Sequence[str | Path],
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    max_queries: int = 10_000,
    latency_queries: int = 200,
    seed: int = 0,
) -> list[EvalReport]:
    """Evaluate several indexes of one collection on the same queries, in the order given.

    Refused with :class:`IndexDirError` before anything is measured when two of them
    index different folders or different sets of files (module docstring).
    """
    _check_settings(k, temperature, max_queries, latency_queries)
    if not index_dirs:
        raise ValueError("no index to evaluate")
    collections = [_describe(Path(d)) for d in index_dirs]
    for other in collections[1:]:
        _check_same_collection(collections[0], other)
    return [_evaluate(c, k, temperature, max_queries, latency_queries, seed)
            for c in collections]


def evaluate_index(
    index_dir: str | Path,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    max_queries: int = 10_000,
    latency_queries: int = 200,
    seed: int = 0,
) -> EvalReport:
    """Evaluate ``index_dir`` (see the module docstring); ``k``/``temperature``: the k-NN vote."""
    return evaluate_indexes([index_dir], k, temperature, max_queries, latency_queries, seed)[0]
