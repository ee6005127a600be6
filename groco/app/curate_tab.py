"""The "Curate" tab: the collection's most unusual items and a sample that covers it
(:mod:`groco.index.curate`, as ``groco index curate``), as thumbnails; click one for the
items most like it.

Outliers read the index's stored neighbour graph (``groco index graph``, also built by
``groco index dupes`` and ``groco index map``); without a current one the tab says which
command makes it (the server only reads the index directory). The sample reads the stored
embeddings. Named API endpoints: ``/outliers`` (count, score) → (gallery, status) and
``/sample`` (count, seed) → (gallery, status).
"""

from __future__ import annotations

import time

import gradio as gr

from groco.app.state import AppState
from groco.app.uploads import UploadError
from groco.index.api import DEFAULT_SCORE, SCORES, CuratedFile, IndexDirError

MAX_COUNT = 200
"""The most outliers or sample items the tab shows at once."""
SCORE_HELP = {"lof": "against its neighbourhood", "knn": "distance to its nearest",
              "weighted": "distance to its nearest three", "global": "against the collection"}


class CurateHandlers:
    """The tab's event functions over one :class:`AppState`."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def _count(self, count: float | int) -> int:
        try:
            value = int(count)
        except (TypeError, ValueError):
            raise gr.Error(f"How many must be a whole number, got {count!r}") from None
        if not 1 <= value <= MAX_COUNT:
            raise gr.Error(f"How many must be 1 to {MAX_COUNT}, got {value}")
        return value

    def _tiles(self, files: list[CuratedFile], caption) -> tuple[list[tuple[str, str]],
                                                                  list[int]]:
        items, ids = [], []
        for f in files:
            item = self.state.offset + f.id  # the union's id when serving several
            thumb, _ = self.state.thumbnail(item)
            if thumb is not None:
                items.append((str(thumb), caption(f)))
                ids.append(item)
        return items, ids

    def outliers(self, count: float, score: str):
        """(gallery, status, ids): the ``count`` most unusual items by ``score``."""
        n = self._count(count)
        started = time.perf_counter()
        try:
            files = self.state.searcher.outliers(n, score or DEFAULT_SCORE)
        except (IndexDirError, ValueError) as error:
            raise gr.Error(str(error)) from None
        items, ids = self._tiles(files, lambda f: f"{f.score:.3f} · {f.relpath} · nearest "
                                                  f"{f.nearest_relpath}")
        status = (f"the {len(files)} most unusual items ({score} score: "
                  f"{SCORE_HELP.get(score, score)}), most unusual first · "
                  f"{(time.perf_counter() - started) * 1000:.0f} ms")
        return items, status, ids

    def sample(self, count: float, seed: float):
        """(gallery, status, ids): ``count`` items that cover the collection."""
        n = self._count(count)
        started = time.perf_counter()
        try:
            report = self.state.searcher.sample(n, int(seed or 0))
        except (IndexDirError, ValueError) as error:
            raise gr.Error(str(error)) from None
        items, ids = self._tiles(report.files, lambda f: f.relpath)
        status = (f"{len(report.files)} of {report.count:,} items, each the farthest from "
                  f"the earlier picks; every item is within cosine distance "
                  f"{report.radius:.3f} of one (a random sample: {report.random_radius:.3f})"
                  f" · {(time.perf_counter() - started) * 1000:.0f} ms")
        return items, status, ids

    def more_like(self, ids: list[int], k: float, evt: gr.SelectData):
        """(gallery, status) of the items most like the clicked one."""
        if not ids or evt.index is None or not 0 <= int(evt.index) < len(ids):
            raise gr.Error("Click an item first.")
        item = ids[int(evt.index)]
        try:
            results = self.state.more_like(item, k)
            row = self.state.row(item)
        except UploadError as error:
            raise gr.Error(str(error)) from None
        return (self.state.gallery(results),
                f"{len(results)} items most like `{row.path}`")


def curate_tab(state: AppState) -> CurateHandlers:
    """Lay out the tab's components and wire its events (inside the tab's context)."""
    handlers = CurateHandlers(state)
    gr.Markdown("What the collection holds: its **most unusual items** (by default each "
                "scored by its distance to a sample of the whole collection) and "
                "a **sample that covers it** (each pick the item farthest from the earlier "
                "ones). Click an item for the items most like it.")
    with gr.Row():
        count = gr.Number(24, minimum=1, maximum=MAX_COUNT, precision=0, label="How many",
                          elem_id="curate-count", scale=1)
        score = gr.Dropdown(list(SCORES), value=DEFAULT_SCORE, label="Outlier score",
                            elem_id="curate-score", scale=1)
        seed = gr.Number(0, precision=0, label="Sample seed", elem_id="curate-seed", scale=1)
        k = gr.Slider(1, state.settings.max_k, value=min(12, state.settings.max_k), step=1,
                      label="Neighbours of a clicked item", elem_id="curate-k", scale=2)
    with gr.Row():
        outliers = gr.Button("Most unusual", elem_id="curate-outliers")
        sample = gr.Button("Sample that covers it", elem_id="curate-sample")
    status = gr.Markdown("", elem_id="curate-status")
    gallery = gr.Gallery(label="Items", columns=8, height="auto", object_fit="contain",
                         allow_preview=False, elem_id="curate-gallery")
    like_status = gr.Markdown("", elem_id="curate-like-status")
    like = gr.Gallery(label="Most like the clicked item", columns=8, height="auto",
                      object_fit="contain", allow_preview=False, elem_id="curate-like")
    ids = gr.State([])
    outliers.click(handlers.outliers, [count, score], [gallery, status, ids],
                   api_name="outliers")
    sample.click(handlers.sample, [count, seed], [gallery, status, ids], api_name="sample")
    gallery.select(handlers.more_like, [ids, k], [like, like_status], api_name=False)
    return handlers
