"""Progress of long jobs: a live bar on a terminal, one plain line per interval elsewhere.

:func:`progress_bar` is ``tqdm`` as every long job in groco uses it. On a terminal it redraws
one line in place; when its stream is not a terminal (a log file, CI, ``nohup``) it writes
one line every :data:`LOG_INTERVAL` seconds and at the end, each with the count, the rate
and the ETA, and never a carriage return, so a log holds lines, not frames.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm

LOG_INTERVAL = 30.0
"""Seconds between two progress lines when the output is not a terminal."""
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) " \
             "[{elapsed} elapsed, {remaining} left, {rate_fmt}]"
LOG_FORMAT_OPEN = "{desc}: {n_fmt} {unit} [{elapsed} elapsed, {rate_fmt}]"
"""The line without a known total (no percentage, no ETA)."""


class LineStream:
    """A text stream for tqdm that turns its in-place redraws (``"\\r" + text``) into whole
    lines: each non-empty frame that differs from the last becomes ``text + "\\n"``."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line and line != self.last:
            self.stream.write(line + "\n")
            self.last = line
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def bar_settings(total_known: bool = True, file: IO[str] | None = None) -> dict[str, Any]:
    """The ``tqdm`` keywords of groco's progress on ``file`` (default stderr), for bars made
    elsewhere (e.g. umap-learn's ``tqdm_kwds``): a live bar on a terminal; else the
    :class:`LineStream`, :data:`LOG_INTERVAL` and the line format (without ETA when the
    total is unknown)."""
    stream = file if file is not None else sys.stderr
    if is_terminal(stream):
        return {"file": stream, "dynamic_ncols": True, "mininterval": 1.0}
    return {"file": LineStream(stream), "mininterval": LOG_INTERVAL,
            "maxinterval": LOG_INTERVAL,
            "bar_format": LOG_FORMAT if total_known else LOG_FORMAT_OPEN}


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it",
                 disable: bool = False, file: IO[str] | None = None, **options: Any) -> tqdm:
    """A ``tqdm`` bar on ``file`` (default stderr): live on a terminal; otherwise a line per
    :data:`LOG_INTERVAL` seconds (and the last) with count, rate and ETA, no ``\\r``
    (:func:`bar_settings`; ``options`` other than those go to ``tqdm``)."""
    settings = bar_settings(total is not None, file)
    extra = {k: v for k, v in options.items() if k not in settings and k != "dynamic_ncols"}
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, **settings, **extra)
