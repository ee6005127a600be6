"""The duplicates review list: each group's file to keep by a rule the user picks, the
others as candidates to remove (exact and near copies) or to look at (similar images).

Tiers, of each file against its group's keeper: ``exact`` (the same content hash),
``near`` (cosine >= the near threshold: re-encoded, resized), ``similar`` (below it, at or
above the scan's floor). A group lists each file's cosine to its representative
(:mod:`groco.index.dupes`); when neither file is the representative, the lower of their
two cosines to it stands for theirs. groco never deletes or
moves a file: the list is for the user.

Keep rules (ties go to the next rule, then the path): ``pixels`` (most pixels, read from
the image header), ``bytes`` (largest file), ``oldest`` (earliest modification time on
disk), ``path`` (first path in sort order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..dupes import DuplicateFile, DuplicateGroup

KEEP_RULES = ("pixels", "bytes", "oldest", "path")
TIERS = ("exact", "near", "similar")
ACTIONS = {"exact": "remove?", "near": "remove?", "similar": "review"}


@dataclass(frozen=True)
class ReviewEntry:
    """One file of the review list."""

    group: int
    """1-based group number, largest groups first."""
    file: DuplicateFile
    tier: str
    """``keep`` for the group's keeper, else one of :data:`TIERS`."""
    action: str
    """``keep``, ``remove?`` (exact or near copy of the keeper's group) or ``review``."""
    pixels: int | None
    mtime: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "action": self.action, "tier": self.tier,
                "pixels": self.pixels, "mtime": self.mtime, **self.file.to_dict()}


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


def keeper(files: list[DuplicateFile], rule: str, pixels: dict[int, int | None],
           mtimes: dict[int, float | None]) -> DuplicateFile:
    """The file ``rule`` keeps (module docstring); ``ValueError`` for an unknown rule."""
    if rule not in KEEP_RULES:
        raise ValueError(f"keep rule must be one of {', '.join(KEEP_RULES)}, got {rule!r}")
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


def tier(file: DuplicateFile, keep: DuplicateFile, representative: DuplicateFile,
         near: float) -> str:
    """``file``'s tier against the group's keeper (module docstring)."""
    if file.hash and file.hash == keep.hash:
        return "exact"
    if file.id == representative.id:
        score = keep.score
    elif keep.id == representative.id:
        score = file.score
    else:
        score = min(file.score, keep.score)
    return "near" if score >= near else "similar"


def review_list(groups: list[DuplicateGroup], near: float, rule: str = "pixels"
                ) -> list[ReviewEntry]:
    """Every grouped file with its group, tier and action, the keeper first in each group."""
    if rule not in KEEP_RULES:
        raise ValueError(f"keep rule must be one of {', '.join(KEEP_RULES)}, got {rule!r}")
    entries = []
    for number, group in enumerate(groups, 1):
        files = list(group.files)
        pixels = {f.id: _pixels(f.path) for f in files} if rule == "pixels" else {}
        mtimes = {f.id: _mtime(f.path) for f in files}
        keep = keeper(files, rule, pixels, mtimes)
        rep = files[0]
        entries.append(ReviewEntry(number, keep, "keep", "keep", pixels.get(keep.id),
                                   mtimes.get(keep.id)))
        for f in files:
            if f.id != keep.id:
                t = tier(f, keep, rep, near)
                entries.append(ReviewEntry(number, f, t, ACTIONS[t], pixels.get(f.id),
                                           mtimes.get(f.id)))
    return entries
