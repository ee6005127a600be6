"""benchmarks/timing.py: warm-up apart from timed runs, interleaved rounds, ratio of medians."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import (  # noqa: E402
    LoadWatch,
    Side,
    interleaved,
    ratio_summary,
    round_order,
    round_ratios,
    speedup,
)


class FakeClock:
    """A clock each call of a side advances by that side's next duration."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sides_with(clock: FakeClock, durations: dict[str, list[float]], log: list[str]):
    def make(name: str):
        queue = list(durations[name])

        def call() -> None:
            log.append(name)
            clock.now += queue.pop(0)
        return call
    return {name: make(name) for name in durations}


def test_warmups_first_then_rotating_rounds():
    clock, log = FakeClock(), []
    sides = sides_with(clock, {"a": [9, 5, 1, 1, 1], "b": [7, 6, 2, 2, 2]}, log)
    result = interleaved(sides, runs=3, warmup=2, clock=clock)
    # Each side's own warm-ups before any timed run, then A B, B A, A B.
    assert log == ["a", "a", "b", "b", "a", "b", "b", "a", "a", "b"]
    assert result["a"].cold == 9 and result["a"].warmup == [5]
    assert result["b"].cold == 7 and result["b"].warmup == [6]
    assert result["a"].times == [1, 1, 1] and result["b"].times == [2, 2, 2]


def test_cold_call_never_in_the_ratio():
    clock, log = FakeClock(), []
    # diffsort-like: a 10 s cold first call, then 3.5 s warm; groco 0.5 s warm.
    sides = sides_with(clock, {"ref": [10, 3, 4, 3.5], "ours": [1, 0.5, 0.5, 0.5]}, log)
    result = interleaved(sides, runs=3, warmup=1, clock=clock)
    assert speedup(result["ref"], result["ours"]) == pytest.approx(7.0)
    assert round_ratios(result["ref"], result["ours"]) == pytest.approx([6, 8, 7])
    assert ratio_summary(result["ref"], result["ours"]) == "7.00x (6.00–8.00)"


def test_warmup_at_least_once_and_same_count():
    clock, log = FakeClock(), []
    sides = sides_with(clock, {"a": [1, 2, 3], "b": [1, 2, 3], "c": [1, 2, 3]}, log)
    result = interleaved(sides, runs=2, warmup=0, clock=clock)
    assert log[:3] == ["a", "b", "c"]
    assert log[3:] == ["a", "b", "c", "b", "c", "a"]
    assert {len(s.times) for s in result.values()} == {2}


def test_side_statistics_and_order():
    side = Side("x", times=[0.3, 0.1, 0.2])
    assert side.median == 0.2 and side.min == 0.1 and side.max == 0.3
    assert side.summary() == "200.0 (100.0–300.0)"
    assert side.rate(10) == pytest.approx(50)
    assert side.rate_summary(10) == "50.0 (33.3–100.0)"
    assert round_order(["a", "b", "c"], 4) == ["b", "c", "a"]
    with pytest.raises(ValueError):
        interleaved({"a": lambda: None}, runs=0)


def test_load_line_has_before_and_after():
    line = LoadWatch().line()
    assert "before:" in line and "after:" in line


def test_min_seconds_adds_whole_rounds_up_to_the_cap():
    clock, log = FakeClock(), []
    sides = sides_with(clock, {"a": [1] + [1] * 20, "b": [1] + [2] * 20}, log)
    # 3 s a round: 2 rounds give 6 s, min_seconds=10 asks for 4 (12 s)
    result = interleaved(sides, runs=2, clock=clock, min_seconds=10)
    assert len(result["a"].times) == len(result["b"].times) == 4
    clock2, log2 = FakeClock(), []
    sides2 = sides_with(clock2, {"a": [1] + [1] * 20, "b": [1] + [2] * 20}, log2)
    capped = interleaved(sides2, runs=2, clock=clock2, min_seconds=100, max_runs=5)
    assert len(capped["a"].times) == len(capped["b"].times) == 5
    clock3 = FakeClock()
    slow = interleaved(sides_with(clock3, {"a": [9, 9, 9]}, []), runs=2, clock=clock3,
                       min_seconds=1)
    assert len(slow["a"].times) == 2
