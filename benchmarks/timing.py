"""One way to time two (or more) sides alike, for every benchmark that reports a speed.

The rules (issue 18), and how :func:`interleaved` keeps them:

- **Each side gets its own warm-up.** Every side is called ``warmup`` times before any
  timed run (at least once). The first of those calls is kept apart as the side's
  :attr:`Side.cold` cost: what a user meets on a server's first query or an encoder's
  first batch. It is reported as its own row and never enters a ratio.
- **Runs are interleaved, with the same count on both sides.** Round ``r`` calls every
  side once; the order rotates by one each round (``A B``, ``B A``, ...) so that no side
  always runs right after another, and a burst of load from other processes hits the
  sides alike. Inputs, threads and batch are the caller's: give every side the same.
- **One statistic.** A side's figure is the median of its timed runs, with the min–max
  beside it (:meth:`Side.summary`). A ratio is the ratio of medians
  (:func:`speedup`); :func:`round_ratios` gives the per-round ratios for its spread.
- **The load average before and after goes in the output** (:class:`LoadWatch`); the
  machine these ran on is shared.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class Side:
    """The timings of one side: ``cold`` (its first call, seconds), ``warmup`` (its further
    warm-up calls) and ``times`` (its timed runs, one per round, in round order)."""

    name: str
    cold: float = float("nan")
    warmup: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    def rate(self, items: float) -> float:
        """``items`` per second at the median time."""
        return items / self.median

    def rate_range(self, items: float) -> tuple[float, float]:
        """(slowest, fastest) ``items`` per second over the timed runs."""
        return items / self.max, items / self.min

    def summary(self, scale: float = 1e3, digits: int = 1) -> str:
        """``median (min–max)`` of the timed runs, times ``scale`` (default: ms)."""
        return (f"{self.median * scale:.{digits}f} ({self.min * scale:.{digits}f}–"
                f"{self.max * scale:.{digits}f})")

    def rate_summary(self, items: float, digits: int = 1) -> str:
        """``median (min–max)`` of ``items`` per second over the timed runs."""
        low, high = self.rate_range(items)
        return f"{self.rate(items):.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """The order the sides run in round ``round_index``: ``names`` rotated by the index."""
    shift = round_index % len(names) if names else 0
    return [*names[shift:], *names[:shift]]


def interleaved(sides: Mapping[str, Callable[[], object]], runs: int, warmup: int = 1,
                clock: Callable[[], float] = time.perf_counter,
                on_round: Callable[[int, dict[str, Side]], None] | None = None,
                min_seconds: float = 0.0, max_runs: int | None = None,
                ) -> dict[str, Side]:
    """Time every side in ``sides`` alike: ``max(warmup, 1)`` warm-up calls each (side by
    side, all before the first timed run; the first is the side's cold cost), then
    ``runs`` rounds, each calling every side once in :func:`round_order`.

    With ``min_seconds``, rounds go on past ``runs`` until the timed rounds add up to at
    least that many seconds, or ``max_runs`` rounds (default ``4 * runs``): calls of a few
    milliseconds get as many rounds as their median needs to settle, calls of seconds
    keep ``runs``. Every side always has the same number of rounds.

    ``on_round(r, result)`` is called after each round (progress logs). Returns one
    :class:`Side` per name, in the order of ``sides``.
    """
    if runs < 1:
        raise ValueError("runs must be >= 1")
    cap = max(runs, max_runs if max_runs is not None else 4 * runs)
    names = list(sides)
    result = {name: Side(name) for name in names}
    for name in names:
        for i in range(max(warmup, 1)):
            seconds = _timed(sides[name], clock)
            if i == 0:
                result[name].cold = seconds
            else:
                result[name].warmup.append(seconds)
    spent, r = 0.0, 0
    while r < runs or (spent < min_seconds and r < cap):
        for name in round_order(names, r):
            seconds = _timed(sides[name], clock)
            result[name].times.append(seconds)
            spent += seconds
        if on_round is not None:
            on_round(r, result)
        r += 1
    return result


def _timed(fn: Callable[[], object], clock: Callable[[], float]) -> float:
    start = clock()
    fn()
    return clock() - start


def speedup(baseline: Side, candidate: Side) -> float:
    """How many times faster ``candidate`` is than ``baseline``: the ratio of their
    median times (``baseline.median / candidate.median``)."""
    return baseline.median / candidate.median


def round_ratios(baseline: Side, candidate: Side) -> list[float]:
    """``baseline / candidate`` time in each round (both ran in the same round)."""
    return [b / c for b, c in zip(baseline.times, candidate.times, strict=True)]


def ratio_summary(baseline: Side, candidate: Side, digits: int = 2) -> str:
    """``median ratio x (per-round min–max)``, e.g. ``8.12x (7.60–8.40)``."""
    per_round = round_ratios(baseline, candidate)
    return (f"{speedup(baseline, candidate):.{digits}f}x ({min(per_round):.{digits}f}–"
            f"{max(per_round):.{digits}f})")


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (NaN where the OS has none)."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return (float("nan"),) * 3


class LoadWatch:
    """The load average when it was made and when :meth:`line` is called.

    ``with LoadWatch() as load: ...`` or ``load = LoadWatch()``; ``load.line()`` gives
    ``Load average (1/5/15 min) before: 1.2/0.9/0.6, after: 2.0/1.3/0.8 on 2 cores``.
    """

    def __init__(self) -> None:
        self.before = load_average()
        self.after: tuple[float, float, float] | None = None

    def __enter__(self) -> LoadWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> tuple[float, float, float]:
        self.after = load_average()
        return self.after

    def line(self) -> str:
        after = self.after if self.after is not None else self.stop()
        fmt = lambda xs: "/".join(f"{x:.1f}" for x in xs)  # noqa: E731
        return (f"Load average (1/5/15 min) before: {fmt(self.before)}, after: {fmt(after)} "
                f"on {os.cpu_count()} cores")


def threads_line() -> str:
    """The thread settings every side runs under (torch's, when it is imported)."""
    parts = [f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"]
    torch = sys.modules.get("torch")
    if torch is not None:
        parts.append(f"torch {torch.get_num_threads()} threads")
    return ", ".join(parts)
