"""groco.index: build, update, sharded build + merge, search, eval, CLI (kill -9 and other
faults: test_faults.py)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_consistent, embeddings_by_path, make_collection
from PIL import Image

from groco.index import shards
from groco.index.build import build_index_dir, merge_index_dirs, parse_memory, update_index_dir
from groco.index.dupes import DEFAULT_THRESHOLD
from groco.index.evaluate import evaluate_index
from groco.index.manifest import IndexDirError, IndexMismatchError, read_manifest
from groco.index.parts import part_dir, resolve_slice
from groco.index.search import Searcher
from groco.index.store import BROKEN, DB_NAME, Store
from groco.knn import knn_accuracy

REPO = Path(__file__).resolve().parents[1]
FAST = {"batch_size": 4, "shard_size": 8, "workers": 2, "progress": False}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def other_encoder(encoder_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same network under another ``groco.hash`` (as a retrained encoder would be)."""
    import onnx

    model = onnx.load(encoder_file)
    for prop in model.metadata_props:
        if prop.key == "groco.hash":
            prop.value = "0123456789abcdef"
    out = tmp_path_factory.mktemp("other") / "other.onnx"
    onnx.save(model, out)
    return out


@pytest.fixture(scope="module")
def built(encoder_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """A collection (3 classes x 12, 2 broken files) and its index, built once."""
    base = tmp_path_factory.mktemp("built")
    images = make_collection(base / "images", classes=3, per_class=12, broken=2)
    report = build_index_dir(images, encoder_file, base / "index", **FAST)
    return images, base / "index", report


def broken_paths(index_dir: Path) -> set[str]:
    with Store(index_dir / DB_NAME, readonly=True) as store:
        return {r.path for r in store.iter_rows(BROKEN)}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`groco ARGS` in this process (stdout and stderr apart)."""
    from typer.testing import CliRunner

    from groco.cli import app

    result = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


# ----------------------------------------------------------------------------- build, search


def test_build_records_every_file_and_reports_broken(built) -> None:
    images, index_dir, report = built
    assert (report.embedded, report.broken, report.count) == (36, 2, 36)
    assert {p for p, _ in report.broken_files} == {"class0/broken0.jpg", "class0/broken1.jpg"}
    assert all("cannot decode" in reason for _, reason in report.broken_files)
    assert len(shards.shards_on_disk(index_dir)) >= 4  # 36 images, 8 per shard
    manifest = read_manifest(index_dir)
    assert manifest["images_root"] == str(images.resolve())
    assert manifest["metric"] == "inner_product" and manifest["dim"] == 512
    assert (manifest["count"], manifest["broken"]) == (36, 2)
    assert manifest["index_type"] == "Flat" and manifest["recall_at_10"] == 1.0
    with Store(index_dir / DB_NAME, readonly=True) as store:
        row = store.row_by_path("class0/broken0.jpg")
        assert row.status == BROKEN and "Truncated" in row.error and row.shard is None
        good = store.row_by_path("class1/img003.png")
        assert good.label == "class1" and len(good.hash) == 16
        assert good.size == (images / "class1/img003.png").stat().st_size
    assert_consistent(index_dir)


def test_search_finds_the_query_itself_first(built, encoder_file: Path) -> None:
    images, index_dir, _ = built
    with Searcher(index_dir) as searcher:
        for rel in ("class0/img000.png", "class1/img005.png", "class2/img011.png"):
            results = searcher.search_image(images / rel, k=5)
            assert results[0].relpath == rel and results[0].score == pytest.approx(1, abs=1e-4)
            assert results[0].path == str(images.resolve() / rel)
            ranks = [r.rank_score for r in results  # the post-processed order after copies
                     if r.score < DEFAULT_THRESHOLD]
            assert ranks == sorted(ranks, reverse=True)
        data = (images / "class2/img004.png").read_bytes()
        assert searcher.search_image(data, k=1)[0].relpath == "class2/img004.png"
        pil = Image.open(images / "class2/img004.png")
        assert searcher.search_image(pil, k=1)[0].relpath == "class2/img004.png"
        similar = searcher.more_like("class1/img002.png", k=4)
        assert len(similar) == 4 and "class1/img002.png" not in {r.relpath for r in similar}
        same = searcher.more_like(searcher.row("class1/img002.png").id, k=4)
        assert [r.id for r in same] == [r.id for r in similar]
        assert len(searcher.search_image(images / "class0/img001.png", k=100)) == 36
        with pytest.raises(ValueError, match="not embedded"):
            searcher.more_like("class0/broken0.jpg")
        facts = searcher.facts()
        assert facts["count"] == 36 and facts["dim"] == 512 and not facts["stale"]
        assert facts["encoder"]["hash"] == read_manifest(index_dir)["encoder_hash"]


def test_mismatched_encoder_is_refused(built, other_encoder: Path) -> None:
    images, index_dir, _ = built
    with pytest.raises(IndexMismatchError, match="not the encoder"):
        Searcher(index_dir, encoder_path=other_encoder)
    with pytest.raises(IndexMismatchError, match="hash"):
        build_index_dir(images, other_encoder, index_dir, **FAST)
    result = run_cli("search", str(index_dir), str(images / "class0/img000.png"),
                     "--encoder", str(other_encoder))
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error:") and "hash" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_search_json_cli_parses(built) -> None:
    images, index_dir, _ = built
    result = run_cli("search", str(index_dir), str(images / "class2/img003.png"), "-k", "3",
                     "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert [r["rank"] for r in payload["results"]] == [1, 2, 3]
    first = payload["results"][0]
    assert first["relpath"] == "class2/img003.png" and first["label"] == "class2"
    assert set(first) == {"rank", "id", "path", "relpath", "score", "label", "rank_score",
                          "copies", "hash"}
    assert len(first["hash"]) >= 16  # the file's content hash as indexed
    bad = run_cli("search", str(index_dir / "nope"), str(images / "class2/img003.png"))
    assert bad.returncode == 1 and "not found" in bad.stderr


def reference_precision_at_10(x: np.ndarray, labels: np.ndarray) -> float:
    """Brute force: of each item's 10 most similar others, the fraction with its label."""
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    return float((labels[top] == labels[:, None]).mean())


def test_evaluate_matches_the_knn_module(built, monkeypatch) -> None:
    _, index_dir, _ = built
    import groco.index.evaluate as evaluate

    # a clock that makes query i take exactly i ms: the percentiles are then known
    ticks = iter(np.ravel([(10.0 * i, 10.0 * i + i / 1000) for i in range(1, 21)]))
    real_clock = evaluate.perf_counter
    monkeypatch.setattr(evaluate, "perf_counter", lambda: next(ticks, real_clock()))
    report = evaluate_index(index_dir, k=5, temperature=0.07, latency_queries=20)
    assert (report.count, report.labelled, report.classes) == (36, 36, 3)
    assert report.latency_queries == 20
    assert report.latency_ms_p50 == pytest.approx(10.5)  # of 1, 2, ..., 20 ms
    assert report.latency_ms_p95 == pytest.approx(19.05)
    assert report.latency_ms_p99 == pytest.approx(19.81)
    vectors = embeddings_by_path(index_dir)
    paths = sorted(vectors, key=lambda p: read_id(index_dir, p))
    x = np.stack([vectors[p] for p in paths])
    labels = np.array([int(p[5]) for p in paths])  # "classN/..."
    expected = knn_accuracy(x, labels, x, labels, k=5, temperature=0.07, exclude_self=True)
    assert report.knn_top1 == pytest.approx(expected)
    assert report.recall_at_10 == 1.0  # Flat: the index is exact
    assert report.precision_at_10 == pytest.approx(reference_precision_at_10(x, labels))


def read_id(index_dir: Path, path: str) -> int:
    with Store(index_dir / DB_NAME, readonly=True) as store:
        return store.row_by_path(path).id


def test_index_package_never_imports_torch() -> None:
    code = ("import sys, groco.index.build, groco.index.search, groco.index.evaluate; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


# ----------------------------------------------------------------------------- update


@pytest.mark.parametrize("index_type", ["IVF4,Flat", "HNSW16"])  # in place / rebuilt
def test_update_equals_a_fresh_build(encoder_file, tmp_path, index_type: str) -> None:
    images = make_collection(tmp_path / "images", classes=2, per_class=12, broken=1)
    out = tmp_path / "index"
    build_index_dir(images, encoder_file, out, index_type=index_type, **FAST)
    with Store(out / DB_NAME, readonly=True) as store:
        before = {r.path: r.id for r in store.iter_rows()}

    make_collection(tmp_path / "extra", classes=3, per_class=3, seed=7)
    shutil.copytree(tmp_path / "extra" / "class2", images / "class2")  # 3 new files
    (images / "class0/img001.png").unlink()  # deleted
    (images / "class0/broken0.jpg").unlink()  # deleted broken file
    shutil.copy(tmp_path / "extra/class0/img000.png", images / "class1/img004.png")  # changed
    touched = images / "class1/img007.png"  # same bytes, new mtime
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    (images / "class1/bad.png").write_bytes(b"not an image")  # new broken file

    report = update_index_dir(out, **FAST)
    assert (report.embedded, report.changed, report.deleted) == (3, 1, 2)
    assert (report.touched, report.broken) == (1, 1)
    fresh = build_index_dir(images, encoder_file, tmp_path / "fresh", index_type=index_type,
                            **FAST)
    updated, clean = embeddings_by_path(out), embeddings_by_path(tmp_path / "fresh")
    assert updated.keys() == clean.keys() and len(clean) == fresh.count == 26
    for path in clean:
        np.testing.assert_allclose(updated[path], clean[path], atol=1e-5)
    assert broken_paths(out) == broken_paths(tmp_path / "fresh") == {"class1/bad.png"}
    assert_consistent(out)
    with Store(out / DB_NAME, readonly=True) as store:
        after = {r.path: r.id for r in store.iter_rows()}
    kept = set(before) - {"class0/img001.png", "class0/broken0.jpg", "class1/img004.png"}
    assert all(after[p] == before[p] for p in kept)  # untouched files keep their ids
    assert after["class1/img004.png"] not in before.values()  # a changed file gets a new id
    assert read_manifest(out)["index_type"] == index_type
    with Searcher(out) as searcher:
        hit = searcher.search_image(images / "class1/img004.png", k=1)[0]
        assert hit.relpath == "class1/img004.png" and hit.score == pytest.approx(1, abs=1e-4)
    again = update_index_dir(out, **FAST)
    assert (again.embedded, again.changed, again.deleted, again.touched) == (0, 0, 0, 0)


# ----------------------------------------------------------------------------- shards


def test_sharded_build_and_merge_equal_a_single_build(built, encoder_file, tmp_path,
                                                      monkeypatch) -> None:
    images, single, _ = built
    parts = tmp_path / "parts"
    sizes = []
    for i in range(3):
        if i == 2:  # torchrun's environment instead of arguments
            monkeypatch.setenv("RANK", "2")
            monkeypatch.setenv("WORLD_SIZE", "3")
            report = build_index_dir(images, encoder_file, parts, **FAST)
        else:
            report = build_index_dir(images, encoder_file, parts, shard=i, num_shards=3,
                                     **FAST)
        assert report.index_dir == part_dir(parts, i, 3) and report.index_type is None
        sizes.append(report.embedded + report.broken)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert sum(sizes) == 38 and min(sizes) > 0

    with pytest.raises(IndexDirError, match="missing \\[1\\]"):
        merge_index_dirs([part_dir(parts, 0, 3), part_dir(parts, 2, 3)], tmp_path / "bad")
    merged = merge_index_dirs([parts], tmp_path / "merged", shard_size=8, progress=False)
    assert (merged.count, merged.broken_total) == (36, 2)
    a, b = embeddings_by_path(tmp_path / "merged"), embeddings_by_path(single)
    assert a.keys() == b.keys()
    for path in a:
        np.testing.assert_allclose(a[path], b[path], atol=1e-5)
    assert broken_paths(tmp_path / "merged") == broken_paths(single)
    with Store(tmp_path / "merged" / DB_NAME, readonly=True) as m, \
            Store(single / DB_NAME, readonly=True) as s:
        assert [(r.id, r.path, r.hash) for r in m.iter_rows()] == \
            [(r.id, r.path, r.hash) for r in s.iter_rows()]  # same ids: by path order
    assert_consistent(tmp_path / "merged")
    with Searcher(tmp_path / "merged") as searcher:
        assert searcher.search_image(images / "class0/img004.png", k=1)[0].relpath == \
            "class0/img004.png"
    before = embeddings_by_path(tmp_path / "merged")
    # the same merge run again (after it finished, or was killed at its very end): a no-op
    result = run_cli("index", "merge", str(parts), "--out", str(tmp_path / "merged"))
    assert result.returncode == 0 and "nothing to merge" in result.stdout, result.stderr
    again = embeddings_by_path(tmp_path / "merged")
    assert again.keys() == before.keys()
    assert all(np.array_equal(again[p], before[p]) for p in before)
    assert_consistent(tmp_path / "merged")
    # anything else into a finished index is refused
    result = run_cli("index", "merge", str(single), "--out", str(tmp_path / "merged"))
    assert result.returncode == 1 and "already holds an index" in result.stderr
    # a merge killed while it created its database (no tables yet, or the tables and
    # nothing in them) is restarted on rerun, not taken for a damaged or foreign index
    for name, make in (("no-tables", lambda db: sqlite3.connect(db).close()),
                       ("schema-only", lambda db: Store(db).close())):
        out = tmp_path / name
        out.mkdir()
        make(out / DB_NAME)
        report = merge_index_dirs([parts], out, shard_size=8, progress=False)
        assert report.copied == 38 and embeddings_by_path(out).keys() == before.keys()


# ----------------------------------------------------------------------------- helpers


def test_one_label_rule_for_paths_and_relative_paths(tmp_path: Path) -> None:
    from groco.images import label_of, label_of_relpath

    for rel, label in (("cats/a/x.jpg", "cats"), ("dogs/y.png", "dogs"), ("z.png", None)):
        assert label_of_relpath(rel) == label
        assert label_of(tmp_path / rel, tmp_path) == label


def test_memory_and_slice_arguments() -> None:
    assert parse_memory("8G") == 8 << 30 and parse_memory("512MiB") == 512 << 20
    assert parse_memory("1.5g") == 3 << 29 and parse_memory(None) is None
    with pytest.raises(ValueError):
        parse_memory("lots")
    assert resolve_slice(1, 4) == (1, 4) and resolve_slice(0, 1) is None
    with pytest.raises(ValueError):
        resolve_slice(4, 4)
    with pytest.raises(ValueError):
        resolve_slice(1, None)


def test_worker_processes_take_disjoint_slices_that_cover_the_collection(
        encoder_file: Path, tmp_path: Path) -> None:
    """Two workers started as torchrun starts them (RANK, WORLD_SIZE), at the same time and
    each with its own string-hash seed, build their slices of one collection: the slices
    are disjoint and cover it, and the merged index holds every image once."""
    images = make_collection(tmp_path / "images", classes=2, per_class=8, size=16, broken=1)
    files = {p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file()}
    parts = tmp_path / "parts"
    command = [sys.executable, "-m", "groco.cli", "index", "build", str(images), "--encoder",
               str(encoder_file), "--out", str(parts), "--batch-size", "4", "--shard-size",
               "4", "--no-progress"]
    workers = [subprocess.Popen(command, cwd=REPO, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE,
                                env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2",
                                     "PYTHONHASHSEED": str(rank + 1)})
               for rank in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    held = []
    for rank in range(2):
        with Store(part_dir(parts, rank, 2) / DB_NAME, readonly=True) as store:
            held.append(store.paths())
            assert (store.get_info("slice"), store.get_info("part_complete")) == (f"{rank}/2",
                                                                                  "1")
    assert held[0] and held[1] and not held[0] & held[1]
    assert held[0] | held[1] == files
    merged = merge_index_dirs([parts], tmp_path / "merged", progress=False)
    with Store(tmp_path / "merged" / DB_NAME, readonly=True) as store:
        rows = list(store.iter_rows())
    assert sorted(r.path for r in rows) == sorted(files)  # every image, once
    assert [r.id for r in rows] == list(range(len(files)))
    assert (merged.count, merged.broken_total) == (len(files) - 1, 1)
    assert_consistent(tmp_path / "merged")
