"""The "Duplicates" tab: near-duplicate groups of the collection at a threshold the user
sets with a slider, their thumbnails, and the list to download as JSON or CSV.

The index is scanned once, when the tab is first opened (:class:`groco.app.duplicates.
Duplicates`); moving the slider regroups in milliseconds. Named API endpoint
``/duplicates``: (threshold) → (summary, gallery, groups table, JSON file, CSV file).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import gradio as gr

from groco.app.duplicates import Duplicates
from groco.app.state import AppState
from groco.index.api import DuplicateGroup

SHOWN_GROUPS = 60
"""Groups shown as thumbnails (the table and the exports hold them all) ..."""
SHOWN_PER_GROUP = 8
"""... at most this many files of each ..."""
SHOWN_FILES = 160
"""... and this many in all."""
TABLE_ROWS = 500
"""Files listed in the table at most."""
TABLE_COLUMNS = ["group", "size", "score", "exact", "relpath"]


class DuplicateHandlers:
    """The tab's event function over one :class:`AppState`."""

    def __init__(self, state: AppState, duplicates: Duplicates | None = None) -> None:
        self.state = state
        self.duplicates = duplicates or Duplicates(state.searcher)
        self.folder = Path(tempfile.mkdtemp(prefix="groco-dupes-"))

    def gallery(self, groups: list[DuplicateGroup]) -> list[tuple[str, str]]:
        items: list[tuple[str, str]] = []
        for number, group in enumerate(groups[:SHOWN_GROUPS], 1):
            for n, f in enumerate(group.files[:SHOWN_PER_GROUP]):
                if len(items) >= SHOWN_FILES:
                    return items
                thumb = self.state.thumbnails.path_for(f.path, f.hash)
                if thumb is not None:
                    kind = "=" if f.exact else f"{f.score:.3f}"
                    more = (f" (+{group.size - SHOWN_PER_GROUP} more)"
                            if n == SHOWN_PER_GROUP - 1 < group.size - 1 else "")
                    items.append((str(thumb),
                                  f"group {number} · {kind} · {f.relpath}{more}"))
        return items

    @staticmethod
    def table(groups: list[DuplicateGroup]) -> list[list]:
        rows = []
        for number, group in enumerate(groups, 1):
            for f in group.files:
                rows.append([number, group.size, round(f.score, 4), f.exact, f.relpath])
                if len(rows) >= TABLE_ROWS:
                    return rows
        return rows

    def show(self, threshold: float):
        """(summary, gallery items, table rows, JSON path, CSV path) at ``threshold``."""
        started = time.perf_counter()
        try:
            value = self.duplicates.check(threshold)
            groups = self.duplicates.groups(value)
        except ValueError as error:
            raise gr.Error(str(error)) from None
        json_path, csv_path = self.duplicates.export(groups, self.folder, value)
        copies = sum(g.size - 1 for g in groups)
        seconds = time.perf_counter() - started
        shown = (f" (thumbnails of the first {SHOWN_GROUPS}, up to {SHOWN_PER_GROUP} "
                 "files each)" if len(groups) > SHOWN_GROUPS else "")
        summary = (f"**{len(groups)} groups** at cosine ≥ {value:.3f}, {copies} copies "
                   f"beyond the first file of each{shown} · {seconds * 1000:.0f} ms")
        return (summary, self.gallery(groups), self.table(groups), str(json_path),
                str(csv_path))


def dupes_tab(tab: gr.Tab, state: AppState, duplicates: Duplicates | None = None) -> None:
    """Lay out the tab's components and wire its events (inside the tab's context)."""
    handlers = DuplicateHandlers(state, duplicates)
    found = handlers.duplicates
    gr.Markdown("Groups of copies, largest first, as `groco index dupes` finds them: each "
                "file is a byte copy of the group's first file or its embedding's cosine "
                "similarity to it is at or above the threshold.")
    with gr.Row():
        threshold = gr.Slider(found.floor, 1.0, value=found.default, step=0.005,
                              label="Threshold (cosine similarity)", elem_id="dupes-threshold",
                              scale=3)
        json_file = gr.DownloadButton("Download JSON", elem_id="dupes-json", scale=1)
        csv_file = gr.DownloadButton("Download CSV", elem_id="dupes-csv", scale=1)
    summary = gr.Markdown("", elem_id="dupes-status")
    gallery = gr.Gallery(label="Groups", columns=8, height="auto", object_fit="contain",
                         allow_preview=False, elem_id="dupes")
    table = gr.Dataframe(headers=TABLE_COLUMNS, label="Files", interactive=False,
                         wrap=True, elem_id="dupes-table")
    outputs = [summary, gallery, table, json_file, csv_file]
    threshold.change(handlers.show, threshold, outputs, api_name="duplicates",
                     trigger_mode="always_last")
    tab.select(handlers.show, threshold, outputs, api_name=False)
