"""Concurrent queries embedded together: one ONNX Runtime call for the queries waiting at
that moment.

A server answers several users at once (the page's events, the Gradio API, the JSON
route, each in its own thread). Embedding each query in its own ``session.run`` makes
those runs compete for the same cores, each with every intra-op thread. Instead each
caller preprocesses its image in its own thread (decoding and resizing in parallel) and
hands the array to one worker thread, which takes the first waiting query and every other
query waiting at that moment (up to ``max_batch``), embeds them in one call and hands each
caller its row. A lone query waits for no one: the worker starts as soon as it arrives
(the cost is one hand-over between threads). A batch of ``n`` costs far less than ``n``
single runs on a CPU (BENCHMARKS.md, "Serving many users").

The FAISS search stays in the caller's thread on ``SINGLE_QUERY_THREADS`` OpenMP threads
(:func:`groco.index.faiss.query.search`), so concurrent searches do not oversubscribe the
cores either. One FAISS call for the waiting queries would save nothing: on the same
threads, ``n`` one-query searches cost what one ``n``-query search costs (0.99-1.09x for
2-32 queries, Flat 10k x 512 and IVF1024 200k x 384, k 12 and 100; BENCHMARKS.md,
"Serving many users"), about 1 ms of a query's 10-44 ms of server CPU.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

MAX_BATCH = 32
"""Queries embedded in one call at most."""


class QueryBatcher:
    """Embeds arrays handed over from any thread, the ones waiting together in one call of
    ``embed_arrays`` (``(n, ...) -> (n, dim)``); thread-safe, one worker thread."""

    def __init__(self, embed_arrays: Callable[[np.ndarray], np.ndarray],
                 max_batch: int = MAX_BATCH, name: str = "groco-embed") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._embed = embed_arrays
        self.max_batch = max_batch
        self._waiting: queue.SimpleQueue[tuple[np.ndarray, Future] | None] = queue.SimpleQueue()
        self._closed = False
        self.batches: list[int] = []
        """The size of every batch embedded so far (for tests and benchmarks)."""
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    def embed(self, array: np.ndarray) -> np.ndarray:
        """The embedding of one preprocessed query (its row of the batch it joined); the
        error of its batch's call, raised in the caller."""
        if self._closed:
            raise RuntimeError("the query batcher is closed")
        done: Future = Future()
        self._waiting.put((array, done))
        return done.result()

    def close(self) -> None:
        """Stop the worker after the queries already handed over."""
        if not self._closed:
            self._closed = True
            self._waiting.put(None)

    def _run(self) -> None:
        while True:
            first = self._waiting.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    more = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._embed_batch(batch)
            if stop:
                return

    def _embed_batch(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        self.batches.append(len(batch))
        try:
            vectors = self._embed(np.stack([array for array, _ in batch]))
        except BaseException as error:  # noqa: BLE001 - each caller gets its batch's error
            for _, done in batch:
                done.set_exception(error)
            return
        for row, (_, done) in enumerate(batch):
            done.set_result(vectors[row])
