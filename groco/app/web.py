"""The visual search web UI: a Gradio Blocks app over an :class:`groco.app.state.AppState`.

Drop, paste or shoot an image → its nearest neighbours in the collection, each with its
similarity, path and folder label; click a result to search from it ("more like this").
The ``search`` endpoint is a named API (``gradio_client``: ``api_name="/search"``).

The query's bytes reach groco's own decoder untouched: the search events run with
``preprocess=False``, so Gradio passes the upload's file reference (or a ``data:`` URL)
and :class:`groco.app.uploads.QueryDecoder` reads and decodes it, within the byte and
pixel caps; a query that is not a readable image gets a one-line message.

Safety: binds to 127.0.0.1 unless told otherwise; serves thumbnails from the index's cache
folder only (``allowed_paths``), never an original or any other file; reads only files in
Gradio's upload folder; every request body is capped (:mod:`groco.app.limits`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import gradio as gr

from groco.app.limits import body_limit
from groco.app.memory import return_large_blocks
from groco.app.settings import AppSettings
from groco.app.state import ALL_LABELS, AppState
from groco.app.uploads import UploadError
from groco.index.search import Result

log = logging.getLogger("groco.app")


def _as_json(results: list[Result]) -> list[dict[str, Any]]:
    """Results for the JSON output; no ``path`` key, which API clients read as a file."""
    return [{"id": r.id, "relpath": r.relpath, "score": r.score, "label": r.label}
            for r in results]


def _status(results: list[Result], seconds: float, what: str) -> str:
    return f"{len(results)} neighbours of {what} in {seconds * 1000:.0f} ms"


class SearchHandlers:
    """The search tab's event functions, over one :class:`AppState`.

    Each returns ``(gallery items, status line, results as JSON, result ids)``.
    """

    def __init__(self, state: AppState) -> None:
        self.state = state

    def _answer(self, results: list[Result], started: float, what: str):
        seconds = time.perf_counter() - started
        return (self.state.gallery(results), _status(results, seconds, what),
                _as_json(results), [r.id for r in results])

    def search(self, image: Any, k: float, label: str):
        """An uploaded query (the raw payload: Gradio does not preprocess it)."""
        started = time.perf_counter()
        try:
            results = self.state.search_upload(image, k, label)
        except UploadError as error:
            raise gr.Error(str(error)) from None
        return self._answer(results, started, "your image")

    def more_like_this(self, ids: list[int], k: float, label: str, event: gr.SelectData):
        """A click on a result: its neighbours, itself left out."""
        if not ids or event.index is None or event.index >= len(ids):
            raise gr.Error("Search first, then click a result.")
        item = ids[event.index]
        started = time.perf_counter()
        try:
            results = self.state.more_like(item, k, label)
        except UploadError as error:
            raise gr.Error(str(error)) from None
        relpath = self.state.searcher.row(item).path
        return self._answer(results, started, f"`{relpath}`")


def build_app(state: AppState) -> gr.Blocks:
    """The Blocks app over ``state`` (not launched)."""
    settings = state.settings
    handlers = SearchHandlers(state)
    label_choices = [ALL_LABELS, *state.labels]
    with gr.Blocks(title="groco visual search") as app:
        gr.Markdown("## groco visual search\nDrop an image to find its nearest neighbours; "
                    "click a result for more like it.")
        result_ids = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                query = gr.Image(label="Query image", type="filepath",
                                 sources=["upload", "clipboard", "webcam"], height=280)
                k = gr.Slider(1, settings.max_k, value=settings.default_k, step=1,
                              label="Neighbours (k)")
                label = gr.Dropdown(label_choices, value=ALL_LABELS, label="Folder / label",
                                    visible=len(label_choices) > 1)
                button = gr.Button("Search", variant="primary")
                gr.Markdown(state.facts_markdown(), elem_id="index-facts")
            with gr.Column(scale=3):
                status = gr.Markdown("", elem_id="search-status")
                gallery = gr.Gallery(label="Nearest neighbours", columns=6, height="auto",
                                     object_fit="contain", allow_preview=False,
                                     elem_id="results")
                with gr.Accordion("Results as JSON", open=False):
                    raw = gr.JSON(label="results")
        outputs = [gallery, status, raw, result_ids]
        # preprocess=False: the query's file reference reaches groco's decoder as sent.
        button.click(handlers.search, [query, k, label], outputs, api_name="search",
                     preprocess=False)
        query.upload(handlers.search, [query, k, label], outputs, api_name=False,
                     preprocess=False)
        gallery.select(handlers.more_like_this, [result_ids, k, label], outputs,
                       api_name=False)
    app.queue(default_concurrency_limit=settings.concurrency)
    return app


def serve(state: AppState, host: str = "127.0.0.1", port: int = 7860, block: bool = True,
          **launch_kwargs: Any) -> tuple[gr.Blocks, str]:
    """Build the app over ``state`` and serve it; returns (app, local URL). Large freed
    blocks go back to the OS at once (:mod:`groco.app.memory`)."""
    return_large_blocks()
    app = build_app(state)
    _, url, _ = app.launch(
        server_name=host, server_port=port,
        allowed_paths=[str(state.thumbnails.folder)],
        max_file_size=state.settings.max_upload_bytes,
        app_kwargs={"middleware": [body_limit(state.settings.max_request_bytes)]},
        prevent_thread_lock=not block, quiet=True, footer_links=["api"], **launch_kwargs)
    return app, url


def launch_app(index_dir: str | Path, host: str = "127.0.0.1", port: int = 7860,
               encoder: str | Path | None = None, block: bool = True,
               settings: AppSettings | None = None,
               **launch_kwargs: Any) -> tuple[gr.Blocks, str]:
    """Load the index once, start making its thumbnails in the background, serve the app;
    returns (app, local URL)."""
    state = AppState.open(index_dir, encoder, settings)
    state.start_thumbnail_warmup()
    return serve(state, host, port, block, **launch_kwargs)
