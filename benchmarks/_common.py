"""What every benchmark prints: machine, command, date."""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from collections.abc import Callable


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def header() -> str:
    command = " ".join(["python", *sys.argv])
    today = datetime.date.today().isoformat()
    return f"Machine: {machine()}\nCommand: `{command}`\nDate: {today}\n"


def best_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Best wall time of ``repeats`` calls after ``warmup`` calls, in seconds."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
