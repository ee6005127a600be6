"""Label-free post-processing of an index's vectors: centring, database-side augmentation
(DBA) and alpha-query expansion (alpha-QE).

With ``x_i`` the encoder's unit vectors of the collection, ``q`` a query's:

- **centring**: ``mu = mean_i x_i``; every vector becomes ``c(v) = (v - mu) / |v - mu|``.
  It removes the direction every image of the collection shares, so cosine similarity
  measures what tells images apart.
- **DBA** (Arandjelovic & Zisserman, CVPR 2012; with alpha weights, Radenovic et al.,
  TPAMI 2018): each stored vector is replaced by the weighted mean of itself and its
  ``k`` nearest neighbours ``N_k(i)`` (after centring),
  ``d_i = normalise(c_i + sum_{j in N_k(i)} max(c_i . c_j, 0)^alpha c_j)``.
- **alpha-QE**: a query is searched, then replaced by the weighted mean of itself and
  its ``k`` best results among the stored vectors,
  ``q' = normalise(c(q) + sum_{j in top_k(q)} max(c(q) . d_j, 0)^alpha d_j)``,
  and searched again.

Everything is fitted on the collection alone: no labels, no queries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

ALPHA = 3.0
Neighbours = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
"""``(queries, k) -> (similarities, positions)``, each ``(len(queries), k)``, best first;
position ``-1`` where there are fewer than ``k`` vectors."""


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def exact_neighbours(stored: np.ndarray) -> Neighbours:
    """Exact inner-product neighbours among ``stored`` (FAISS flat search, all cores)."""
    import faiss

    index = faiss.IndexFlatIP(stored.shape[1])
    index.add(np.ascontiguousarray(stored, dtype=np.float32))

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    return search


def weighted_mean(own: np.ndarray, sims: np.ndarray, others: np.ndarray,
                  alpha: float = ALPHA) -> np.ndarray:
    """``normalise(own_i + sum_j max(s_ij, 0)^alpha others_ij)``.

    ``own`` ``(n, d)``, ``sims`` ``(n, k)``, ``others`` ``(n, k, d)``; a missing
    neighbour has similarity ``-inf`` or ``nan`` (weight 0).
    """
    weights = np.where(np.isfinite(sims), np.maximum(sims, 0.0), 0.0) ** alpha
    return unit(own + np.einsum("nk,nkd->nd", weights.astype(np.float32), others))


@dataclass(frozen=True)
class Postprocess:
    """Which post-processing an index applies (all off: the encoder's own vectors)."""

    centre: bool = False
    dba_k: int = 0
    qe_k: int = 0
    alpha: float = ALPHA

    def __post_init__(self) -> None:
        if self.dba_k < 0 or self.qe_k < 0:
            raise ValueError("dba_k and qe_k must be >= 0")
        if self.alpha < 0:
            raise ValueError("alpha must be >= 0")

    @property
    def active(self) -> bool:
        return self.centre or self.dba_k > 0 or self.qe_k > 0

    @property
    def name(self) -> str:
        """The short form :meth:`parse` reads, e.g. ``centre+dba3`` (``none``: all off)."""
        parts = (["centre"] if self.centre else []) + (
            [f"dba{self.dba_k}"] if self.dba_k else []) + (
            [f"qe{self.qe_k}"] if self.qe_k else [])
        return "+".join(parts) or "none"

    @classmethod
    def parse(cls, text: str) -> Postprocess:
        """``none`` or ``+``-joined parts: ``centre``, ``dbaK`` (DBA with K neighbours),
        ``qeK`` (alpha-QE with K results), e.g. ``centre+dba3+qe3``. ``ValueError``
        naming the part it cannot read."""
        centre, dba_k, qe_k = False, 0, 0
        for part in text.strip().lower().split("+"):
            if part == "none":
                continue
            if part in ("centre", "center"):
                centre = True
            elif part.startswith("dba") and part[3:].isdigit():
                dba_k = int(part[3:])
            elif part.startswith("qe") and part[2:].isdigit():
                qe_k = int(part[2:])
            else:
                raise ValueError(f"post-processing {text!r}: cannot read {part!r} (use none, "
                                 "or centre, dbaK, qeK joined by +, e.g. centre+dba3)")
        return cls(centre=centre, dba_k=dba_k, qe_k=qe_k)

    def describe(self) -> str:
        parts = (["centring"] if self.centre else []) + (
            [f"DBA k={self.dba_k}"] if self.dba_k else []) + (
            [f"alpha-QE k={self.qe_k}"] if self.qe_k else [])
        return ", ".join(parts) or "none"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Postprocess:
        return cls(**(data or {}))

    def fit(self, vectors: np.ndarray) -> Fitted:
        """The transform for a collection whose unit vectors are ``vectors``."""
        mean = unit(vectors).mean(axis=0) if self.centre else None
        return Fitted(self, mean)


@dataclass(frozen=True)
class Fitted:
    """A :class:`Postprocess` with its collection's mean (``None`` without centring)."""

    settings: Postprocess
    mean: np.ndarray | None

    def centred(self, x: np.ndarray) -> np.ndarray:
        """``c(x)``: unit rows, centred on the collection's mean when centring is on."""
        x = unit(x)
        return x if self.mean is None else unit(x - self.mean)

    def stored(self, vectors: np.ndarray, neighbours: Neighbours | None = None,
               rows: np.ndarray | None = None) -> np.ndarray:
        """The vectors the index searches, for the collection's ``vectors`` (centred, then
        DBA). ``neighbours`` searches the centred collection (default: exact search over
        ``vectors``); ``rows``: transform only these rows (their neighbours still come from
        the whole collection)."""
        centred = self.centred(vectors)
        chosen = centred if rows is None else centred[rows]
        k = self.settings.dba_k
        if k == 0:
            return chosen
        search = neighbours or exact_neighbours(centred)
        sims, positions = search(chosen, k + 1)
        own = np.arange(len(centred))[rows if rows is not None else slice(None)]
        return dba(chosen, own, sims, positions, centred, k, self.settings.alpha)

    def queries(self, queries: np.ndarray, stored: np.ndarray,
                neighbours: Neighbours | None = None,
                exclude: np.ndarray | None = None) -> np.ndarray:
        """The vectors searched for ``queries`` (centred, then alpha-QE over ``stored``).

        ``exclude[i]``: a stored position query ``i`` never expands with (the query's own
        row when it is a stored item), or ``-1``.
        """
        centred = self.centred(queries)
        k = self.settings.qe_k
        if k == 0:
            return centred
        search = neighbours or exact_neighbours(stored)
        sims, positions = search(centred, k + (exclude is not None))
        if exclude is not None:
            sims = np.where(positions == np.asarray(exclude)[:, None], -np.inf, sims)
        sims, positions = best(sims, positions, k)
        others = stored[np.maximum(positions, 0)]
        return weighted_mean(centred, sims, others, self.settings.alpha)


DEFAULT_POSTPROCESS = Postprocess(centre=True, dba_k=3)
"""What ``groco index build`` applies unless told otherwise: it raises k-NN, precision@10
and mAP@R for every encoder and collection measured (BENCHMARKS.md, "Label-free
post-processing"); alpha-QE adds precision but lowers k-NN on Fashion-MNIST."""


def best(sims: np.ndarray, positions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest of each row (missing ones, position -1, count as ``-inf``)."""
    sims = np.where(positions < 0, -np.inf, sims)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(positions, order, axis=1)


def dba(chosen: np.ndarray, own: np.ndarray, sims: np.ndarray, positions: np.ndarray,
        centred: np.ndarray, k: int, alpha: float = ALPHA) -> np.ndarray:
    """DBA of the rows ``chosen`` (positions ``own`` in ``centred``) from their ``k + 1``
    nearest neighbours ``(sims, positions)`` (which may include themselves)."""
    sims = np.where(positions == own[:, None], -np.inf, sims)
    sims, positions = best(sims, positions, k)
    return weighted_mean(chosen, sims, centred[np.maximum(positions, 0)], alpha)
