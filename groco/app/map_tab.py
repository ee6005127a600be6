"""The "Map" tab: the collection's embedding map (``groco index map``) as one picture,
coloured by cluster or by folder; hover over it for the thumbnail of the item under the
pointer, click for the items most like it, drag a box to list the items inside it; pick
a cluster to see its representatives and a sample of it.

The map is drawn on the server into a PNG, redrawn only when the colouring changes: the
browser gets one image whatever the map's size, never the points, so it has nothing to
draw point by point. Up to :data:`MAX_DRAWN` points are drawn; past that a uniform
sample of them (the server's drawing time grows with the points: about 0.8 s at 1M on
one core), and the page says so. A pointer position (hover, click) is turned back into
picture pixels and the nearest *drawn* item is found by a 2D tree search; a box
selects *every* item inside it, drawn or not. "More like this" then runs like
everywhere in the app. The browser side is :mod:`groco.app.map_js`. The tab reads the
stored map (:meth:`groco.index.api.IndexReader.read_map`) and thumbnails only.

Named API endpoint ``/map_points`` (``gradio_client``): ``(max_points, seed) ->
{"count", "shown", "sampled", "clusters", "points": [{"id", "relpath", "x", "y",
"cluster", "label"}]}``, a uniform sample of ``max_points`` when the map holds more.
"""

from __future__ import annotations

import threading
import time
from functools import lru_cache
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw
from scipy.spatial import cKDTree

from groco.app.api import file_url
from groco.app.map_js import MAP_CSS, MAP_HTML, MAP_JS
from groco.app.state import AppState
from groco.app.uploads import UploadError
from groco.index.api import MapData

WIDTH, HEIGHT, PAD = 960, 720, 16
MAX_API_POINTS = 200_000
"""The most points one ``/map_points`` answer carries (a uniform sample beyond)."""
CLUSTER_SAMPLE = 24
"""Items of a cluster shown after its representatives."""
MAX_DRAWN = 1_000_000
"""The most points drawn in the picture (a uniform sample beyond, said on the page)."""
HOVER_PX = 8.0
"""How near (picture pixels) the pointer must be to a drawn point to show its thumbnail."""
BOX_SHOWN = 96
"""The most items of a box shown in the gallery (a uniform sample of them beyond)."""
PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
], dtype=np.uint8)
COLOUR_BY = ("cluster", "folder")


def dot_size(n: int) -> int:
    """Side in pixels of a point's square: larger while few points share the picture."""
    return 5 if n <= 5_000 else 3 if n <= 50_000 else 2


