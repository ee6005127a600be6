"""The collection as pages of items: all of it or one folder, in random or folder order
(ids in, ids out; no thumbnails, no SQL here).

A :class:`Collection` holds two arrays, the embedded ids and their folder (label) codes
(12 bytes an image: a million images take 12 MB); a page's paths and hashes are looked up
for its items only. It also answers which ids a label has and how many each label has,
for the label filter of a search and the label counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

ORDERS = ("random", "folder")
"""``random``: a shuffle fixed by a seed (the same seed gives the same pages);
``folder``: folder by folder (files directly in the root first), in index order within
one."""


@dataclass(frozen=True)
class Page:
    """One page of the collection: ``ids`` on it, ``number`` (1-based) of ``pages``, out of
    ``total`` items in the selection."""

    ids: list[int]
    number: int
    pages: int
    total: int

    def describe(self, folder: str | None = None) -> str:
        where = f"folder `{folder}`" if folder else "the collection"
        return f"page {self.number} of {self.pages} · {self.total:,} images in {where}"


class Collection:
    """The embedded items of an index, pageable.

    ``ids``: embedded ids, in index order; ``labels``: each one's folder label (``None``
    for files directly in the images root).
    """

    def __init__(self, ids: np.ndarray, labels: list[str | None]) -> None:
        if len(ids) != len(labels):
            raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
        self.folders: list[str] = sorted({label for label in labels if label is not None})
        code = {label: n + 1 for n, label in enumerate(self.folders)}  # 0: no folder
        self.ids = np.asarray(ids, dtype=np.int64)
        self.codes = np.array([code.get(label, 0) if label is not None else 0
                               for label in labels], dtype=np.int32)
        self._by_folder = np.lexsort((self.ids, self.codes))
        self._ordered = lru_cache(maxsize=16)(self._order)

    def __len__(self) -> int:
        return len(self.ids)

    def check(self, folder: str | None, order: str) -> tuple[str | None, str]:
        """``(folder or None, order)``; ``ValueError`` (one line) for an unknown one."""
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        if folder and folder not in self.folders:
            raise ValueError(f"Unknown folder/label: {folder!r}.")
        return folder or None, order

    def label_counts(self) -> dict[str, int]:
        """How many items each folder label has, by label (files in the root: no label)."""
        counts = np.bincount(self.codes, minlength=len(self.folders) + 1)
        return {label: int(counts[n + 1]) for n, label in enumerate(self.folders)}

    def positions(self, folder: str) -> np.ndarray:
        """Positions (into ``ids``) of the items of ``folder``, ascending; ``ValueError``
        for an unknown folder."""
        self.check(folder, ORDERS[0])
        return np.flatnonzero(self.codes == self.folders.index(folder) + 1)

    def _order(self, folder: str | None, order: str, seed: int) -> np.ndarray:
        """The ids of the selection, in page order."""
        if order == "folder":
            positions = self._by_folder
            if folder is not None:
                positions = positions[self.codes[positions] == self.folders.index(folder) + 1]
            return self.ids[positions]
        chosen = self.ids if folder is None else self.ids[self.positions(folder)]
        return chosen[np.random.default_rng(seed).permutation(len(chosen))]

    def page(self, number: int, per_page: int, folder: str | None = None,
             order: str = "random", seed: int = 0) -> Page:
        """Page ``number`` (1-based; clamped into ``1..pages``) of ``per_page`` items."""
        folder, order = self.check(folder, order)
        if per_page < 1:
            raise ValueError(f"per_page must be >= 1, got {per_page}")
        ordered = self._ordered(folder, order, int(seed) if order == "random" else 0)
        pages = max(1, math.ceil(len(ordered) / per_page))
        number = min(max(1, int(number)), pages)
        start = (number - 1) * per_page
        return Page([int(i) for i in ordered[start:start + per_page]], number, pages,
                    len(ordered))
