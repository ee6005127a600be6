"""Curating a collection from its index: the most unusual items and a sample that covers
the collection (``groco index curate``, the page's Curate tab).

- :mod:`.outliers`: outlier scores read from the stored neighbour graph;
- :mod:`.sample`: greedy k-centre on the stored embeddings, and its coverage radius;
- :mod:`.report`: both for an index directory, as files with paths.

No torch (FAISS, NumPy, SQLite).
"""

from .outliers import DEFAULT_SCORE, SCORES, outlier_scores, top_outliers
from .report import CuratedFile, SampleReport, find_outliers, pick_sample
from .sample import coverage, k_centre, random_sample

__all__ = ["DEFAULT_SCORE", "SCORES", "CuratedFile", "SampleReport", "coverage",
           "find_outliers", "k_centre", "outlier_scores", "pick_sample", "random_sample",
           "top_outliers"]
