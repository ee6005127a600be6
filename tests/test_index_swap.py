"""An update stopped at any phase leaves the index answering at its old or its new state."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import make_collection

from groco.index import indexfile, shards
from groco.index.build import build_index_dir, update_index_dir
from groco.index.search import Searcher
from groco.index.store import Store

FAST = {"batch_size": 2, "shard_size": 2, "workers": 1, "progress": False}


class Killed(BaseException):
    """Stands for a kill: nothing in groco catches it."""


def answers(index: Path, queries: list[bytes]) -> list[list[tuple[str, float]]]:
    with Searcher(index) as searcher:
        return [[(r.relpath, round(r.score, 4)) for r in searcher.search_image(q, k=6)]
                for q in queries]


def stop_after(monkeypatch, owner, name: str, nth: int) -> None:
    real, calls = getattr(owner, name), [0]

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        calls[0] += 1
        if calls[0] == nth:
            raise Killed(name)
        return out

    monkeypatch.setattr(owner, name, wrapper)


PHASES = [(Store, "commit", 1), (shards, "write_shard", 1), (Store, "commit", 2),
          (indexfile, "save_index", 1), (indexfile, "write_manifest", 1),
          (Store, "purge_retired", 1)]


@pytest.fixture(scope="module")
def states(encoder_file, tmp_path_factory):
    """The index before an update, the images after it, and the answers at both states
    (made once: every phase's update starts from a copy of the same index)."""
    tmp = tmp_path_factory.mktemp("swap")
    images = make_collection(tmp / "images", classes=2, per_class=5)
    queries = [(images / p).read_bytes() for p in ("class0/img001.png", "class1/img002.png")]
    base = tmp / "base"
    build_index_dir(images, encoder_file, base, **FAST)
    old = answers(base, queries)
    (images / "class0/img001.png").unlink()
    make_collection(tmp / "more", classes=2, per_class=3, seed=5)
    shutil.copytree(tmp / "more/class1", images / "class1", dirs_exist_ok=True)
    clean = tmp / "clean"
    shutil.copytree(base, clean)
    update_index_dir(clean, **FAST)
    new = answers(clean, queries)
    assert new != old
    return base, queries, old, new


@pytest.mark.parametrize("owner,name,nth", PHASES,
                         ids=["deletes", "shard-written", "shard-committed", "index-written",
                              "manifest-written", "cleanup"])
def test_update_stopped_at_each_phase(states, tmp_path, monkeypatch, owner, name, nth):
    base, queries, old, new = states
    index = tmp_path / "index"
    shutil.copytree(base, index)
    with monkeypatch.context() as patch:
        stop_after(patch, owner, name, nth)
        with pytest.raises(Killed):
            update_index_dir(index, **FAST)
    assert answers(index, queries) in (old, new)  # never an error, never a mixture
    update_index_dir(index, **FAST)
    assert answers(index, queries) == new
