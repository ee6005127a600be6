"""The visual search web UI: a Gradio Blocks app over an :class:`groco.app.state.AppState`.

The page opens on the collection (a paged grid of thumbnails, random or folder by folder);
drop, paste or shoot an image, or click any thumbnail, and its nearest neighbours come
back, each with its similarity, path and folder label; click a result for more like it.
Tabs: "Search" (:mod:`groco.app.search_tab`), "Duplicates" (:mod:`groco.app.dupes_tab`),
"Map" (:mod:`groco.app.map_tab`, endpoint ``/map_points``) and "Curate"
(:mod:`groco.app.curate_tab`).
Named API endpoints (``gradio_client``): ``/search``, ``/more_like_this``, ``/browse``,
``/duplicates``, ``/outliers``, ``/sample``; and a plain JSON API in the same server
(:mod:`groco.app.api`).

The query's bytes reach groco's own decoder untouched: the search events run with
``preprocess=False``, so Gradio passes the upload's file reference (or a ``data:`` URL)
and :class:`groco.app.uploads.QueryDecoder` reads and decodes it, within the byte and
pixel caps; a query that is not a readable image gets a one-line message.

Safety: binds to 127.0.0.1 unless told otherwise; serves thumbnails from the index's cache
folder only (``allowed_paths``; static, so Gradio neither hashes nor copies them per
answer), never an original or any other file; reads only files in Gradio's upload folder;
every request body is capped (:mod:`groco.app.limits`); with credentials, every route
asks for them (:mod:`groco.app.auth`); at most ``settings.queue_size`` queries wait, the
rest are refused at once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import gradio as gr

from groco.app.api import json_routes
from groco.app.auth import Credentials, basic_auth
from groco.app.curate_tab import curate_tab
from groco.app.dupes_tab import dupes_tab
from groco.app.limits import body_limit
from groco.app.map_tab import map_tab
from groco.app.memory import return_large_blocks
from groco.app.search_tab import SearchHandlers, results_json, search_tab
from groco.app.settings import AppSettings
from groco.app.state import AppState

__all__ = ["SearchHandlers", "build_app", "launch_app", "results_json", "serve", "tab_urls"]

log = logging.getLogger("groco.app")

PAGE_CSS = """
#collection .grid-container, #results .grid-container {
    grid-template-columns: repeat(auto-fill, minmax(100px, 1fr)) !important;
}
"""
"""The galleries lay out as many 100 px (or wider) columns as their panel holds, instead of
Gradio's fixed count, whose minimum widths overflow a narrow panel into a sideways scroll."""

TABS = ("search", "duplicates", "map", "curate")
"""The page's tabs, each reachable at ``/?tab=NAME`` (:data:`TAB_FROM_URL`)."""
TAB_FROM_URL = """() => {
    const name = new URLSearchParams(window.location.search).get("tab");
    if (!name) return;
    const button = [...document.querySelectorAll("button[role=tab]")]
        .find(b => b.textContent.trim().toLowerCase() === name.toLowerCase());
    if (button) button.click();
}"""
"""Opens the tab a link names (``?tab=duplicates``) by clicking it, so it loads as a click
would."""


def tab_urls(url: str) -> dict[str, str]:
    """The address of each tab of the page served at ``url``."""
    base = url.rstrip("/")
    return {name: base + ("/" if name == "search" else f"/?tab={name}") for name in TABS}


ANALYTICS_EVERY = 100
"""Events between two recomputations of Gradio's monitoring summary (its default, 1,
rebuilds a pandas table of up to the last 10,000 events after every event: 10 ms each
once a server has answered that many; BENCHMARKS.md, "Serving many users")."""


def build_app(state: AppState) -> gr.Blocks:
    """The Blocks app over ``state`` (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(ANALYTICS_EVERY))
    with gr.Blocks(title="groco visual search", analytics_enabled=False) as app:
        gr.Markdown("## groco visual search\nClick any image of the collection, or drop "
                    "your own, to find its nearest neighbours; click a result for more "
                    "like it.")
        with gr.Tabs(selected="search"):
            with gr.Tab("Search", id="search"):
                search_tab(app, state)
            with gr.Tab("Duplicates", id="duplicates", elem_id="dupes-tab") as tab:
                dupes_tab(tab, state)
            with gr.Tab("Map", id="map", elem_id="map-tab") as tab:
                map_tab(tab, state)
            with gr.Tab("Curate", id="curate", elem_id="curate-tab"):
                curate_tab(state)
        app.load(None, None, None, js=TAB_FROM_URL, api_name=False)
    app.queue(default_concurrency_limit=state.settings.concurrency,
              max_size=state.settings.queue_size)
    return app


def static_first(folder: str | Path) -> None:
    """Serve ``folder``'s files as static (Gradio neither hashes nor copies them per answer),
    checked before any other static path.

    Gradio checks every file of an answer against its static paths in order, resolving both
    paths for each (two ``realpath`` calls per path tried, on the event loop); it registers
    two icons of its own first. Ours first: 2 calls a thumbnail instead of 6, so a
    12-result answer checks in about a third of the time (BENCHMARKS.md, "Serving many
    users"). Registering the folder again does not add a second entry."""
    gr.set_static_paths([folder])
    try:
        from gradio.data_classes import _StaticFiles
    except ImportError:  # another Gradio: the folder is still static, only checked later
        return
    ours = Path(folder).resolve()
    paths = _StaticFiles.all_paths
    paths[:] = [ours, *(path for path in paths if path != ours)]


def serve(state: AppState, host: str = "127.0.0.1", port: int = 7860, block: bool = True,
          credentials: Credentials | None = None, **launch_kwargs: Any,
          ) -> tuple[gr.Blocks, str]:
    """Build the app over ``state`` and serve it; returns (app, local URL). With
    ``credentials`` every route asks for them (:mod:`groco.app.auth`). Large freed
    blocks go back to the OS at once (:mod:`groco.app.memory`)."""
    return_large_blocks()
    thumbnails = str(state.thumbnails.folder.resolve())
    static_first(thumbnails)  # immutable files (named by content hash)
    app = build_app(state)
    middleware = [body_limit(state.settings.max_request_bytes)]
    if credentials is not None:
        middleware.insert(0, basic_auth(credentials))
    _, url, _ = app.launch(
        server_name=host, server_port=port,
        allowed_paths=[thumbnails],
        max_file_size=state.settings.max_upload_bytes,
        app_kwargs={"middleware": middleware, "routes": json_routes(state)},
        prevent_thread_lock=not block, quiet=True, footer_links=["api"], css=PAGE_CSS,
        **launch_kwargs)
    return app, url


def launch_app(index_dir: str | Path | list[str | Path], host: str = "127.0.0.1",
               port: int = 7860,
               encoder: str | Path | None = None, block: bool = True,
               settings: AppSettings | None = None, credentials: Credentials | None = None,
               **launch_kwargs: Any) -> tuple[gr.Blocks, str]:
    """Load the index once (several index directories: searched as one, see
    :class:`groco.app.state.AppState`), start making its thumbnails and watching for
    newer index states in the background, serve the app; returns (app, local URL)."""
    state = AppState.open(index_dir, encoder, settings)
    state.start_thumbnail_warmup()
    state.start_index_watch()
    return serve(state, host, port, block, credentials, **launch_kwargs)
