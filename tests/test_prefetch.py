"""groco.prefetch: the one decode-ahead pool (order, bounded window, errors, early stop)."""

from __future__ import annotations

import threading
import time

import pytest

from groco.prefetch import prefetch


def test_results_in_order_and_window_bounds_the_work_ahead() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(0.001 * (i % 3))  # finish out of order
        return i * i

    stream = prefetch(work, range(50), workers=3, window=5)
    assert next(stream) == 0
    time.sleep(0.05)
    with lock:
        assert len(started) <= 6  # the window (5) plus the one submitted after a yield
    assert list(stream) == [i * i for i in range(1, 50)]


def test_an_error_comes_out_at_its_turn_and_stops_the_pool() -> None:
    done: list[int] = []

    def work(i: int) -> int:
        if i == 3:
            raise ValueError("bad item 3")
        done.append(i)
        return i

    got = []
    with pytest.raises(ValueError, match="bad item 3"):
        for value in prefetch(work, range(1000), workers=2, window=4):
            got.append(value)
    assert got == [0, 1, 2]
    assert len(done) < 20  # cancelled, not run to the end
    with pytest.raises(ValueError, match=">= 1"):
        next(prefetch(work, range(3), workers=0, window=1))


def test_closing_early_leaves_no_thread_behind() -> None:
    before = {t.name for t in threading.enumerate()}
    stream = prefetch(lambda i: i, range(100), workers=2, window=8, name="pf-test")
    assert next(stream) == 0
    stream.close()
    alive = {t.name for t in threading.enumerate()} - before
    assert not any(name.startswith("pf-test") for name in alive)
