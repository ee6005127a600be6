"""The embedding map of an index directory (``groco index map``): a 2D layout of every item,
with clusters, stored beside the index.

- :mod:`.graph`: the index's stored neighbour graph in UMAP's form;
- :mod:`.clusters`: spherical k-means and the facts of each cluster;
- :mod:`.layout`: UMAP on that graph, and placement of new items on a map;
- :mod:`.format`: the map files (``map.json`` + ``map-NNNNNN.npz``), read and written;
- :mod:`.compute`: :func:`compute_map` (the three steps in order) and :func:`update_map`,
  which :func:`groco.index.build.update_index_dir` runs so an index's map stays current.

``umap-learn`` is an optional extra (``pip install 'groco[map]'``): reading a map
(:func:`read_map`, the app) and everything else in ``groco index`` work without it;
:func:`compute_map` raises :class:`MapExtraMissing` (one line naming the extra), and an
update without it places new items at their neighbours' weighted mean only. No torch.
"""

from .clusters import REPRESENTATIVES, default_clusters
from .compute import MapReport, compute_map, place_new_items, update_map
from .format import MAP_NAME, MapData, has_map, iter_map_items, map_path, read_map
from .layout import (
    DEFAULT_MIN_DIST,
    DEFAULT_NEIGHBORS,
    LANDMARKS,
    LANDMARKS_ABOVE,
    MapExtraMissing,
)

__all__ = [
    "DEFAULT_MIN_DIST", "DEFAULT_NEIGHBORS", "LANDMARKS", "LANDMARKS_ABOVE", "MAP_NAME",
    "REPRESENTATIVES", "MapData", "MapExtraMissing", "MapReport", "compute_map",
    "default_clusters", "has_map", "iter_map_items", "map_path", "place_new_items",
    "read_map", "update_map",
]
