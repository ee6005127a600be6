"""Damaged index files: one `error:` line naming the file and the way out; `index repair`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_collection
from typer.testing import CliRunner

from groco.cli import app
from groco.index import shards
from groco.index.build import build_index_dir
from groco.index.manifest import DamagedFileError, read_manifest
from groco.index.search import Searcher
from groco.index.store import DB_NAME, EMBEDDED, Store

FAST = {"batch_size": 4, "shard_size": 8, "workers": 2, "progress": False}


@pytest.fixture(scope="module")
def pristine(encoder_file: Path, tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("damage")
    images = make_collection(base / "images", classes=3, per_class=8, broken=1)
    build_index_dir(images, encoder_file, base / "index", **FAST)
    return images, base / "index"


@pytest.fixture
def copy(pristine, tmp_path: Path):
    """A fresh copy of the built index to damage (the images are shared, not changed)."""
    images, index = pristine
    shutil.copytree(index, tmp_path / "index")
    return images, tmp_path / "index"


def answers(index_dir: Path, images: Path) -> list[list[tuple[str, float]]]:
    with Searcher(index_dir) as searcher:
        return [[(r.relpath, round(r.score, 5)) for r in searcher.search_image(images / q, k=5)]
                for q in ("class0/img001.png", "class1/img004.png", "class2/img007.png")]


def by_path(index_dir: Path) -> dict[str, np.ndarray]:
    with Store(index_dir / DB_NAME, readonly=True) as store:
        rows = list(store.iter_rows(EMBEDDED))
    vectors = shards.gather(index_dir, np.array([r.shard for r in rows]),
                            np.array([r.shard_row for r in rows]))
    return {r.path: v for r, v in zip(rows, vectors, strict=True)}


def cli(*args: str):
    return CliRunner().invoke(app, list(map(str, args)))


def assert_one_error_line(result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # no traceback: a clean exit
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for word in words:
        assert word in errors[0], errors[0]


def damage_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(os.urandom(100))


def truncate(path: Path, fraction: float = 0.5) -> None:
    os.truncate(path, int(path.stat().st_size * fraction))


def readers_and_writers(images: Path, index: Path, encoder: Path) -> list[tuple]:
    """search, eval, update and build (a resume) of ``index``, as command lines."""
    return [("search", index, images / "class0/img000.png"),
            ("index", "eval", index),
            ("index", "update", index, "--no-progress"),
            ("index", "build", images, "--encoder", encoder, "--out", index, "--no-progress")]


@pytest.mark.parametrize("how", [damage_header, truncate], ids=["header", "truncated"])
def test_damaged_metadata_gets_one_line_then_repair_recovers(copy, encoder_file, how) -> None:
    images, index = copy
    before, vectors = answers(index, images), by_path(index)
    db = index / DB_NAME
    how(db)
    for args in readers_and_writers(images, index, encoder_file):
        assert_one_error_line(cli(*args), str(db), "groco index repair")

    result = cli("index", "repair", index)
    assert result.exit_code == 0, result.output
    assert "damaged" in result.output and "recovered" in result.output
    assert list(index.glob("meta.sqlite.damaged-*"))  # kept for inspection
    with Store(db, readonly=True) as store:
        recovered = store.count()
    if how is damage_header:  # only the header was lost: every row comes back
        assert recovered == 25 and answers(index, images) == before
    # whatever SQLite lost, update embeds again: the index equals the original
    assert cli("index", "update", index, "--no-progress").exit_code == 0
    assert answers(index, images) == before
    after = by_path(index)
    assert after.keys() == vectors.keys()
    for path, vector in vectors.items():
        np.testing.assert_allclose(after[path], vector, atol=1e-5)


def test_damaged_index_file(copy, encoder_file) -> None:
    images, index = copy
    before = answers(index, images)
    path = index / read_manifest(index)["index_file"]
    truncate(path, 0.3)
    for args in readers_and_writers(images, index, encoder_file)[:2]:  # the readers
        assert_one_error_line(cli(*args), str(path), "groco index repair")
    with pytest.raises(DamagedFileError, match="FAISS cannot read it"):
        Searcher(index)
    result = cli("index", "repair", index)
    assert result.exit_code == 0 and "rebuilt" in result.output, result.output
    assert answers(index, images) == before
    assert not path.exists()  # the damaged file is gone with the state it belonged to
    # update also rebuilds a damaged index file, from the stored embeddings
    truncate(index / read_manifest(index)["index_file"], 0.5)
    result = cli("index", "update", index, "--no-progress")
    assert result.exit_code == 0 and "0 new" in result.output, result.output
    assert answers(index, images) == before


def test_damaged_manifest(copy) -> None:
    images, index = copy
    before = answers(index, images)
    manifest = index / "manifest.json"
    manifest.write_text('{"format": 1, "count": ')
    for args in (("search", index, images / "class0/img000.png"), ("index", "eval", index)):
        assert_one_error_line(cli(*args), str(manifest), "groco index repair")
    result = cli("index", "repair", index)
    assert result.exit_code == 0, result.output
    assert answers(index, images) == before and read_manifest(index)["count"] == 24


def test_damaged_shard(copy) -> None:
    images, index = copy
    before = answers(index, images)
    with Store(index / DB_NAME, readonly=True) as store:
        number = min(store.referenced_shards())
        in_shard = sum(r.shard == number for r in store.iter_rows(EMBEDDED))
    emb = shards.emb_path(index, number)
    truncate(emb, 0.6)
    assert_one_error_line(cli("index", "eval", index), str(emb), "groco index repair",
                          "groco index update")
    with Searcher(index) as searcher, pytest.raises(DamagedFileError, match=emb.name):
        searcher.more_like("class0/img000.png")
    result = cli("index", "repair", index)
    assert result.exit_code == 0, result.output
    assert f"{in_shard} images are not recorded" in result.output
    assert read_manifest(index)["count"] == 24 - in_shard
    assert cli("index", "update", index, "--no-progress").exit_code == 0
    assert answers(index, images) == before


def test_flipped_bytes_in_a_shard_are_found_by_repair(copy) -> None:
    """Bytes flipped inside a shard's vectors leave a file that still parses; repair finds
    it by its checksum, drops its rows, and update embeds those images again."""
    images, index = copy
    clean = by_path(index)
    with Store(index / DB_NAME, readonly=True) as store:
        number = min(store.referenced_shards())
        in_shard = sum(r.shard == number for r in store.iter_rows(EMBEDDED))
    emb = shards.emb_path(index, number)
    with open(emb, "r+b") as f:
        f.seek(emb.stat().st_size - 64)
        f.write(bytes(64))  # the last vector's tail zeroed: still a valid .npy
    assert len(shards.load_vectors(index, number)) == in_shard
    assert shards.checksum_problem(index, number) == f"{emb.name} does not match its checksum"
    result = cli("index", "repair", index)
    assert result.exit_code == 0, result.output
    assert f"{in_shard} images are not recorded" in result.output
    assert cli("index", "update", index, "--no-progress").exit_code == 0
    restored = by_path(index)
    assert restored.keys() == clean.keys()
    for path, vector in clean.items():
        np.testing.assert_allclose(restored[path], vector, atol=1e-6)
    assert shards.checksum_problem(index, min(shards.shards_on_disk(index))) is None
