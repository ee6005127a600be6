"""Concurrent queries embedded together (groco.index.api.batcher): a lone query runs at
once, queries waiting together share one call, each caller gets its own row or its
batch's error, and a reader searched from many threads answers as one searched alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import make_collection

from groco.index.api import IndexReader
from groco.index.api.batcher import QueryBatcher


class SlowDouble:
    """An embedder that takes ``seconds`` a call and doubles its input."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls: list[int] = []

    def __call__(self, arrays: np.ndarray) -> np.ndarray:
        self.calls.append(len(arrays))
        time.sleep(self.seconds)
        return arrays.reshape(len(arrays), -1) * 2.0


def test_a_lone_query_runs_at_once_and_waiting_ones_share_a_call() -> None:
    embed = SlowDouble(0.2)
    batcher = QueryBatcher(embed)
    try:
        started = time.perf_counter()
        np.testing.assert_array_equal(batcher.embed(np.full(3, 1.0)), np.full(3, 2.0))
        assert time.perf_counter() - started < 0.4 and embed.calls == [1]
        embed.calls.clear()
        barrier = threading.Barrier(9)

        def one(i: int) -> np.ndarray:
            barrier.wait()
            return batcher.embed(np.full(3, float(i)))

        with ThreadPoolExecutor(9) as pool:
            answers = list(pool.map(one, range(9)))
        for i, answer in enumerate(answers):  # each caller its own row
            np.testing.assert_array_equal(answer, np.full(3, 2.0 * i))
        assert sum(embed.calls) == 9 and len(embed.calls) <= 3  # 9 queries, few calls
        assert max(embed.calls) >= 4
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.embed(np.zeros(3))


def test_each_caller_gets_its_batch_error() -> None:
    def broken(arrays: np.ndarray) -> np.ndarray:
        time.sleep(0.05)
        raise RuntimeError("session failed")

    batcher = QueryBatcher(broken, max_batch=4)
    try:
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(batcher.embed, np.zeros(2)) for _ in range(6)]
        for future in futures:
            with pytest.raises(RuntimeError, match="session failed"):
                future.result()
        assert max(batcher.batches) <= 4
    finally:
        batcher.close()


def test_a_reader_searched_from_many_threads_answers_as_alone(tmp_path: Path) -> None:
    from groco.encoder.baselines import export_raw_pixels
    from groco.index.build import build_index_dir

    images = make_collection(tmp_path / "images", classes=3, per_class=8, size=16)
    export_raw_pixels(16, tmp_path / "raw.onnx", parity_images=1)
    build_index_dir(images, tmp_path / "raw.onnx", tmp_path / "index", progress=False)
    queries = sorted(images.rglob("*.png"))[:12]
    with IndexReader(tmp_path / "index") as reader:
        alone = [reader.search_image(q, 5) for q in queries]
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(lambda q: reader.search_image(q, 5), queries))
        for a, b in zip(alone, together, strict=True):
            assert [r.relpath for r in a] == [r.relpath for r in b]
            np.testing.assert_allclose([r.score for r in a], [r.score for r in b], atol=1e-5)
        assert sum(reader._embedder().batches) == 24
