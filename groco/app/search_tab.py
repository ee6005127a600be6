"""The "Search" tab: the query, the collection grid ("Collection", what the page opens
on) and the neighbours ("Results"), over one :class:`groco.app.state.AppState`.

Named API endpoints (``gradio_client``):

- ``/search``: (image, k, label, min_score) → (gallery, status, results JSON);
- ``/more_like_this``: (item: an id or a path relative to the images root, k, label,
  min_score) → the same, the item itself left out;
- ``/browse``: (page, folder, order, seed) → (gallery, page status, page, items JSON).

A click on a thumbnail of the collection or of the results starts "more like this".
"""

from __future__ import annotations

import random
import time
from typing import Any

import gradio as gr

from groco.app.state import ALL_LABELS, AppState
from groco.app.uploads import UploadError
from groco.index.api import ORDERS, Page, Result


def results_json(results: list[Result]) -> list[dict[str, Any]]:
    """Results for the JSON output; no ``path`` key, which API clients read as a file."""
    return [{"id": r.id, "relpath": r.relpath, "score": r.score, "label": r.label,
             "copies": r.copies} for r in results]


def _status(results: list[Result], seconds: float, what: str) -> str:
    return f"{len(results)} neighbours of {what} in {seconds * 1000:.0f} ms"


def _user_error(call, *args):
    try:
        return call(*args)
    except UploadError as error:
        raise gr.Error(str(error)) from None


