"""Run a function over items on a thread pool, a bounded window ahead of the consumer.

The ground floor's one decode-ahead pool (stdlib only): :meth:`groco.encoder.runtime.Encoder.embed`
and the index build's pipeline (:func:`groco.index.pipeline.embed_files`) both read and
decode images with it while ONNX Runtime embeds the previous ones.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int,
             name: str = "groco-decode") -> Iterator[R]:
    """Yield ``fn(item)`` for each item, in order, computed by ``workers`` threads.

    At most ``window`` results are pending or waiting at any time (memory stays bounded
    whatever the number of items); ``items`` is consumed lazily. An exception raised by
    ``fn`` comes out of the iterator at that item's turn. Closing the iterator early
    (``close()``, or leaving a ``for`` loop on an error) cancels what has not started and
    waits for the running calls, so no thread outlives it.
    """
    if workers < 1 or window < 1:
        raise ValueError(f"workers and window must be >= 1, got {workers} and {window}")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        pending: deque[Future[R]] = deque()
        upcoming = iter(items)
        try:
            for item in upcoming:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    break
            while pending:
                done = pending.popleft().result()
                for item in upcoming:
                    pending.append(pool.submit(fn, item))
                    break
                yield done
        finally:
            for future in pending:
                future.cancel()
