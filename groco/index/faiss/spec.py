"""The two settings values of a FAISS index: how it is built and how it is tuned.

These frozen dataclasses hold the only defaults of the build and tuning policy; every
caller (in-RAM builds, on-disk builds, updates, repair, the CLI, benchmarks) passes one of
them instead of repeating the keywords. An index directory's ``manifest.json`` records
``index_type_requested`` and ``memory_bytes`` (:class:`BuildSpec`) and ``target_recall``
(:class:`TuningSpec`); ``k`` is 10 there (``recall_at_10``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuildSpec:
    """How an index is built.

    - ``factory``: a FAISS ``index_factory`` string, or ``"auto"`` for
      :func:`groco.index.faiss.choose.choose_index_type` of the collection's size;
    - ``memory_bytes``: the budget ``"auto"`` chooses within (``None``: half the RAM
      available now, :func:`groco.index.faiss.choose.default_memory_budget`);
    - ``use_gpu``: train IVF k-means (and run exact searches) on a GPU; ``None`` means
      "if FAISS sees one";
    - ``train_size``: the training sample of indices that need training (``None``:
      ``max(64 * K, 65536)`` for ``K`` IVF lists), drawn uniformly with ``seed``.
    """

    factory: str = "auto"
    memory_bytes: int | None = None
    use_gpu: bool | None = None
    train_size: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class TuningSpec:
    """How search parameters are tuned: the least effort whose recall@``k`` against exact
    search, on ``n_queries`` held-out queries drawn with ``seed``, reaches
    ``target_recall`` (:mod:`groco.index.faiss.tune`). ``ValueError`` unless
    ``0 < target_recall <= 1``, ``k >= 1`` and ``n_queries >= 1``."""

    target_recall: float = 0.95
    k: int = 10
    n_queries: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.target_recall <= 1:
            raise ValueError(f"target recall must be in (0, 1], got {self.target_recall}")
        if self.k < 1 or self.n_queries < 1:
            raise ValueError(f"need k >= 1 and n_queries >= 1, got k={self.k}, "
                             f"n_queries={self.n_queries}")

    @property
    def key(self) -> str:
        """The name of the measured recall in tuned parameters: ``"recall@10"``."""
        return f"recall@{self.k}"


DEFAULT_TUNING = TuningSpec()
"""The default tuning (the CLI's ``--target-recall`` default reads it)."""
