"""`groco index build --ray`: Ray Data embeds into the parts of a sharded build, which are
merged; the result is the plain build's (ids by path, embeddings, broken files)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_consistent, embeddings_by_path, make_collection

from groco.index.build import build_index_dir
from groco.index.manifest import read_manifest
from groco.index.store import DB_NAME, Store

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network in CI
ray = pytest.importorskip("ray", reason="the groco[ray] extra (in the test extra)")

FAST = {"batch_size": 4, "shard_size": 6, "progress": False}


@pytest.fixture(scope="module")
def local_ray():
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"ray.init: {time.perf_counter() - start:.1f} s")
    yield
    ray.shutdown()


def rows_by_path(index_dir: Path) -> dict[str, tuple[int, str, str]]:
    with Store(index_dir / DB_NAME, readonly=True) as store:
        return {r.path: (r.id, r.hash, r.status) for r in store.iter_rows()}


@pytest.mark.slow
def test_ray_build_equals_the_plain_build(local_ray, encoder_file, tmp_path) -> None:
    images = make_collection(tmp_path / "images", classes=2, per_class=9, broken=1)
    plain = tmp_path / "plain"
    build_index_dir(images, encoder_file, plain, workers=1, **FAST)
    out = tmp_path / "ray"
    report = build_index_dir(images, encoder_file, out, ray_address="local", workers=2,
                             **FAST)
    assert (report.embedded, report.broken, report.count) == (18, 1, 18)
    assert sorted(p.name for p in (out / "parts").iterdir()) == [
        "part-00000-of-00002", "part-00001-of-00002"]
    assert rows_by_path(out) == rows_by_path(plain)  # same ids, hashes, broken files
    a, b = embeddings_by_path(out), embeddings_by_path(plain)
    assert a.keys() == b.keys()
    for path in a:
        np.testing.assert_allclose(a[path], b[path], atol=1e-5)
    assert read_manifest(out)["count"] == 18
    assert_consistent(out)
    again = build_index_dir(images, encoder_file, out, ray_address="local", workers=2, **FAST)
    assert (again.embedded, again.skipped, again.count) == (0, 19, 18)  # resumed: nothing


def test_ray_refuses_slices(encoder_file, tmp_path) -> None:
    images = make_collection(tmp_path / "images", classes=1, per_class=2)
    with pytest.raises(ValueError, match="--ray"):
        build_index_dir(images, encoder_file, tmp_path / "out", ray_address="local",
                        shard=0, num_shards=2, **FAST)


@pytest.mark.slow
def test_the_ray_flag_builds_on_ray_alone_and_with_an_address(local_ray, encoder_file,
                                                              tmp_path, monkeypatch) -> None:
    """`groco index build IMAGES --ray` (no RAY_ADDRESS: Ray here) and `--ray local` on a
    running local Ray: both embed through Ray into parts and end as the plain build."""
    from typer.testing import CliRunner

    from groco.cli import app

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    images = make_collection(tmp_path / "images", classes=2, per_class=5)
    plain = tmp_path / "plain"
    build_index_dir(images, encoder_file, plain, workers=1, **FAST)
    for name, ray in (("alone", ["--ray"]), ("address", ["--ray", "local"])):
        out = tmp_path / name
        result = CliRunner().invoke(app, ["index", "build", str(images), *ray, "--encoder",
                                          str(encoder_file), "--out", str(out), "--workers",
                                          "2", "--batch-size", "4", "--no-progress"])
        assert result.exit_code == 0, result.output
        assert (out / "parts").is_dir() and rows_by_path(out) == rows_by_path(plain)
