"""One writer at a time: a second writer stops at once naming the first; readers go on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_collection

from groco.index.build import build_index_dir, update_index_dir
from groco.index.lock import IndexBusyError, writer_lock
from groco.index.search import Searcher

REPO = Path(__file__).resolve().parents[1]
FAST = {"batch_size": 4, "shard_size": 8, "workers": 1, "progress": False}
HOLD = ("import sys, time; from groco.index.lock import writer_lock\n"
        "with writer_lock(sys.argv[1], 'groco index build'):\n"
        "    print('held', flush=True); sys.stdin.readline()\n")


def test_second_writer_stops_naming_the_first_and_readers_go_on(encoder_file, tmp_path):
    images = make_collection(tmp_path / "images", classes=2, per_class=4)
    index = tmp_path / "index"
    build_index_dir(images, encoder_file, index, **FAST)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(index)], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(IndexBusyError, match=f"process {holder.pid} \\(groco index build"):
            update_index_dir(index, **FAST)
        with pytest.raises(IndexBusyError, match=str(holder.pid)):
            build_index_dir(images, encoder_file, index, **FAST)
        with Searcher(index) as searcher:  # a reader is never blocked
            assert searcher.search_image(images / "class0/img000.png", k=1)[0].relpath == \
                "class0/img000.png"
        result = subprocess.run([sys.executable, "-m", "groco.cli", "index", "update",
                                 str(index), "--no-progress"], cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and str(holder.pid) in lines[0]
    finally:
        holder.communicate("\n", timeout=30)
    assert update_index_dir(index, **FAST).embedded == 0  # the lock went with its process
    with writer_lock(index, "test"):
        assert (index / ".writer.lock").read_text().split()[0] == str(os.getpid())
