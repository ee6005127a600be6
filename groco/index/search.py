"""Search an index directory by image, by vector, or by one of its own images.

:class:`Searcher` loads ``index.faiss``, ``manifest.json``, ``meta.sqlite`` and the encoder
once, then answers queries; it is what ``groco search`` and the web app use. No torch:
ONNX Runtime, FAISS, NumPy and SQLite only.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from groco.encoder.runtime import Encoder, EncoderError
from groco.images import load_image

from . import shards
from .dupes import DEFAULT_THRESHOLD
from .expansion import POOL, Expansion
from .faiss.query import search
from .indexfile import open_current
from .manifest import (
    IndexDirError,
    IndexMismatchError,
    check_encoder_hash,
    damaged,
)
from .store import DB_NAME, EMBEDDED, FileRow, Store

__all__ = ["IndexDirError", "IndexMismatchError", "Result", "Searcher"]

log = logging.getLogger(__name__)

QueryImage = str | Path | bytes | Image.Image | BinaryIO


@dataclass(frozen=True)
class Result:
    """One neighbour: its id (the FAISS id), paths, cosine similarity and folder label."""

    id: int
    path: str
    """Absolute path (the images root recorded in the manifest + ``relpath``)."""
    relpath: str
    """POSIX path relative to the images root."""
    score: float
    """Cosine similarity to the query, in [-1, 1] (1 = same embedding)."""
    label: str | None
    """First subfolder under the images root, ``None`` for files directly in it."""
    rank_score: float | None = None
    """The similarity results are ordered by when the index post-processes search
    (:mod:`groco.index.expansion`), ``None`` when it does not (``score`` orders them)."""
    copies: int = 0
    """Near copies of this result hidden behind it by a distinct search
    (:mod:`groco.index.distinct`); 0 otherwise."""
    hash: str | None = None
    """The file's content hash as indexed (names its thumbnail in the web app)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Searcher:
    """A loaded index directory, ready to answer queries (thread-safe).

    ``encoder_path`` defaults to the encoder recorded in the manifest. An encoder whose
    ``groco.hash`` differs from the manifest's raises :class:`IndexMismatchError`: its
    embeddings would not be comparable with the indexed ones. An index directory that is
    missing, unfinished or inconsistent raises :class:`IndexDirError`. If the metadata
    changed after ``index.faiss`` was written (an interrupted ``update``), a warning is
    logged, results whose file is gone are dropped, and :meth:`facts` says ``stale``.
    ``spinning``: :class:`~groco.encoder.runtime.Encoder`'s, off: queries come one or a
    few at a time, between other work on the same cores.
    """

    def __init__(self, index_dir: str | Path, encoder_path: str | Path | None = None,
                 providers: list[str] | None = None, spinning: bool = False) -> None:
        self.index_dir = Path(index_dir)
        self.manifest, self.index = open_current(self.index_dir)
        self.expansion = Expansion.open(self.index_dir, self.manifest)
        self.root = Path(self.manifest["images_root"])
        if not (self.index_dir / DB_NAME).is_file():
            raise damaged(self.index_dir / DB_NAME, "missing", self.index_dir)
        path = Path(encoder_path or self.manifest["encoder_path"])
        if encoder_path is None and not path.is_file():
            raise EncoderError(f"{path}: the encoder this index was built with is gone; "
                               "pass the encoder file (--encoder)")
        self.encoder = Encoder(path, providers=providers, spinning=spinning)
        check_encoder_hash(self.manifest["encoder_hash"], self.encoder.hash, path,
                           self.index_dir)
        self._store = Store(self.index_dir / DB_NAME, readonly=True)
        self._lock = threading.Lock()
        self._shards: dict[int, np.ndarray] = {}
        self.stale = self._store.generation != self.manifest.get("generation")
        if self.stale:
            log.warning("%s: the metadata is newer than the index (an update is running or "
                        "was interrupted): answers are at the index's state; `groco index "
                        "update %s` brings it level", self.index_dir, self.index_dir)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queries

    def preprocess_image(self, image: QueryImage) -> np.ndarray:
        """A path, bytes, file object or PIL image as the encoder's input array.

        :class:`groco.images.ImageError` for an image that cannot be decoded.
        """
        picture = image if isinstance(image, Image.Image) else load_image(image)
        return self.encoder.preprocess(picture)

    def embed_image(self, image: QueryImage) -> np.ndarray:
        """The ``(dim,)`` unit embedding of a path, bytes, file object or PIL image.

        :class:`groco.images.ImageError` for an image that cannot be decoded.
        """
        return self.encoder.embed_arrays(self.preprocess_image(image)[None])[0]

    def search_image(self, image: QueryImage, k: int = 10,
                     min_score: float | None = None) -> list[Result]:
        """The ``k`` indexed images most similar to ``image``, best first (only those
        scoring ``>= min_score`` when given).

        An image that is itself indexed comes back first with a score of ~1.
        """
        return self.search_vector(self.embed_image(image), k, min_score=min_score)

    def search_vector(self, vector: np.ndarray, k: int = 10,
                      exclude: int | None = None,
                      min_score: float | None = None) -> list[Result]:
        """The ``k`` nearest neighbours of a ``(dim,)`` embedding, best first.

        ``exclude``: an id left out of the results. ``min_score``: a cut-off on the cosine
        similarity (like immich's ``maxDistance``): results scoring below it are left
        out. Fewer than ``k`` come back then, or when the index holds fewer vectors (or a
        stale index returns files since deleted). With post-processing
        (:mod:`groco.index.expansion`) the order is the post-processed one and ``score``
        stays the encoder's cosine similarity.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if min_score is not None and not -1.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [-1, 1] (cosine similarity), got "
                             f"{min_score:g}")
        vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if vector.shape[1] != self.index.d:
            raise ValueError(f"vector has dim {vector.shape[1]}, the index {self.index.d}")
        want = min(k + (exclude is not None), self.index.ntotal)
        if self.expansion is not None:
            want = min(max(POOL, want), self.index.ntotal)
        scores, ids = search(self.index, vector, want)
        return self.results(self.expand(vector[0], ids[0], exclude), scores[0], ids[0], k,
                            exclude, min_score)

    def expand(self, query: np.ndarray, pool_ids: np.ndarray,
               exclude: int | None = None) -> np.ndarray | None:
        """The post-processed query (:meth:`groco.index.expansion.Expansion.expand`) from
        its unfiltered candidates ``pool_ids``; ``None`` without post-processing."""
        if self.expansion is None:
            return None
        return self.expansion.expand(query, pool_ids, exclude)

    def results(self, expanded: np.ndarray | None, scores: np.ndarray, ids: np.ndarray,
                k: int, exclude: int | None = None,
                min_score: float | None = None) -> list[Result]:
        """The first ``k`` of one query's candidates ``(scores, ids)`` (best first by the
        encoder's similarity, ``-1`` ids empty) as results: ranked by the expanded query
        ``expanded`` (:meth:`expand`) when the index post-processes, without ``exclude``,
        deleted files or scores below ``min_score``."""
        ranks: list[float | None] = [None] * len(ids)
        if self.expansion is not None and expanded is not None:
            scores, ids, rank_scores = self.expansion.rank(expanded, scores, ids,
                                                           DEFAULT_THRESHOLD)
            ranks = rank_scores.tolist()
        floor = -np.inf if min_score is None else min_score
        picked = [(int(i), float(s), r) for i, s, r in zip(ids, scores, ranks, strict=True)
                  if i >= 0 and i != exclude and s >= floor]
        with self._lock:
            rows = self._store.rows(i for i, _, _ in picked)
        results = [self._result(rows[i], s, r) for i, s, r in picked if i in rows]
        return results[:k]

    def more_like(self, item: int | str | Path, k: int = 10,
                  min_score: float | None = None) -> list[Result]:
        """The ``k`` images most similar to an indexed one, *excluding itself* (only those
        scoring ``>= min_score`` when given).

        ``item``: its id, or its path (relative to the images root, or absolute). Uses the
        stored embedding, so the file need not exist any more. ``KeyError`` for an unknown
        item, ``ValueError`` for a broken one.
        """
        row = self.row(item)
        return self.search_vector(self.vector_of(row), k, exclude=row.id, min_score=min_score)

    # -- stored items

    def row(self, item: int | str | Path) -> FileRow:
        """The metadata row of an id or a path (relative or absolute); ``KeyError`` if none."""
        with self._lock:
            if isinstance(item, (int, np.integer)):
                row = self._store.rows([int(item)]).get(int(item))
            else:
                path = Path(item)
                if path.is_absolute():
                    try:
                        path = path.relative_to(self.root)
                    except ValueError:
                        raise KeyError(f"{item} is not under {self.root}") from None
                row = self._store.row_by_path(path.as_posix())
        if row is None:
            raise KeyError(f"{item} is not in the index")
        return row

    def vector_of(self, item: int | str | Path | FileRow) -> np.ndarray:
        """The stored ``(dim,)`` embedding of an indexed file."""
        row = item if isinstance(item, FileRow) else self.row(item)
        if row.status != EMBEDDED:
            raise ValueError(f"{row.path} is not embedded ({row.status}: {row.error})")
        with self._lock:
            vectors = self._shards.get(row.shard)
            if vectors is None:
                vectors = self._shards[row.shard] = shards.load_vectors(self.index_dir,
                                                                         row.shard)
        return np.array(vectors[row.shard_row], dtype=np.float32)

    def _result(self, row: FileRow, score: float, rank_score: float | None = None) -> Result:
        return Result(id=row.id, path=str(self.root / row.path), relpath=row.path,
                      score=score, label=row.label, rank_score=rank_score, hash=row.hash)

    def embedded_files(self) -> list[tuple[Path, str]]:
        """(absolute path, content hash) of every embedded image."""
        with self._lock:
            return [(self.root / row.path, row.hash) for row in self._store.iter_rows(EMBEDDED)]

    def label_counts(self) -> dict[str, int]:
        """How many embedded images each folder label has (files in the root: no label)."""
        counts: dict[str, int] = {}
        with self._lock:
            for row in self._store.iter_rows(EMBEDDED):
                if row.label is not None:
                    counts[row.label] = counts.get(row.label, 0) + 1
        return dict(sorted(counts.items()))

    def facts(self) -> dict[str, Any]:
        """What a UI shows about the index (counts, encoder, index type, build date, dim)."""
        m = self.manifest
        return {
            "count": m["count"],
            "broken": m["broken"],
            "dim": m["dim"],
            "index_type": m["index_type"],
            "search_params": m["search_params"],
            "recall_at_10": m["recall_at_10"],
            "built_at": m["built_at"],
            "images_root": m["images_root"],
            "encoder": {"path": str(self.encoder.path), "hash": self.encoder.hash,
                        "backbone": self.encoder.backbone,
                        "image_size": self.encoder.image_size,
                        "provider": self.encoder.provider},
            "groco_version": m["groco_version"],
            "stale": self.stale,
            "postprocess": ("none" if self.expansion is None
                            else self.expansion.settings.describe()),
        }
