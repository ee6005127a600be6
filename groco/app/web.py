"""The visual search web UI: a Gradio Blocks app over a :class:`groco.index.search.Searcher`.

Drop, paste or shoot an image → its nearest neighbours in the collection, each with its
similarity, path and folder label; click a result to search from it ("more like this").
The ``search`` endpoint is a named API (``gradio_client``: ``api_name="/search"``).

Safety: binds to 127.0.0.1 unless told otherwise; serves thumbnails from the index's cache
folder only (``allowed_paths``), never an original or any other file; uploads are size
limited, and an upload that is not a readable image gets a one-line message.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from groco.app.thumbnails import ThumbnailCache
from groco.images import ImageError, load_image
from groco.index.search import Result, Searcher

log = logging.getLogger("groco.app")

ALL_LABELS = "all"
MAX_UPLOAD = "10mb"
CONCURRENCY = 4
FILTER_OVERSAMPLE = 20


def query_image(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` whose upload decoding failure is a one-line message, not a server
    error (its ``preprocess`` decodes the upload before any event function runs)."""
    component = gr.Image(**kwargs)
    decode = component.preprocess

    def preprocess(payload):
        try:
            return decode(payload)
        except Exception as error:  # PIL raises several types for a broken upload
            name = getattr(payload, "orig_name", None) or "the upload"
            raise gr.Error(f"Not a readable image: {name} ({type(error).__name__})") from None

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


class SearchService:
    """What the UI calls: search, filter by label, thumbnails, captions (no Gradio here)."""

    def __init__(self, searcher: Searcher, thumbnails: ThumbnailCache) -> None:
        self.searcher = searcher
        self.thumbnails = thumbnails
        self.labels = searcher.label_counts()

    def _filtered(self, search, k: int, label: str | None) -> list[Result]:
        if not label or label == ALL_LABELS:
            return search(k)
        want = min(k * FILTER_OVERSAMPLE, self.searcher.index.ntotal)
        return [r for r in search(want) if r.label == label][:k]

    def by_image(self, image: Image.Image | str | Path | bytes, k: int,
                 label: str | None = None) -> list[Result]:
        picture = image if isinstance(image, Image.Image) else load_image(image)
        vector = self.searcher.embed_image(picture)
        return self._filtered(lambda n: self.searcher.search_vector(vector, n), k, label)

    def more_like(self, item_id: int, k: int, label: str | None = None) -> list[Result]:
        return self._filtered(lambda n: self.searcher.more_like(item_id, n), k, label)

    def gallery(self, results: list[Result]) -> list[tuple[str, str]]:
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


def _as_json(results: list[Result]) -> list[dict[str, Any]]:
    """Results for the JSON output; no ``path`` key, which API clients read as a file."""
    return [{"id": r.id, "relpath": r.relpath, "score": r.score, "label": r.label}
            for r in results]


def _status(results: list[Result], seconds: float, what: str) -> str:
    return f"{len(results)} neighbours of {what} in {seconds * 1000:.0f} ms"


def build_app(searcher: Searcher, thumbnails_dir: str | Path | None = None,
              default_k: int = 12) -> gr.Blocks:
    """The Blocks app (not launched). Thumbnails go to ``INDEX/thumbnails`` by default."""
    service = SearchService(searcher, ThumbnailCache(
        thumbnails_dir or Path(searcher.index_dir) / "thumbnails"))
    label_choices = [ALL_LABELS, *service.labels]

    def search(image: str | None, k: float, label: str):
        if image is None:
            raise gr.Error("Drop an image first.")
        started = time.perf_counter()
        try:
            results = service.by_image(image, int(k), label)
        except ImageError as error:
            raise gr.Error(f"Not a readable image: {error.reason}") from None
        seconds = time.perf_counter() - started
        return (service.gallery(results), _status(results, seconds, "your image"),
                _as_json(results), [r.id for r in results])

    def more_like_this(ids: list[int], k: float, label: str, event: gr.SelectData):
        if not ids or event.index is None or event.index >= len(ids):
            raise gr.Error("Search first, then click a result.")
        item = ids[event.index]
        started = time.perf_counter()
        results = service.more_like(item, int(k), label)
        seconds = time.perf_counter() - started
        relpath = searcher.row(item).path
        return (service.gallery(results), _status(results, seconds, f"`{relpath}`"),
                _as_json(results), [r.id for r in results])

    with gr.Blocks(title="groco visual search") as app:
        gr.Markdown("## groco visual search\nDrop an image to find its nearest neighbours; "
                    "click a result for more like it.")
        result_ids = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                query = query_image(label="Query image", type="filepath",
                                 sources=["upload", "clipboard", "webcam"], height=280)
                k = gr.Slider(1, 50, value=default_k, step=1, label="Neighbours (k)")
                label = gr.Dropdown(label_choices, value=ALL_LABELS, label="Folder / label",
                                    visible=len(label_choices) > 1)
                button = gr.Button("Search", variant="primary")
                gr.Markdown(service.facts_markdown(), elem_id="index-facts")
            with gr.Column(scale=3):
                status = gr.Markdown("", elem_id="search-status")
                gallery = gr.Gallery(label="Nearest neighbours", columns=6, height="auto",
                                     object_fit="contain", allow_preview=False,
                                     elem_id="results")
                with gr.Accordion("Results as JSON", open=False):
                    raw = gr.JSON(label="results")
        outputs = [gallery, status, raw, result_ids]
        button.click(search, [query, k, label], outputs, api_name="search")
        query.upload(search, [query, k, label], outputs, api_name=False)
        gallery.select(more_like_this, [result_ids, k, label], outputs, api_name=False)
    app.queue(default_concurrency_limit=CONCURRENCY)
    app.allowed_thumbnail_dir = service.thumbnails.folder  # type: ignore[attr-defined]
    # Thumbnails of the whole collection are made once in the background, so that queries
    # only read them; one not made yet is made on request.
    app.thumbnail_warmup = threading.Thread(  # type: ignore[attr-defined]
        target=service.thumbnails.prebuild, args=(searcher.embedded_files(),),
        name="groco-thumbnails", daemon=True)
    return app


def launch_app(index_dir: str | Path, host: str = "127.0.0.1", port: int = 7860,
               encoder: str | Path | None = None, block: bool = True,
               **launch_kwargs: Any) -> tuple[gr.Blocks, str]:
    """Load the index once, build the app and serve it; returns (app, local URL)."""
    searcher = Searcher(index_dir, encoder)
    app = build_app(searcher)
    app.thumbnail_warmup.start()
    _, url, _ = app.launch(server_name=host, server_port=port,
                           allowed_paths=[str(app.allowed_thumbnail_dir)],
                           max_file_size=MAX_UPLOAD, prevent_thread_lock=not block,
                           quiet=True, footer_links=["api"], **launch_kwargs)
    return app, url
