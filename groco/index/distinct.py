"""Distinct results: near copies collapsed, so each group of near copies shows once.

Greedy over the candidates in their ranked order: a candidate whose stored embedding has
cosine ``>= threshold`` (the duplicate threshold, :data:`groco.index.dupes.DEFAULT_THRESHOLD`)
with an already kept result is counted as one of that result's ``copies`` and hidden;
otherwise it is kept, until ``k`` are kept. Candidates after the ``k``-th kept one still
count as copies of a kept result, never as new results. Each group is therefore shown by
its best-ranked member, and byte-identical files (identical embeddings) always collapse.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .search import Result

POOL_PER_RESULT = 8
"""Candidates searched per asked result (at least the post-processing pool): fewer than
``k`` distinct results come back only when that many candidates hold fewer groups."""


def pool_size(k: int) -> int:
    """Candidates to search for ``k`` distinct results."""
    return max(k * POOL_PER_RESULT, 100)


def collapse_near_copies(results: list[Result], vectors: np.ndarray, k: int,
                         threshold: float) -> list[Result]:
    """The first ``k`` distinct ``results`` (ranked best first; ``vectors`` their ``(n,
    dim)`` unit embeddings), each with ``copies`` set to the near copies hidden behind it."""
    kept: list[int] = []
    copies: list[int] = []
    for position in range(len(results)):
        if kept:
            similarity = vectors[kept] @ vectors[position]
            nearest = int(np.argmax(similarity))
            if similarity[nearest] >= threshold:
                copies[nearest] += 1
                continue
        if len(kept) < k:
            kept.append(position)
            copies.append(0)
    return [dataclasses.replace(results[i], copies=n) for i, n in zip(kept, copies,
                                                                     strict=True)]
