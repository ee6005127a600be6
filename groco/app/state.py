"""The web app's state in one small object: the index's searcher, the thumbnails, the
settings and the query decoder, with what the UI asks of them (no Gradio here)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from groco.app.settings import AppSettings
from groco.app.thumbnails import ThumbnailCache
from groco.app.uploads import QueryDecoder, UploadError
from groco.index.search import Result, Searcher

ALL_LABELS = "all"


class AppState:
    """One loaded index served by the app.

    - ``searcher``: the :class:`groco.index.search.Searcher` (loaded once, thread-safe);
    - ``thumbnails``: the :class:`ThumbnailCache` the app serves images from (only it);
    - ``settings``: the :class:`AppSettings` (limits and defaults);
    - ``decoder``: turns an upload into the query image (bounded, groco's decoder),
      reducing while the shorter side stays >= 2 x the encoder's ``resize_to``.
    """

    def __init__(self, searcher: Searcher, thumbnails: ThumbnailCache,
                 settings: AppSettings | None = None, upload_folder: str | Path | None = None,
                 ) -> None:
        self.searcher = searcher
        self.thumbnails = thumbnails
        self.settings = settings or AppSettings()
        self.labels: dict[str, int] = searcher.label_counts()
        min_side = 2 * searcher.encoder.preprocessing.resize_to
        self.decoder = QueryDecoder(self.settings,
                                    min_side=min_side if self.settings.reduce_queries else None,
                                    upload_folder=upload_folder)
        self.warmup: threading.Thread | None = None

    @classmethod
    def open(cls, index_dir: str | Path, encoder: str | Path | None = None,
             settings: AppSettings | None = None,
             thumbnails_dir: str | Path | None = None) -> AppState:
        """Load ``index_dir`` (its recorded encoder unless ``encoder``); thumbnails go to
        ``INDEX/thumbnails`` unless ``thumbnails_dir``."""
        searcher = Searcher(index_dir, encoder)
        folder = thumbnails_dir or Path(searcher.index_dir) / "thumbnails"
        return cls(searcher, ThumbnailCache(folder), settings)

    def close(self) -> None:
        self.searcher.close()

    # -- the collection's thumbnails

    def start_thumbnail_warmup(self) -> threading.Thread:
        """Make the whole collection's thumbnails in a background thread (once), so that
        queries only read them; one not made yet is made on request."""
        if self.warmup is None:
            self.warmup = threading.Thread(
                target=self.thumbnails.prebuild, args=(self.searcher.embedded_files(),),
                name="groco-thumbnails", daemon=True)
            self.warmup.start()
        return self.warmup

    # -- queries

    def check_label(self, label: str | None) -> str | None:
        """``None`` for all labels; ``UploadError`` for a label the index does not have."""
        if not label or label == ALL_LABELS:
            return None
        if label not in self.labels:
            raise UploadError(f"Unknown folder/label: {label!r}.")
        return label

    def check_k(self, k: float | int) -> int:
        """``k`` as an int in 1..max_k; ``UploadError`` otherwise."""
        try:
            value = int(k)
        except (TypeError, ValueError):
            raise UploadError(f"k must be a number, got {k!r}.") from None
        if not 1 <= value <= self.settings.max_k:
            raise UploadError(f"k must be in 1..{self.settings.max_k}, got {value}.")
        return value

    def _filtered(self, search, k: int, label: str | None) -> list[Result]:
        label = self.check_label(label)
        if label is None:
            return search(k)
        want = min(k * self.settings.filter_oversample, self.searcher.index.ntotal)
        return [r for r in search(want) if r.label == label][:k]

    def search_upload(self, payload: Any, k: float | int,
                      label: str | None = None) -> list[Result]:
        """Neighbours of an uploaded query (see :class:`QueryDecoder` for ``payload``)."""
        k = self.check_k(k)
        self.check_label(label)
        vector = self.searcher.embed_image(self.decoder.decode(payload))
        return self._filtered(lambda n: self.searcher.search_vector(vector, n), k, label)

    def more_like(self, item: int | str | Path, k: float | int,
                  label: str | None = None) -> list[Result]:
        """Neighbours of an indexed item (id or path), itself left out; ``KeyError`` if
        the item is not in the index."""
        k = self.check_k(k)
        return self._filtered(lambda n: self.searcher.more_like(item, n), k, label)

    # -- what the UI shows

    def gallery(self, results: list[Result]) -> list[tuple[str, str]]:
        """(thumbnail path, caption "score · label · relpath") of each result that has one."""
        items = []
        for result in results:
            row = self.searcher.row(result.id)
            thumb = self.thumbnails.path_for(result.path, row.hash)
            if thumb is not None:
                label = f" · {result.label}" if result.label else ""
                items.append((str(thumb), f"{result.score:.3f}{label} · {result.relpath}"))
        return items

    def facts_markdown(self) -> str:
        f = self.searcher.facts()
        encoder = f["encoder"]
        params = ", ".join(f"{k} {v}" for k, v in (f.get("search_params") or {}).items())
        return (f"**{f['count']:,} images** · encoder `{encoder['backbone']}` "
                f"({encoder['image_size']} px, {encoder['provider']}, hash `{encoder['hash']}`)"
                f" · index `{f['index_type']}`{f' ({params})' if params else ''}"
                f" · built {f['built_at']}")
