"""The web app's state in one small object: the index's searcher, the thumbnails, the
settings and the query decoder, with what the UI asks of them (no Gradio here)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from groco.app.settings import AppSettings
from groco.app.thumbnails import ThumbnailCache
from groco.app.uploads import QueryDecoder, UploadError
from groco.index.api import EMBEDDED, ID_STRIDE, FileRow, IndexReader, Page, Result, ShardUnion

log = logging.getLogger("groco.app")

ALL_LABELS = "all"


class AppState:
    """One loaded index served by the app.

    - ``searcher``: the :class:`groco.index.api.IndexReader` (loaded once, thread-safe):
      searches (the label filter included), pages of the collection, items, duplicates,
      the map;
    - ``thumbnails``: the :class:`ThumbnailCache` the app serves images from (only it);
    - ``settings``: the :class:`AppSettings` (limits and defaults);
    - ``decoder``: turns an upload into the query image (bounded, groco's decoder),
      reducing while the shorter side stays >= 2 x the encoder's ``resize_to``;
    - ``union``: with several index directories (:class:`groco.index.api.ShardUnion`),
      searches and "more like this" run over all of them; browsing, duplicates, the map
      and curation read ``searcher``, the first shard that opened, and the page says so.
      Ids are the union's (``shard * ID_STRIDE + id``).
    """

    def __init__(self, searcher: IndexReader, thumbnails: ThumbnailCache,
                 settings: AppSettings | None = None, upload_folder: str | Path | None = None,
                 union: ShardUnion | None = None) -> None:
        self.searcher = searcher
        self.union = union
        self.offset = 0 if union is None else min(union.readers) * ID_STRIDE
        """Added to the ``searcher``'s ids to make them the union's."""
        self.thumbnails = thumbnails
        self.settings = settings or AppSettings()
        self.labels: dict[str, int] = self._label_counts()
        min_side = 2 * searcher.encoder.resize_to
        self.decoder = QueryDecoder(self.settings,
                                    min_side=min_side if self.settings.reduce_queries else None,
                                    upload_folder=upload_folder)
        self.warmup: threading.Thread | None = None
        self.watch: threading.Thread | None = None
        self._stop = threading.Event()

    @classmethod
    def open(cls, index_dir: str | Path | list[str | Path], encoder: str | Path | None = None,
             settings: AppSettings | None = None,
             thumbnails_dir: str | Path | None = None) -> AppState:
        """Load ``index_dir`` (its recorded encoder unless ``encoder``), or several index
        directories as one (a list of more than one); thumbnails go to
        ``INDEX/thumbnails`` (of the first) unless ``thumbnails_dir``."""
        dirs = list(index_dir) if isinstance(index_dir, (list, tuple)) else [index_dir]
        settings = settings or AppSettings()
        batch = settings.batch_queries
        spinning = settings.encoder_spinning
        union = ShardUnion(dirs, encoder, batch_queries=batch, ray_address=settings.ray_address,
                           spinning=spinning) if len(dirs) > 1 else None
        searcher = union.readers[min(union.readers)] if union else IndexReader(
            dirs[0], encoder, batch_queries=batch, spinning=spinning)
        folder = thumbnails_dir or Path(searcher.index_dir) / "thumbnails"
        return cls(searcher, ThumbnailCache(folder), settings, union=union)

    def close(self) -> None:
        self._stop.set()
        (self.union or self.searcher).close()

    def _label_counts(self) -> dict[str, int]:
        return (self.union or self.searcher).label_counts()

    def start_index_watch(self) -> threading.Thread:
        """Look for a newer index state every ``settings.refresh_seconds`` in a background
        thread and switch to it between queries (:meth:`IndexReader.refresh`): a running
        server answers from what ``groco index update`` wrote, without a restart."""
        if self.watch is None:
            self.watch = threading.Thread(target=self._watch_index, name="groco-index-watch",
                                          daemon=True)
            self.watch.start()
        return self.watch

    def _watch_index(self) -> None:
        readers = list(self.union.readers.values()) if self.union else [self.searcher]
        failing: dict[int, str] = {}  # reader -> its last failure, said once
        while not self._stop.wait(self.settings.refresh_seconds):
            switched = False
            for number, reader in enumerate(readers):
                try:
                    switched |= bool(reader.refresh())
                    failing.pop(number, None)
                # a damaged newer state; a shard's replica that died or timed out
                except (ValueError, OSError, RuntimeError) as error:
                    if failing.get(number) != str(error):
                        failing[number] = str(error)
                        log.warning("keeping the index state being served (%s): %s",
                                    reader.index_dir, error)
            if switched:
                self.labels = self._label_counts()
                log.info("switched to the index's newer state (%s)", self.searcher.index_dir)

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

    def check_min_score(self, min_score: float | int | None) -> float | None:
        """The cut-off on the cosine similarity as a float in [-1, 1], ``None`` for none
        (``None`` or -1); ``UploadError`` otherwise."""
        if min_score is None:
            return None
        try:
            value = float(min_score)
        except (TypeError, ValueError):
            raise UploadError(f"min_score must be a number, got {min_score!r}.") from None
        if not -1.0 <= value <= 1.0:
            raise UploadError(f"min_score must be in [-1, 1] (cosine similarity), got "
                              f"{value:g}.")
        return None if value <= -1.0 else value

    def search_upload(self, payload: Any, k: float | int, label: str | None = None,
                      min_score: float | None = None, distinct: bool = False,
                      ) -> list[Result]:
        """Neighbours of an uploaded query (see :class:`QueryDecoder` for ``payload``);
        only those scoring ``>= min_score``, as ``groco search --min-score`` keeps;
        near copies collapsed with ``distinct``, as ``groco search --distinct``."""
        k, floor = self.check_k(k), self.check_min_score(min_score)
        self.check_label(label)
        return self.search_image(self.decoder.decode(payload), k, label, floor, distinct)

    def search_image(self, image: Any, k: float | int, label: str | None = None,
                     min_score: float | None = None, distinct: bool = False,
                     ) -> list[Result]:
        """Neighbours of a decoded query image (PIL), of ``label`` only when given (the
        index filters: k of them whenever it holds k)."""
        k, floor = self.check_k(k), self.check_min_score(min_score)
        label = self.check_label(label)
        return (self.union or self.searcher).search_image(image, k, label=label,
                                                          min_score=floor,
                                                          distinct=bool(distinct))

    def item_id(self, item: int | str) -> int:
        """The id of an indexed item given as its id (int or digits) or its path relative
        to the images root; ``UploadError`` (one line) for one not in the index."""
        text = str(item).strip()
        if not text:
            raise UploadError("Give an indexed item: its id or its path in the collection.")
        candidates: list[int | str] = [int(text)] if text.isdigit() else []
        candidates.append(text)
        for candidate in candidates:
            if isinstance(candidate, str) and Path(candidate).is_absolute():
                continue  # relative paths only: the app never takes a server path
            try:
                item_id, row = self._row(candidate)
            except KeyError:
                continue
            if row.status == EMBEDDED:
                return item_id
        raise UploadError(f"Not in the index: {text!r} (give an id or a path relative to "
                          "the images root).")

    def more_like(self, item: int | str | Path, k: float | int, label: str | None = None,
                  min_score: float | None = None, distinct: bool = False) -> list[Result]:
        """Neighbours of an indexed item (id or relative path), itself left out;
        ``UploadError`` if the item is not in the index."""
        k, floor = self.check_k(k), self.check_min_score(min_score)
        label = self.check_label(label)
        return (self.union or self.searcher).more_like(self.item_id(item), k, label=label,
                                                       min_score=floor,
                                                       distinct=bool(distinct))

    def browse(self, page: float | int, folder: str | None = None, order: str = "random",
               seed: int = 0) -> Page:
        """A page of the collection (``settings.browse_page`` items); ``UploadError`` for
        an unknown folder or order."""
        try:
            number = int(page)
        except (TypeError, ValueError):
            raise UploadError(f"page must be a number, got {page!r}.") from None
        try:
            return self.searcher.page(number, self.settings.browse_page,
                                      self.check_label(folder), order, seed)
        except ValueError as error:
            raise UploadError(str(error)) from None

    # -- what the UI shows

    def _row(self, item: int | str) -> tuple[int, FileRow]:
        """(id, row) of an id or a relative path; ``KeyError`` for neither."""
        if self.union is None:
            row = self.searcher.row(item)
            return row.id, row
        shard, row = self.union.row(item)
        return shard * ID_STRIDE + row.id, row

    def missing_shards(self) -> dict[str, str]:
        """The shards of a union left out of the answers, ``{index directory: reason}``
        (empty for one index)."""
        if self.union is None:
            return {}
        return {str(path): why for path, why in self.union.missing.items()}

    def row(self, item: int | str) -> FileRow:
        """The metadata row of an id or a relative path; ``KeyError`` for neither."""
        return self._row(item)[1]

    def root_of(self, item: int) -> Path:
        """The images root an item's relative path is under."""
        if self.union is None:
            return self.searcher.root
        return self.union.readers[int(item) // ID_STRIDE].root

    def thumbnail(self, item: int) -> tuple[Path | None, FileRow]:
        """(thumbnail path or ``None`` when the original cannot be decoded, row) of an id."""
        _, row = self._row(item)
        return self.thumbnails.path_for(self.root_of(item) / row.path, row.hash), row

    def result_thumbnail(self, result: Result) -> Path | None:
        """:meth:`thumbnail` of a search result, from the path and content hash it carries
        (no metadata lookup)."""
        if result.hash is None:
            return self.thumbnail(result.id)[0]
        return self.thumbnails.path_for(result.path, result.hash)

    def gallery(self, results: list[Result]) -> list[tuple[str, str]]:
        """(thumbnail path, caption "score · label · relpath") of each result that has one."""
        items = []
        for result in results:
            thumb = self.result_thumbnail(result)
            if thumb is not None:
                label = f" · {result.label}" if result.label else ""
                copies = f" · +{result.copies} near copies" if result.copies else ""
                items.append((str(thumb),
                              f"{result.score:.3f}{label} · {result.relpath}{copies}"))
        return items

    def tiles(self, page: Page) -> tuple[list[tuple[str, str]], list[int]]:
        """(gallery items (thumbnail path, relpath), their ids) of a browse page; items
        whose original cannot be decoded are left out."""
        items, ids = [], []
        for item in page.ids:
            item = self.offset + item  # the union's id
            thumb, row = self.thumbnail(item)
            if thumb is not None:
                items.append((str(thumb), row.path))
                ids.append(item)
        return items, ids

    def facts_markdown(self) -> str:
        f = self.searcher.facts()
        encoder = f["encoder"]
        params = ", ".join(f"{k} {v}" for k, v in (f.get("search_params") or {}).items())
        if self.union is not None:
            count = sum(self.labels.values()) if self.labels else f["count"]
            missing = "".join(f" · **shard left out**: `{p}` ({why})"
                              for p, why in self.union.missing.items())
            return (f"**{count:,} images in {len(self.union.readers)} of "
                    f"{len(self.union.index_dirs)} shards** "
                    f"({', '.join(f'`{p}`' for p in self.union.index_dirs)}): search and "
                    f"more like this cover them all; browse, duplicates, the map and "
                    f"curation show `{self.searcher.index_dir}` · encoder "
                    f"`{encoder['backbone']}` (hash `{encoder['hash']}`){missing}")
        return (f"**{f['count']:,} images** · encoder `{encoder['backbone']}` "
                f"({encoder['image_size']} px, {encoder['provider']}, hash `{encoder['hash']}`)"
                f" · index `{f['index_type']}`{f' ({params})' if params else ''}"
                f" · post-processing: {f['postprocess']} · built {f['built_at']}")
