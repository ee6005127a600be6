"""FAISS core of the index, one module a job: :mod:`.spec` (the two settings values),
:mod:`.choose` (which index for a size and a memory budget), :mod:`.source` (vectors read a
chunk at a time), :mod:`.factory` (index objects and their search knobs), :mod:`.build`
(train and fill), :mod:`.tune` (recall-target tuning on held-out queries), :mod:`.query`
(search, exact search, recall) and :mod:`.io` (files, FAISS's stdout, OpenMP threads).

Every index scores by inner product (``METRIC_INNER_PRODUCT``) on L2-normalised vectors,
which is cosine similarity. Nothing is re-exported here, so importing one module (the CLI
reads :mod:`.spec` for its defaults) does not load the others. ``import faiss`` anywhere
in groco is the FAISS library: imports are absolute, this package is ``groco.index.faiss``.
"""
