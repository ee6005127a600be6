"""A running server answers from what `groco index update` wrote, without a restart: new
items searchable, deleted ones never returned, no failed query during or after the switch."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, make_collection

from groco.app.settings import AppSettings
from groco.index.api import IndexReader
from groco.index.build import build_index_dir, update_index_dir

FAST = {"batch_size": 8, "workers": 1, "progress": False}


def _change(images: Path, tmp_path: Path) -> tuple[str, str]:
    """Delete one image and add one; return (deleted, added) relative paths."""
    (images / "class0" / "img001.png").unlink()
    make_collection(tmp_path / "more", classes=1, per_class=1, seed=7, size=32)
    (tmp_path / "more" / "class0" / "img000.png").rename(images / "class1" / "added.png")
    return "class0/img001.png", "class1/added.png"


@pytest.mark.parametrize("on_disk", [False, True], ids=["in-ram", "on-disk"])
def test_a_reader_switches_to_the_state_an_update_wrote(encoder_file: Path, tmp_path: Path,
                                                        on_disk: bool):
    images = make_collection(tmp_path / "images", classes=2, per_class=6, size=32)
    build_index_dir(images, encoder_file, tmp_path / "index", on_disk=on_disk, **FAST)
    with IndexReader(tmp_path / "index") as reader:
        assert not reader.refresh() and reader.generation == 0
        before = reader.search_image(images / "class0/img002.png", k=3)
        deleted, added = _change(images, tmp_path)
        update_index_dir(tmp_path / "index", **FAST)
        assert reader.refresh() and reader.generation == 1
        assert not reader.refresh()
        assert reader.search_image(images / added, k=1)[0].relpath == added
        every = reader.search_image(images / "class0/img002.png", k=12)
        assert deleted not in {r.relpath for r in every} and len(every) == 12
        assert reader.search_image(images / "class0/img002.png", k=3)[0].relpath == \
            before[0].relpath


def _search(url: str, image: Path, k: int, label: str = "all") -> list[str]:
    request = urllib.request.Request(f"{url}groco/api/search?k={k}&label={label}",
                                     data=image.read_bytes(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return [r["relpath"] for r in json.loads(response.read())["results"]]


def test_the_server_serves_the_update_within_seconds(encoder_file: Path, tmp_path: Path):
    from groco.app.web import launch_app

    images = make_collection(tmp_path / "images", classes=2, per_class=6, size=32)
    build_index_dir(images, encoder_file, tmp_path / "index", **FAST)
    app, url = launch_app(tmp_path / "index", port=free_port(), block=False,
                          settings=AppSettings(refresh_seconds=0.2))
    try:
        probe = images / "class0/img002.png"
        assert len(_search(url, probe, 12)) == 12
        deleted, added = _change(images, tmp_path)
        added_bytes = (images / added).read_bytes()
        update_index_dir(tmp_path / "index", **FAST)
        switched, deadline = None, time.monotonic() + 5
        while time.monotonic() < deadline:  # every query answered, during and after
            found = _search(url, images / added, 1)
            if found == [added]:
                switched = time.monotonic()
                break
            time.sleep(0.1)
        assert switched is not None, "the server still answers from the old index"
        assert (images / added).read_bytes() == added_bytes
        for _ in range(3):
            assert deleted not in _search(url, probe, 11)
        new_folder = images / "class7"
        new_folder.mkdir()
        (images / added).rename(new_folder / "moved.png")
        update_index_dir(tmp_path / "index", **FAST)
        deadline = time.monotonic() + 5
        while _search(url, new_folder / "moved.png", 1) != ["class7/moved.png"]:
            assert time.monotonic() < deadline, "the server never served the new folder"
            time.sleep(0.1)
        time.sleep(0.5)  # the folder list follows the switch
        assert _search(url, probe, 3, label="class7") == ["class7/moved.png"]
    finally:
        app.close()
