"""The neighbour graph of an index directory: every item's ``k`` nearest others, computed
once, stored beside the index and kept current by ``groco index update``; the map
(:mod:`groco.index.map`) and the duplicate groups (:mod:`groco.index.dupes`) read it.

- :mod:`.partition`: the graph from the stored vectors (exact within the cells each
  vector probes; the probes chosen to reach a recall@k measured on a sample), resumable;
- :mod:`.files`: ``neighbours/graph.json`` and its arrays, read and written;
- :mod:`.build`: :func:`build_graph` / :func:`ensure_graph` (reuse a current graph, else
  build and store it) and :func:`update_graph`.

No torch (FAISS and NumPy).
"""

from .build import DEFAULT_K, GraphReport, build_graph, ensure_graph, is_current, update_graph
from .files import NeighbourGraph, read_graph, read_info

__all__ = ["DEFAULT_K", "GraphReport", "NeighbourGraph", "build_graph", "ensure_graph",
           "is_current", "read_graph", "read_info", "update_graph"]