class SearchHandlers:
    """The tab's event functions. Searches return ``(gallery items, status line, results
    as JSON, result ids)``; browsing returns ``(gallery items, page status, page number,
    items as JSON, item ids)``."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def _answer(self, results: list[Result], started: float, what: str):
        seconds = time.perf_counter() - started
        status = _status(results, seconds, what) + "".join(
            f" · shard left out: `{path}` ({why})"
            for path, why in self.state.missing_shards().items())
        return (self.state.gallery(results), status, results_json(results),
                [r.id for r in results])

    def search(self, image: Any, k: float, label: str, min_score: float = -1.0,
               distinct: bool = False):
        """An uploaded query (the raw payload: Gradio does not preprocess it)."""
        started = time.perf_counter()
        results = _user_error(self.state.search_upload, image, k, label, min_score, distinct)
        return self._answer(results, started, "your image")

    def more_like_item(self, item: str | int, k: float, label: str,
                       min_score: float = -1.0, distinct: bool = False):
        """An indexed item named by its id or relative path: its neighbours, itself left
        out."""
        started = time.perf_counter()
        item_id = _user_error(self.state.item_id, item)
        results = _user_error(self.state.more_like, item_id, k, label, min_score, distinct)
        return self._answer(results, started, f"`{self.state.row(item_id).path}`")

    def more_like_clicked(self, ids: list[int], k: float, label: str, min_score: float,
                          distinct: bool, event: gr.SelectData):
        """A click on a thumbnail (of the collection or of the results)."""
        if not ids or event.index is None or event.index >= len(ids):
            raise gr.Error("Click a thumbnail to search from it.")
        return self.more_like_item(ids[event.index], k, label, min_score, distinct)

    def index_state(self):
        """The facts line and the folder choices of the index state now served."""
        choices = [ALL_LABELS, *self.state.labels]
        return (self.state.facts_markdown(),
                *(gr.Dropdown(choices=choices, visible=len(choices) > 1) for _ in range(2)))

    def browse(self, page: float, folder: str, order: str, seed: float):
        """A page of the collection."""
        shown: Page = _user_error(self.state.browse, page, folder, order, int(seed or 0))
        items, ids = self.state.tiles(shown)
        listing = [{"id": i, "relpath": r.path, "label": r.label}
                   for i, r in zip(ids, (self.state.row(i) for i in ids), strict=True)]
        folder_name = None if folder in (None, "", ALL_LABELS) else folder
        return items, shown.describe(folder_name), shown.number, listing, ids

    def shuffle(self, folder: str, order: str):
        """A new random order, from page 1; the new seed comes last."""
        seed = random.randrange(1 << 31)
        return (*self.browse(1, folder, order, seed), seed)


def search_tab(app: gr.Blocks, state: AppState) -> None:
    """Lay out the tab's components and wire its events (inside ``app``'s context)."""
    settings = state.settings
    handlers = SearchHandlers(state)
    label_choices = [ALL_LABELS, *state.labels]
    result_ids = gr.State([])
    page_ids = gr.State([])
    with gr.Row():
        with gr.Column(scale=1):
            query = gr.Image(label="Query image", type="filepath",
                             sources=["upload", "clipboard", "webcam"], height=260)
            k = gr.Slider(1, settings.max_k, value=settings.default_k, step=1,
                          label="Neighbours (k)")
            min_score = gr.Slider(-1.0, 1.0, value=-1.0, step=0.01, elem_id="min-score",
                                  label="Minimum score (cosine; -1 keeps all)")
            label = gr.Dropdown(label_choices, value=ALL_LABELS, label="Folder / label",
                                visible=len(label_choices) > 1)
            distinct = gr.Checkbox(False, label="Hide near copies (each group once, with a "
                                   "count)", elem_id="distinct")
            button = gr.Button("Search", variant="primary")
            with gr.Row():
                item = gr.Textbox(label="More like an indexed image (id or path)",
                                  placeholder="e.g. shoes/0001.png", elem_id="item-box",
                                  scale=3)
                item_button = gr.Button("Find", scale=1, min_width=60)
            facts = gr.Markdown(state.facts_markdown(), elem_id="index-facts")
        with gr.Column(scale=3), gr.Tabs(selected="collection") as views:
            with gr.Tab("Collection", id="collection"):
                with gr.Row():
                    folder = gr.Dropdown(label_choices, value=ALL_LABELS,
                                         label="Folder", visible=len(label_choices) > 1,
                                         elem_id="browse-folder")
                    order = gr.Radio(list(ORDERS), value="random", label="Order")
                    shuffle = gr.Button("Shuffle", size="sm")
                browse_status = gr.Markdown("", elem_id="browse-status")
                collection = gr.Gallery(label="The collection (click for more like it)",
                                        columns=8, height="auto", object_fit="contain",
                                        allow_preview=False, elem_id="collection")
                with gr.Row():
                    previous = gr.Button("◀ Previous", size="sm")
                    page = gr.Number(value=1, precision=0, minimum=1, label="Page",
                                     elem_id="browse-page")
                    following = gr.Button("Next ▶", size="sm", elem_id="browse-next")
                seed = gr.Number(value=0, precision=0, visible=False)
                page_json = gr.JSON(visible=False)
            with gr.Tab("Results", id="results"):
                status = gr.Markdown("", elem_id="search-status")
                gallery = gr.Gallery(label="Nearest neighbours (click for more like it)",
                                     columns=6, height="auto", object_fit="contain",
                                     allow_preview=False, elem_id="results")
                with gr.Accordion("Results as JSON", open=False):
                    raw = gr.JSON(label="results")
    outputs = [gallery, status, raw, result_ids]
    options = [k, label, min_score, distinct]
    browse_outputs = [collection, browse_status, page, page_json, page_ids]
    show_results = dict(fn=lambda: gr.Tabs(selected="results"), inputs=None, outputs=views,
                        api_name=False, queue=False)
    # preprocess=False: the query's file reference reaches groco's decoder as sent.
    button.click(handlers.search, [query, *options], outputs, api_name="search",
                 preprocess=False).success(**show_results)
    query.upload(handlers.search, [query, *options], outputs, api_name=False,
                 preprocess=False).success(**show_results)
    item.submit(handlers.more_like_item, [item, *options], outputs,
                api_name="more_like_this").success(**show_results)
    item_button.click(handlers.more_like_item, [item, *options], outputs,
                      api_name=False).success(**show_results)
    gallery.select(handlers.more_like_clicked, [result_ids, *options], outputs,
                   api_name=False)
    collection.select(handlers.more_like_clicked, [page_ids, *options], outputs,
                      api_name=False).success(**show_results)
    page.submit(handlers.browse, [page, folder, order, seed], browse_outputs, api_name="browse")
    previous.click(lambda p, f, o, s: handlers.browse((p or 1) - 1, f, o, s),
                   [page, folder, order, seed], browse_outputs, api_name=False)
    following.click(lambda p, f, o, s: handlers.browse((p or 1) + 1, f, o, s),
                    [page, folder, order, seed], browse_outputs, api_name=False)
    for control in (folder, order):
        control.change(lambda f, o, s: handlers.browse(1, f, o, s), [folder, order, seed],
                       browse_outputs, api_name=False)
    shuffle.click(handlers.shuffle, [folder, order], [*browse_outputs, seed], api_name=False)
    # The page opens on the collection, in a new random order each time, with the facts
    # and folders of the index state being served (it may have changed since the start).
    app.load(handlers.shuffle, [folder, order], [*browse_outputs, seed], api_name=False)
    app.load(handlers.index_state, None, [facts, label, folder], api_name=False, queue=False)