class MapView:
    """A stored map and how it is drawn: pixel <-> map coordinates, the nearest item."""

    def __init__(self, data: MapData, max_drawn: int | None = None) -> None:
        self.data = data
        lo, hi = data.xy.min(axis=0), data.xy.max(axis=0)
        span = np.maximum(hi - lo, 1e-6)
        self.lo = lo
        self.scale = float(min((WIDTH - 2 * PAD) / span[0], (HEIGHT - 2 * PAD) / span[1]))
        self.pixels = self.to_pixels(data.xy)
        limit = MAX_DRAWN if max_drawn is None else max_drawn
        n = len(data.ids)
        self.drawn = (np.arange(n) if n <= limit else
                      np.sort(np.random.default_rng(0).choice(n, limit, replace=False)))
        """Rows drawn in the picture: every row, or a uniform sample of ``MAX_DRAWN``."""
        self._tree: cKDTree | None = None
        self._tree_lock = threading.Lock()
        self._draw = lru_cache(maxsize=len(COLOUR_BY))(self._render)

    @property
    def sampled(self) -> bool:
        return len(self.drawn) < len(self.data.ids)

    def to_pixels(self, xy: np.ndarray) -> np.ndarray:
        """Image coordinates (x right, y down) of map points."""
        px = PAD + (xy[:, 0] - self.lo[0]) * self.scale
        py = HEIGHT - PAD - (xy[:, 1] - self.lo[1]) * self.scale
        return np.stack([px, py], axis=1)

    def nearest(self, px: float, py: float, within: float = np.inf) -> int | None:
        """Row of the drawn item nearest the image pixel ``(px, py)``; ``None`` when none
        is within ``within`` pixels."""
        with self._tree_lock:
            if self._tree is None:  # built on the first pointer event, not on load
                self._tree = cKDTree(self.pixels[self.drawn])
        distance, k = self._tree.query([px, py], distance_upper_bound=within)
        return None if not np.isfinite(distance) else int(self.drawn[k])

    def in_box(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Rows of every item (drawn or not) whose pixel lies in the box, corners
        included, in id order."""
        (x0, x1), (y0, y1) = sorted((x0, x1)), sorted((y0, y1))
        px, py = self.pixels[:, 0], self.pixels[:, 1]
        return np.flatnonzero((px >= x0) & (px <= x1) & (py >= y0) & (py <= y1))

    def image(self, colour_by: str) -> Image.Image:
        return self._draw(colour_by if colour_by in COLOUR_BY else "cluster")

    def _render(self, colour_by: str) -> Image.Image:
        codes = self.data.cluster if colour_by == "cluster" else self.data.label
        colours = np.where((codes >= 0)[:, None], PALETTE[codes % len(PALETTE)],
                           np.uint8(90))
        canvas = np.full((HEIGHT, WIDTH, 3), 255, dtype=np.uint8)
        px = np.clip(self.pixels.round().astype(np.int64), 0, [WIDTH - 1, HEIGHT - 1])
        # the drawn rows in a shuffled order: no class drawn on top of the others
        order = self.drawn[np.random.default_rng(0).permutation(len(self.drawn))]
        side = dot_size(len(order))
        for dx, dy in ((dx, dy) for dx in range(side) for dy in range(side)):
            x = np.clip(px[order, 0] + dx - side // 2, 0, WIDTH - 1)
            y = np.clip(px[order, 1] + dy - side // 2, 0, HEIGHT - 1)
            canvas[y, x] = colours[order]
        image = Image.fromarray(canvas)
        draw = ImageDraw.Draw(image)
        if colour_by == "folder":  # legend, top left
            for n, name in enumerate(self.data.label_names[:len(PALETTE)]):
                colour = tuple(int(c) for c in PALETTE[n])
                draw.rectangle((4, 4 + 14 * n, 13, 13 + 14 * n), fill=colour)
                draw.text((18, 3 + 14 * n), name, fill=(0, 0, 0))
        else:
            for fact in self.data.clusters:
                if fact["x"] is None:
                    continue
                cx, cy = self.to_pixels(np.array([[fact["x"], fact["y"]]]))[0]
                draw.text((cx, cy), str(fact["id"]), fill=(0, 0, 0), anchor="mm")
        return image


class MapHandlers:
    """The tab's event functions over one :class:`AppState` (the map is read on first use
    and again when ``map.json`` changes)."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.index_dir = state.searcher.index_dir
        self._lock = threading.Lock()
        self._view: MapView | None = None
        self._stamp: float | None = None
        self._points: dict[str, Any] | None = None

    def thumbnail(self, row):
        """The cached thumbnail of a metadata row (``None`` when it cannot be decoded)."""
        return self.state.thumbnails.path_for(self.state.searcher.root / row.path, row.hash)

    def view(self) -> MapView | None:
        """The current map's view, ``None`` when the index has no map."""
        stamp = self.state.searcher.map_stamp()
        if stamp is None:
            return None
        with self._lock:
            if self._view is None or stamp != self._stamp:
                self._view, self._stamp, self._points = \
                    MapView(self.state.searcher.read_map()), stamp, None
            return self._view

    def describe(self, view: MapView | None) -> str:
        if view is None:
            return (f"No map of this index yet: run `groco index map {self.index_dir}` "
                    "(needs `pip install 'groco[map]'`), then reload the page.")
        info = view.data.info
        placed = (f", {info['placed']} placed on it since its layout"
                  if info.get("placed") else "")
        advice = " (a recompute would be better)" if info.get("recompute_advised") else ""
        drawn = (f"**a uniform sample of {len(view.drawn):,} drawn** (more would slow the "
                 "drawing; a box still selects every item in it)" if view.sampled
                 else "every item drawn")
        return (f"**{len(view.data.ids):,} items** in {len(view.data.centroids)} clusters, "
                f"{drawn}; laid out {info.get('computed_at', '?')}{placed}{advice}. "
                "Hover over a point for its thumbnail, click it for more like it, drag a "
                "box to list the items inside.")

    def cluster_choices(self, view: MapView | None) -> list[tuple[str, int]]:
        if view is None:
            return []
        choices = []
        for fact in view.data.clusters:
            label = (f" · mostly {fact['label']} ({fact['label_count'] / fact['size']:.0%})"
                     if fact.get("label") and fact["size"] else "")
            choices.append((f"cluster {fact['id']} · {fact['size']:,} items{label}",
                            fact["id"]))
        return choices

    def load(self, colour_by: str):
        """(map image, description, cluster choices) when the tab opens."""
        view = self.view()
        image = None if view is None else view.image(colour_by)
        return (image, self.describe(view),
                gr.update(choices=self.cluster_choices(view), value=None))

    def redraw(self, colour_by: str):
        view = self.view()
        return None if view is None else view.image(colour_by)

    def click(self, k: float, evt: gr.SelectData):
        """(gallery, status, ids) of the items most like the one under the click."""
        view = self.view()
        if view is None or not isinstance(evt.index, (list, tuple)) or len(evt.index) < 2:
            raise gr.Error("No map to click on.")
        started = time.perf_counter()
        item = int(view.data.ids[view.nearest(float(evt.index[0]), float(evt.index[1]))])
        try:
            results = self.state.more_like(self.state.offset + item, k)  # the union's id
            row = self.state.searcher.row(item)
        except UploadError as error:
            raise gr.Error(str(error)) from None
        seconds = time.perf_counter() - started
        status = (f"{len(results)} neighbours of `{row.path}` (the item under the click) "
                  f"in {seconds * 1000:.0f} ms")
        thumb = self.thumbnail(row)
        origin = [] if thumb is None else [(str(thumb), f"clicked · {row.path}")]
        return origin + self.state.gallery(results), status, [item] + [r.id for r in results]

    def hover(self, px: float, py: float) -> dict[str, Any] | None:
        """The drawn item within :data:`HOVER_PX` of the picture pixel ``(px, py)``:
        ``{"id", "relpath", "caption", "thumbnail"}`` (a URL this server serves from the
        thumbnail cache; ``None`` when it cannot be decoded), or ``None`` for no item."""
        view = self.view()
        try:
            x, y = float(px), float(py)
        except (TypeError, ValueError):
            return None
        if view is None or not (np.isfinite(x) and np.isfinite(y)):
            return None
        p = view.nearest(x, y, within=HOVER_PX)
        if p is None:
            return None
        row = self.state.searcher.row(int(view.data.ids[p]))
        thumb = self.thumbnail(row)
        label = f"{row.label} · " if row.label else ""
        return {"id": row.id, "relpath": row.path,
                "caption": f"{label}cluster {int(view.data.cluster[p])} · {row.path}",
                "thumbnail": None if thumb is None else file_url(thumb)}

    def box(self, evt: gr.EventData):
        """(gallery, status, ids) of the items inside a box dragged on the picture
        (``evt.box``: ``[x0, y0, x1, y1]`` in picture pixels), at most
        :data:`BOX_SHOWN` of them (a uniform sample beyond)."""
        view = self.view()
        try:
            x0, y0, x1, y1 = (float(v) for v in evt.box)
        except (AttributeError, TypeError, ValueError):
            raise gr.Error("A box needs four corners.") from None
        if view is None:
            raise gr.Error("No map to select on.")
        rows = view.in_box(x0, y0, x1, y1)
        shown = rows
        if len(rows) > BOX_SHOWN:
            rng = np.random.default_rng(len(rows))
            shown = np.sort(rng.choice(rows, BOX_SHOWN, replace=False))
        ids = [int(i) for i in view.data.ids[shown]]
        items = []
        for item in ids:
            row = self.state.searcher.row(item)
            thumb = self.thumbnail(row)
            if thumb is not None:
                label = f"{row.label} · " if row.label else ""
                items.append((str(thumb), f"{label}{row.path}"))
        which = (f"a uniform sample of {len(shown)} shown" if len(shown) < len(rows)
                 else "all shown")
        status = (f"{len(rows):,} items in the box ({which}); click one of them on the map "
                  "for more like it" if len(rows) else "no item in the box")
        return items, status, ids

    def cluster(self, cluster: int | None):
        """(gallery, status, ids): a cluster's representatives, then a sample of it."""
        view = self.view()
        if view is None or cluster is None:
            return [], "", []
        fact = view.data.clusters[int(cluster)]
        reps = [r["id"] for r in fact.get("representatives", [])]
        members = view.data.ids[view.data.cluster == int(cluster)]
        rest = np.setdiff1d(members, reps)
        rng = np.random.default_rng(int(cluster))
        sample = rng.choice(rest, size=min(CLUSTER_SAMPLE, len(rest)), replace=False).tolist()
        ids = reps + [int(i) for i in sample]
        items = []
        for n, item in enumerate(ids):
            row = self.state.searcher.row(item)
            thumb = self.thumbnail(row)
            if thumb is not None:
                kind = "representative" if n < len(reps) else "member"
                items.append((str(thumb), f"{kind} · {row.path}"))
        status = (f"cluster {fact['id']}: {fact['size']:,} items; its {len(reps)} "
                  f"representatives (nearest its centre), then {len(sample)} others")
        return items, status, ids

    def points(self, max_points: int = 10_000, seed: int = 0) -> dict[str, Any]:
        """The map's points (a uniform sample of ``max_points`` beyond that) and clusters."""
        view = self.view()
        if view is None:
            raise gr.Error(f"No map of this index yet: run `groco index map {self.index_dir}`.")
        try:
            limit = int(max_points)
        except (TypeError, ValueError):
            raise gr.Error(f"max_points must be a number, got {max_points!r}.") from None
        if not 1 <= limit <= MAX_API_POINTS:
            raise gr.Error(f"max_points must be in 1..{MAX_API_POINTS}, got {limit}.")
        with self._lock:
            if self._points is None:
                self._points = {"items": list(self.state.searcher.map_items(view.data))}
            items = self._points["items"]
        keep = range(len(items))
        if len(items) > limit:
            keep = np.sort(np.random.default_rng(int(seed)).choice(len(items), limit,
                                                                   replace=False)).tolist()
        shown = [{k: v for k, v in items[i].items() if k != "path"} for i in keep]
        return {"count": len(items), "shown": len(shown), "sampled": len(shown) < len(items),
                "clusters": view.data.clusters, "points": shown}


