"""The near-duplicate groups the app shows (no Gradio here): one scan of the index at a
floor, regrouped at the slider's threshold, exported as JSON or CSV, with their review
list (:mod:`groco.index.curate.review`: per group the file to keep by a rule, the others
as copies to remove?).

The scan (:meth:`groco.index.api.IndexReader.duplicate_scan`, a k-NN graph, never N x N)
runs once, on first use, over the server's loaded index; every threshold from ``floor`` to 1 then
regroups its pairs in milliseconds. The export holds every group at the threshold, in
the format of ``groco index dupes --json`` / ``--csv`` (without absolute paths: the app
names files by their path relative to the images root).
"""

from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path
from typing import Any

from groco.fileio import atomic_path
from groco.index.api import DuplicateGroup, DuplicateScan, IndexReader, ReviewEntry, review_csv

FLOOR = 0.8
"""The lowest threshold the app's slider offers (the scan keeps pairs from here up)."""
CSV_COLUMNS = ["group", "group_size", "relpath", "score", "exact", "label", "hash", "bytes"]


def group_dicts(groups: list[DuplicateGroup]) -> list[dict[str, Any]]:
    """The JSON export: ``groco index dupes --json``'s groups, files without ``path``."""
    out = []
    for group in groups:
        entry = group.to_dict()
        entry["files"] = [{k: v for k, v in f.items() if k != "path"} for f in entry["files"]]
        out.append(entry)
    return out


def groups_csv(groups: list[DuplicateGroup]) -> str:
    """The CSV export: one row a file, ``groco index dupes --csv``'s columns but ``path``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for number, group in enumerate(groups, 1):
        for f in group.files:
            writer.writerow([number, group.size, f.relpath, f"{f.score:.6f}", int(f.exact),
                             f.label or "", f.hash, f.size])
    return buffer.getvalue()


class Duplicates:
    """The groups of one served index at any threshold in ``[floor, 1]`` (thread-safe)."""

    def __init__(self, searcher: IndexReader, floor: float = FLOOR,
                 default: float | None = None) -> None:
        self.searcher = searcher
        self.floor = float(floor)
        if default is None:  # the index's calibration for its encoder, else groco's default
            default = searcher.near_copy_threshold()
        self.default = max(float(default), self.floor)
        """The slider's first value."""
        self._scan: DuplicateScan | None = None
        self._scanned_generation = -1
        self._lock = threading.Lock()

    def scan(self) -> DuplicateScan:
        """The index's candidate pairs at ``floor`` (scanned on the first call, and again
        after the reader switched to a newer index state)."""
        with self._lock:
            if self._scan is None or self._scanned_generation != self.searcher.generation:
                self._scanned_generation = self.searcher.generation
                self._scan = self.searcher.duplicate_scan(self.floor)
            return self._scan

    def check(self, threshold: float | int | None) -> float:
        if threshold is None:
            return self.default
        try:
            value = float(threshold)
        except (TypeError, ValueError):
            raise ValueError(f"threshold must be a number, got {threshold!r}") from None
        if not self.floor <= value <= 1.0:
            raise ValueError(f"threshold must be in [{self.floor:g}, 1], got {value:g}")
        return value

    def groups(self, threshold: float | int | None = None) -> list[DuplicateGroup]:
        """The groups at ``threshold`` (default: ``default``), largest first."""
        return self.scan().groups(self.check(threshold))

    def review(self, groups: list[DuplicateGroup], rule: str) -> list[ReviewEntry]:
        """The groups' review list: each group's keeper by ``rule``, the others exact or
        near copies (``ValueError`` for an unknown rule)."""
        return self.searcher.review(groups, rule)

    def export(self, groups: list[DuplicateGroup], folder: str | Path, threshold: float,
               review: list[ReviewEntry], rule: str) -> tuple[Path, Path, Path]:
        """Write the groups as ``duplicates-T.json`` and ``duplicates-T.csv`` and the review
        list as ``review-T-RULE.csv`` in ``folder``; returns the three paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"duplicates-{threshold:.3f}"
        json_path, csv_path = folder / f"{stem}.json", folder / f"{stem}.csv"
        review_path = folder / f"review-{threshold:.3f}-{rule}.csv"
        for path, text in ((json_path, json.dumps(group_dicts(groups), indent=2)),
                           (csv_path, groups_csv(groups)),
                           (review_path, review_csv(review, paths=False))):
            with atomic_path(path) as tmp:
                Path(tmp).write_text(text)
        return json_path, csv_path, review_path
