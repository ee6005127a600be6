"""The map's files in an index directory: reading, writing and listing a stored map.

Written atomically, the JSON last, so a reader sees the old map or the new one::

    map.json           what the map is: format, the index generation and count it was
                       made from, parameters, UMAP's ``a``/``b``, the clusters, the
                       points file, how many items were placed on it since the layout
    map-NNNNNN.npz     ids (int64), xy (float32, N x 2), cluster (int32), sim (cosine to
                       the cluster's centroid), label (int32 code, -1 = none),
                       label_names, centroids (float32, K x dim)

Row ``i`` of every array is item ``ids[i]`` (ids ascending). Needs neither umap-learn nor
the index file: the app reads maps through this module alone.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from groco.fileio import atomic_path, atomic_write_text

from ..manifest import IndexDirError
from ..store import DB_NAME, EMBEDDED, Store

MAP_NAME = "map.json"
FORMAT = 1
_POINTS = re.compile(r"^map-(\d{6,})\.npz$")


@dataclass
class MapData:
    """A stored map: its facts (``map.json``) and points, row ``i`` of each array is item
    ``ids[i]``."""

    info: dict[str, Any]
    ids: np.ndarray
    xy: np.ndarray
    cluster: np.ndarray
    sim: np.ndarray
    label: np.ndarray
    label_names: list[str]
    centroids: np.ndarray

    @property
    def clusters(self) -> list[dict[str, Any]]:
        return self.info["clusters"]

    def labels(self) -> list[str | None]:
        """The folder label of each point (``None`` where it has none)."""
        return [self.label_names[c] if c >= 0 else None for c in self.label.tolist()]


def map_path(index_dir: str | Path) -> Path:
    """``INDEX/map.json``."""
    return Path(index_dir) / MAP_NAME


def has_map(index_dir: str | Path) -> bool:
    """Whether ``index_dir`` holds a map (its ``map.json``)."""
    return map_path(index_dir).is_file()


def read_map(index_dir: str | Path) -> MapData:
    """The stored map; :class:`IndexDirError` when there is none or it cannot be read."""
    index_dir = Path(index_dir)
    path = map_path(index_dir)
    if not path.is_file():
        raise IndexDirError(f"{index_dir}: no map yet (run `groco index map {index_dir}`)")
    try:
        info = json.loads(path.read_text())
        if info.get("format") != FORMAT:
            raise ValueError(f"not a groco map of format {FORMAT}")
        with np.load(index_dir / info["points_file"], allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as error:
        reason = " ".join(str(error).split())
        raise IndexDirError(f"{path}: damaged ({reason}); run `groco index map {index_dir}` "
                            "to compute it again") from error
    return MapData(info=info, ids=arrays["ids"], xy=arrays["xy"], cluster=arrays["cluster"],
                   sim=arrays["sim"], label=arrays["label"],
                   label_names=[str(s) for s in arrays["label_names"]],
                   centroids=arrays["centroids"])


def write_map(index_dir: Path, data: MapData) -> None:
    """Write the points file (new name), then ``map.json`` naming it, then drop older ones;
    sets ``points_file``, ``count`` and ``written_at`` in ``data.info``."""
    numbers = [int(m.group(1)) for f in index_dir.iterdir() if (m := _POINTS.match(f.name))]
    name = f"map-{max(numbers, default=0) + 1:06d}.npz"
    with atomic_path(index_dir / name) as tmp, open(tmp, "wb") as f:
        np.savez(f, ids=data.ids.astype(np.int64), xy=data.xy.astype(np.float32),
                 cluster=data.cluster.astype(np.int32), sim=data.sim.astype(np.float32),
                 label=data.label.astype(np.int32),
                 label_names=np.array(data.label_names, dtype=str),
                 centroids=data.centroids.astype(np.float32))
    data.info["points_file"] = name
    data.info["count"] = len(data.ids)
    data.info["written_at"] = now()
    atomic_write_text(map_path(index_dir), json.dumps(data.info, indent=1) + "\n")
    for f in index_dir.iterdir():
        if _POINTS.match(f.name) and f.name != name:
            f.unlink(missing_ok=True)


def now() -> str:
    """The UTC time, ISO 8601 to the second (the map's ``computed_at``/``written_at``)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def iter_map_items(index_dir: str | Path, data: MapData | None = None
                   ) -> Iterator[dict[str, Any]]:
    """Each mapped item as ``{"id", "path", "relpath", "x", "y", "cluster", "label"}``
    (``path`` absolute, under the images root), in id order."""
    index_dir = Path(index_dir)
    data = data or read_map(index_dir)
    with Store(index_dir / DB_NAME, readonly=True) as store:
        root = Path(store.get_info("images_root") or "")
        p = 0
        for row in store.iter_rows(EMBEDDED):
            while p < len(data.ids) and data.ids[p] < row.id:
                p += 1
            if p == len(data.ids):
                break
            if data.ids[p] != row.id:
                continue
            x, y = data.xy[p].tolist()
            yield {"id": row.id, "path": str(root / row.path), "relpath": row.path,
                   "x": round(x, 5), "y": round(y, 5), "cluster": int(data.cluster[p]),
                   "label": row.label}