def map_tab(tab: gr.Tab, state: AppState) -> MapHandlers:
    """Lay out the tab's components and wire its events (inside the tab's context)."""
    handlers = MapHandlers(state)
    with gr.Row():
        colour_by = gr.Radio(list(COLOUR_BY), value="cluster", label="Colour by",
                             elem_id="map-colour", scale=1)
        k = gr.Slider(1, state.settings.max_k, value=min(12, state.settings.max_k), step=1,
                      label="Neighbours", elem_id="map-k", scale=1)
        cluster = gr.Dropdown([], label="Cluster", elem_id="map-cluster", scale=2)
    summary = gr.Markdown("", elem_id="map-status")
    picture = gr.Image(label="Map", interactive=False, show_label=False, type="pil",
                       elem_id="map-image", format="png")
    def hover(point: list[float]) -> dict[str, Any] | None:
        """``server.hover([x, y])`` from the page: Gradio hands a server function its
        arguments as one list (and marks it by an attribute, so no bound method)."""
        try:
            px, py = point
        except (TypeError, ValueError):
            return None
        return handlers.hover(px, py)

    overlay = gr.HTML(MAP_HTML, html_template="${value}", css_template=MAP_CSS,
                      js_on_load=MAP_JS, server_functions=[hover], elem_id="map-overlay",
                      container=False, padding=False)
    status = gr.Markdown("", elem_id="map-result-status")
    gallery = gr.Gallery(label="Items", columns=8, height="auto", object_fit="contain",
                         allow_preview=False, elem_id="map-gallery")
    ids = gr.State([])
    tab.select(handlers.load, colour_by, [picture, summary, cluster], api_name=False)
    colour_by.change(handlers.redraw, colour_by, picture, api_name=False)
    picture.select(handlers.click, k, [gallery, status, ids], api_name=False)
    cluster.change(handlers.cluster, cluster, [gallery, status, ids], api_name=False)
    overlay.submit(handlers.box, None, [gallery, status, ids], api_name=False)
    gr.api(handlers.points, api_name="map_points")
    return handlers

