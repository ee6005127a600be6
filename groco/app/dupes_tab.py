"""The "Duplicates" tab: near-duplicate groups of the collection at a threshold the user
sets with a slider, their thumbnails, the review list (per group the file to keep by the
rule the user picks, the others as copies to remove?), and downloads of the groups (JSON,
CSV) and of the review list (CSV). groco never deletes or moves a file.

The index is scanned once, when the tab is first opened (:class:`groco.app.duplicates.
Duplicates`); moving the slider regroups in milliseconds. The slider starts at the
index's calibrated near-copy threshold (``groco index dupes --calibrate``) when it has
one. Named API endpoint ``/duplicates``: (threshold, keep rule) → (summary, gallery,
review table, JSON file, CSV file, review CSV file).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import gradio as gr

from groco.app.duplicates import Duplicates
from groco.app.state import AppState
from groco.index.api import KEEP_RULES, DuplicateGroup, ReviewEntry

SHOWN_GROUPS = 60
"""Groups shown as thumbnails (the table and the exports hold them all) ..."""
SHOWN_PER_GROUP = 8
"""... at most this many files of each ..."""
SHOWN_FILES = 160
"""... and this many in all."""
TABLE_ROWS = 500
"""Files listed in the table at most."""
TABLE_COLUMNS = ["group", "action", "tier", "score", "relpath", "copy of"]


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
    def table(review: list[ReviewEntry]) -> list[list]:
        return [[e.group, e.action, e.tier, round(e.file.score, 4), e.file.relpath,
                 e.copy_of or ""] for e in review[:TABLE_ROWS]]

    def show(self, threshold: float, keep: str = KEEP_RULES[0]):
        """(summary, gallery items, review table rows, JSON path, CSV path, review CSV
        path) at ``threshold``, each group keeping one file by the rule ``keep``."""
        started = time.perf_counter()
        try:
            value = self.duplicates.check(threshold)
            groups = self.duplicates.groups(value)
            review = self.duplicates.review(groups, keep or KEEP_RULES[0])
        except ValueError as error:
            raise gr.Error(str(error)) from None
        paths = self.duplicates.export(groups, self.folder, value, review, keep)
        copies = sum(g.size - 1 for g in groups)
        seconds = time.perf_counter() - started
        shown = (f" (thumbnails of the first {SHOWN_GROUPS}, up to {SHOWN_PER_GROUP} "
                 "files each)" if len(groups) > SHOWN_GROUPS else "")
        summary = (f"**{len(groups)} groups** at cosine ≥ {value:.3f}, {copies} copies "
                   f"beyond the file each keeps (by {keep}){shown} · "
                   f"{seconds * 1000:.0f} ms")
        return (summary, self.gallery(groups), self.table(review), *map(str, paths))


def dupes_tab(tab: gr.Tab, state: AppState, duplicates: Duplicates | None = None) -> None:
    """Lay out the tab's components and wire its events (inside the tab's context)."""
    handlers = DuplicateHandlers(state, duplicates)
    found = handlers.duplicates
    gr.Markdown("Groups of copies, largest first, as `groco index dupes --review` finds "
                "them: each file is a byte copy of the group's first file or its "
                "embedding's cosine similarity to it is at or above the threshold. Each "
                "group keeps one file by the rule chosen; the others are listed as copies "
                "to remove. groco never deletes or moves a file.")
    with gr.Row():
        threshold = gr.Slider(found.floor, 1.0, value=found.default, step=0.005,
                              label="Threshold (cosine similarity)", elem_id="dupes-threshold",
                              scale=3)
        keep = gr.Dropdown(list(KEEP_RULES), value=KEEP_RULES[0], label="Keep the file with",
                           info="most pixels, most bytes, oldest, or first path",
                           elem_id="dupes-keep", scale=1)
    with gr.Row():
        json_file = gr.DownloadButton("Download groups (JSON)", elem_id="dupes-json")
        csv_file = gr.DownloadButton("Download groups (CSV)", elem_id="dupes-csv")
        review_file = gr.DownloadButton("Download review list (CSV)", elem_id="dupes-review")
    summary = gr.Markdown("", elem_id="dupes-status")
    gallery = gr.Gallery(label="Groups", columns=8, height="auto", object_fit="contain",
                         allow_preview=False, elem_id="dupes")
    table = gr.Dataframe(headers=TABLE_COLUMNS, label="Review list", interactive=False,
                         wrap=True, elem_id="dupes-table")
    outputs = [summary, gallery, table, json_file, csv_file, review_file]
    threshold.change(handlers.show, [threshold, keep], outputs, api_name="duplicates",
                     trigger_mode="always_last")
    keep.change(handlers.show, [threshold, keep], outputs, api_name=False)
    tab.select(handlers.show, [threshold, keep], outputs, api_name=False)
