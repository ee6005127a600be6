"""Weighted k-nearest-neighbour classifier on embeddings (NumPy only).

The evaluation protocol of InstDisc (Wu et al., 2018, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination"), used by DINO (Caron et al., 2021) and GroCo to
measure the quality of a representation's local neighbourhood. For L2-normalised
features, a query ``q`` and a bank ``B`` (rows ``b_j``, labels ``y_j``):

    s_j      = q . b_j                                  (cosine similarity)
    N_k(q)   = indices of the k largest s_j
    w_j      = exp(s_j / T)                              (T: temperature)
    score_c  = sum_{j in N_k(q), y_j = c} w_j
    y_hat    = argmax_c score_c

Ties between classes go to the smallest class index. Used as a training monitor and by
``groco index eval``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KNN_K = 20
"""Neighbours in the vote: the protocol's k (InstDisc, DINO, GroCo)."""
KNN_TEMPERATURE = 0.07
"""The vote's temperature T: the protocol's value (InstDisc, DINO, GroCo)."""


def _as_float_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, dim), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return x


def weighted_knn_predict(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    query_feats: np.ndarray,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    num_classes: int | None = None,
    batch_size: int = 1024,
    exclude_self: bool = False,
) -> np.ndarray:
    """Predict a class for each query row by the weighted k-NN vote (module docstring).

    Args:
        train_feats: ``(n, d)`` bank of L2-normalised features.
        train_labels: ``(n,)`` integer labels in ``0..num_classes-1``.
        query_feats: ``(m, d)`` L2-normalised query features.
        k: neighbours per query (capped at the bank size).
        temperature: ``T`` in ``w = exp(s / T)``.
        num_classes: number of classes; default ``max(train_labels) + 1``.
        batch_size: queries per chunk; memory is ``O(batch_size * n)``.
        exclude_self: leave-one-out when the queries are the bank itself
            (``m == n``): query ``i`` never counts bank row ``i`` as a neighbour.

    Returns:
        ``(m,)`` int64 predicted labels.
    """
    bank = _as_float_matrix(train_feats, "train_feats")
    queries = _as_float_matrix(query_feats, "query_feats")
    labels = np.asarray(train_labels)
    n, m = bank.shape[0], queries.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"train_labels must have shape ({n},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"train_labels must be integers, got {labels.dtype}")
    if bank.shape[1] != queries.shape[1]:
        raise ValueError(f"feature dims differ: bank {bank.shape[1]}, queries {queries.shape[1]}")
    if k < 1 or temperature <= 0 or batch_size < 1:
        raise ValueError("k and batch_size must be >= 1 and temperature > 0")
    if exclude_self and m != n:
        raise ValueError(f"exclude_self needs the queries to be the bank ({m} != {n} rows)")
    k = min(k, n - int(exclude_self))
    if k < 1:
        raise ValueError(f"the bank has too few rows ({n}) for a k-NN vote")
    if labels.min() < 0:
        raise ValueError("train_labels must be >= 0 (drop unlabelled rows first)")
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.max() >= num_classes:
        raise ValueError(f"a label is >= num_classes ({num_classes})")

    dtype = np.result_type(bank.dtype, queries.dtype, np.float32)
    bank = bank.astype(dtype, copy=False)
    labels = labels.astype(np.int64, copy=False)
    preds = np.empty(m, dtype=np.int64)
    for start in range(0, m, batch_size):
        q = queries[start : start + batch_size].astype(dtype, copy=False)
        b = q.shape[0]
        sims = q @ bank.T  # (b, n)
        rows = np.arange(b)
        if exclude_self:
            sims[rows, start + rows] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (b, k), unordered
        top_sims = np.take_along_axis(sims, top, axis=1)
        preds[start : start + b] = knn_vote(top_sims, labels[top], num_classes, temperature)
    return preds


def knn_vote(
    neighbour_sims: np.ndarray,
    neighbour_labels: np.ndarray,
    num_classes: int,
    temperature: float = KNN_TEMPERATURE,
) -> np.ndarray:
    """The weighted vote (module docstring) on neighbours already found.

    Args:
        neighbour_sims: ``(m, k)`` similarities ``s_j`` of each query's ``k`` neighbours
            (any order).
        neighbour_labels: ``(m, k)`` their integer labels in ``0..num_classes-1``.
        num_classes: number of classes.
        temperature: ``T`` in ``w = exp(s / T)``.

    Returns:
        ``(m,)`` int64 ``argmax_c score_c`` (ties to the smallest class index).
    """
    sims = np.asarray(neighbour_sims)
    labels = np.asarray(neighbour_labels, dtype=np.int64)
    if sims.ndim != 2 or labels.shape != sims.shape:
        raise ValueError(f"need (m, k) sims and labels of one shape, got {sims.shape} and "
                         f"{labels.shape}")
    m = len(sims)
    # exp((s - max s) / T): the per-row factor exp(-max/T) does not change the argmax
    # and keeps exp from overflowing on unnormalised inputs.
    weights = np.exp((sims - sims.max(axis=1, keepdims=True)) / temperature)
    flat = (np.arange(m)[:, None] * num_classes + labels).ravel()
    scores = np.bincount(flat, weights=weights.ravel(), minlength=m * num_classes)
    return scores.reshape(m, num_classes).argmax(axis=1).astype(np.int64)


def class_indices(names: Sequence[str | None], classes: Sequence[str] | None = None
                  ) -> tuple[list[str], np.ndarray]:
    """Class names to integer labels: ``(classes, labels)``.

    ``classes`` is the sorted list of distinct names other than ``None``, or the given
    ``classes`` (e.g. a training run's, to label an evaluation folder alike); ``labels[i]``
    is the index of ``names[i]`` in it, ``-1`` for ``None`` (unlabelled) or a name not in
    the given ``classes``, int64. The one label-to-class mapping of groco (training data,
    the k-NN monitor, ``index eval``).
    """
    if classes is None:
        classes = sorted({name for name in names if name is not None})
    classes = list(classes)
    lookup = {name: i for i, name in enumerate(classes)}
    labels = np.fromiter((lookup.get(name, -1) if name is not None else -1 for name in names),
                         dtype=np.int64, count=len(names))
    return classes, labels


def knn_accuracy(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    query_feats: np.ndarray,
    query_labels: np.ndarray,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    num_classes: int | None = None,
    batch_size: int = 1024,
    exclude_self: bool = False,
) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of :func:`weighted_knn_predict` on the queries."""
    query_labels = np.asarray(query_labels)
    if query_labels.shape != (np.asarray(query_feats).shape[0],):
        raise ValueError("query_labels must have one label per query row")
    if query_labels.size == 0:
        raise ValueError("no queries to evaluate")
    preds = weighted_knn_predict(
        train_feats,
        train_labels,
        query_feats,
        k=k,
        temperature=temperature,
        num_classes=num_classes,
        batch_size=batch_size,
        exclude_self=exclude_self,
    )
    return float(np.mean(preds == query_labels))
