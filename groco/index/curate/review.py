"""The duplicates review list: in each cluster of look-alikes, the file to keep by a rule
the user picks, its exact and near copies as candidates to remove, and the similar images
to look at. groco never deletes or moves a file: the list is for the user.

Two thresholds, ``near`` >= ``similar``, give two nested partitions:

- *copy groups*: the duplicate groups at ``near`` (:mod:`groco.index.dupes`: byte copies,
  and files scoring >= ``near`` with their group's representative). Each keeps one file
  by the rule; every other member is ``exact`` (the keeper's content hash) or ``near``,
  with the action ``remove?``.
- *clusters*: the groups at ``similar``, with each copy group moved whole into the cluster
  of its representative (so a cluster is a union of copy groups and single files). In a
  cluster, the keeper of the best copy group by the rule is the cluster's keeper; the
  keepers of its other copy groups, and its single files, are ``similar`` to it, with the
  action ``review``.

Keep rules (ties go to the next rule, then the path): ``pixels`` (most pixels, read from
the image header), ``bytes`` (largest file), ``oldest`` (earliest modification time on
disk), ``path`` (first path in sort order).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..dupes import DuplicateFile, DuplicateGroup

KEEP_RULES = ("pixels", "bytes", "oldest", "path")
CSV_COLUMNS = ["group", "action", "tier", "relpath", "copy_of", "score", "bytes", "pixels",
               "mtime", "path"]
TIERS = ("exact", "near", "similar")


@dataclass(frozen=True)
class ReviewEntry:
    """One file of the review list."""

    group: int
    """1-based cluster number, largest clusters first."""
    file: DuplicateFile
    tier: str
    """``keep`` for the cluster's keeper, else one of :data:`TIERS`."""
    action: str
    """``keep``, ``remove?`` (exact or near copy of ``copy_of``) or ``review``."""
    copy_of: str | None
    """Relative path of the keeper this file is a copy of (``exact``, ``near``) or similar
    to (``similar``: the cluster's keeper); ``None`` for the cluster's keeper."""
    pixels: int | None
    mtime: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "action": self.action, "tier": self.tier,
                "copy_of": self.copy_of, "pixels": self.pixels, "mtime": self.mtime,
                **self.file.to_dict()}


def _pixels(path: str) -> int | None:
    try:
        with Image.open(path) as image:
            return image.size[0] * image.size[1]
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _check_rule(rule: str) -> None:
    if rule not in KEEP_RULES:
        raise ValueError(f"keep rule must be one of {', '.join(KEEP_RULES)}, got {rule!r}")


def keeper(files: list[DuplicateFile], rule: str, pixels: dict[int, int | None],
           mtimes: dict[int, float | None]) -> DuplicateFile:
    """The file ``rule`` keeps (module docstring); ``ValueError`` for an unknown rule."""
    _check_rule(rule)
    order = KEEP_RULES[KEEP_RULES.index(rule):]

    def key(f: DuplicateFile) -> tuple:
        parts: list[Any] = []
        for r in order:
            if r == "pixels":
                parts.append(-(pixels.get(f.id) or 0))
            elif r == "bytes":
                parts.append(-f.size)
            elif r == "oldest":
                found = mtimes.get(f.id)
                parts.append(float("inf") if found is None else found)
        return (*parts, f.relpath)

    return min(files, key=key)


def _clusters(copy_groups: list[DuplicateGroup], similar_groups: list[DuplicateGroup]
              ) -> list[list[list[DuplicateFile]]]:
    """Clusters (module docstring) as lists of copy groups (a single file: a group of
    one), largest clusters first."""
    unit_of = {f.id: n for n, g in enumerate(copy_groups) for f in g.files}
    units: list[list[DuplicateFile]] = [list(g.files) for g in copy_groups]
    cluster_of_unit: dict[int, int] = {}
    clusters: list[list[int]] = []
    for group in similar_groups:
        members = []
        for f in group.files:
            if f.id not in unit_of:
                unit_of[f.id] = len(units)
                units.append([f])
            u = unit_of[f.id]
            if u not in cluster_of_unit and (len(units[u]) == 1 or units[u][0].id == f.id):
                cluster_of_unit[u] = len(clusters)
                members.append(u)
        clusters.append(members)
    for u in range(len(copy_groups)):
        if u not in cluster_of_unit:
            cluster_of_unit[u] = len(clusters)
            clusters.append([u])
    found = [[units[u] for u in c] for c in clusters if sum(len(units[u]) for u in c) > 1]
    found.sort(key=lambda c: (-sum(len(u) for u in c), c[0][0].relpath))
    return found


def review_list(copy_groups: list[DuplicateGroup], rule: str = "pixels",
                similar_groups: list[DuplicateGroup] | None = None) -> list[ReviewEntry]:
    """Every file of ``copy_groups`` (the groups at the near threshold) and of
    ``similar_groups`` (at the lower similar one; ``None``: none) with its cluster, tier
    and action (module docstring), each cluster's keeper first."""
    _check_rule(rule)
    entries = []
    for number, cluster in enumerate(_clusters(copy_groups, similar_groups or []), 1):
        files = [f for unit in cluster for f in unit]
        pixels = {f.id: _pixels(f.path) for f in files} if rule == "pixels" else {}
        mtimes = {f.id: _mtime(f.path) for f in files}
        keepers = [keeper(unit, rule, pixels, mtimes) for unit in cluster]
        main = keeper(keepers, rule, pixels, mtimes)
        for unit, keep in sorted(zip(cluster, keepers, strict=True),
                                 key=lambda pair: pair[1].id != main.id):
            if keep.id == main.id:
                entries.append(ReviewEntry(number, keep, "keep", "keep", None,
                                           pixels.get(keep.id), mtimes.get(keep.id)))
            else:
                entries.append(ReviewEntry(number, keep, "similar", "review", main.relpath,
                                           pixels.get(keep.id), mtimes.get(keep.id)))
            for f in unit:
                if f.id != keep.id:
                    tier = "exact" if f.hash and f.hash == keep.hash else "near"
                    entries.append(ReviewEntry(number, f, tier, "remove?", keep.relpath,
                                               pixels.get(f.id), mtimes.get(f.id)))
    return entries


def review_csv(entries: list[ReviewEntry], paths: bool = True) -> str:
    """The review list as CSV, one row a file (:data:`CSV_COLUMNS`; without ``path`` when
    ``paths`` is false, as the web app exports it)."""
    columns = CSV_COLUMNS if paths else CSV_COLUMNS[:-1]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for e in entries:
        row = [e.group, e.action, e.tier, e.file.relpath, e.copy_of or "",
               f"{e.file.score:.6f}", e.file.size, "" if e.pixels is None else e.pixels,
               "" if e.mtime is None else f"{e.mtime:.0f}", e.file.path]
        writer.writerow(row[:len(columns)])
    return buffer.getvalue()
