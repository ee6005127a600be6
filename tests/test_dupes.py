"""Near-duplicate groups (groco.index.dupes, `groco index dupes`) and the score cut-off
(`Searcher(min_score=)`, `groco search --min-score`), on a tiny folder of random-block
images indexed with the raw-pixel encoder (distinct images score ~0, copies ~1)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from groco.cli import app
from groco.index import dupes
from groco.index.build import build_index_dir
from groco.index.dupes import find_duplicate_groups, scan_duplicates
from groco.index.manifest import IndexDirError
from groco.index.search import Searcher

EXACT = {"a/0.png", "b/0-copy.png", "b/0-copy2.png"}
RESIZED = {"a/1.png", "a/1-big.png"}
JPEG = {"b/2.png", "b/2.jpg"}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(images, index): 10 random-block images in a/ and b/, two byte copies of a/0.png,
    a 2x larger copy of a/1.png and a JPEG of b/2.png."""
    from groco.encoder.baselines import export_raw_pixels

    base = tmp_path_factory.mktemp("dupes")
    images = base / "images"
    rng = np.random.default_rng(0)
    for i in range(10):
        folder = images / ("b" if i in (2, 6, 7, 8, 9) else "a")
        folder.mkdir(parents=True, exist_ok=True)
        blocks = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(blocks).resize((36, 36), Image.NEAREST).save(folder / f"{i}.png")
    shutil.copyfile(images / "a/0.png", images / "b/0-copy.png")
    shutil.copyfile(images / "a/0.png", images / "b/0-copy2.png")
    Image.open(images / "a/1.png").resize((72, 72), Image.BILINEAR).save(images / "a/1-big.png")
    Image.open(images / "b/2.png").save(images / "b/2.jpg", quality=90)
    export_raw_pixels(12, base / "raw.onnx", parity_images=1)
    build_index_dir(images, base / "raw.onnx", base / "index", batch_size=8, progress=False)
    return images, base / "index"


def sets(groups) -> list[set[str]]:
    return [set(g.relpaths) for g in groups]


def test_groups_exact_and_near_copies_largest_first(planted) -> None:
    images, index = planted
    groups = find_duplicate_groups(index, 0.9)
    assert sets(groups)[0] == EXACT
    assert sorted(sets(groups)[1:], key=sorted) == sorted([RESIZED, JPEG], key=sorted)
    exact = groups[0]
    assert exact.exact and all(f.exact and f.score == 1.0 for f in exact.files)
    assert exact.files[0].path == str(images.resolve() / exact.files[0].relpath)
    for group in groups[1:]:
        assert not group.exact and not any(f.exact for f in group.files)
        assert group.files[0].score == 1.0 and 0.9 <= group.min_score < 1.0
        assert group.to_dict()["files"][0]["relpath"] == group.files[0].relpath


def test_threshold_is_respected_and_regrouping_matches_one_shot(planted) -> None:
    _, index = planted
    scan = scan_duplicates(index, 0.5)
    near = {g.files[1].relpath: g.min_score for g in scan.groups(0.9) if not g.exact}
    for t in (0.5, 0.9, min(near.values()), max(near.values()) + 1e-6, 1.0):
        groups = scan.groups(t)
        assert sets(groups) == sets(find_duplicate_groups(index, t))
        for group in groups:
            assert all(f.exact or f.score >= t for f in group.files[1:])
        # byte copies group at any threshold; a near copy exactly when it scores >= t
        assert sets(groups) == [EXACT] + [s for s in sets(scan.groups(0.9))[1:]
                                          if min(near[p] for p in s if p in near) >= t]
    with pytest.raises(ValueError, match=r"threshold must be in \[0.5, 1\]"):
        scan.groups(0.4)
    with pytest.raises(ValueError, match="linkage"):
        scan.groups(0.9, linkage="single")


def test_search_route_works_in_batches_of_the_k_nn_graph_never_n_by_n(planted, tmp_path,
                                                                       monkeypatch) -> None:
    index = tmp_path / "index"
    shutil.copytree(planted[1], index, ignore=shutil.ignore_patterns("neighbours"))
    calls = []
    real = dupes.search

    def spy(faiss_index, queries, k):
        calls.append((len(queries), k, faiss_index.ntotal))
        return real(faiss_index, queries, k)

    monkeypatch.setattr(dupes, "search", spy)
    groups = find_duplicate_groups(index, 0.9, batch_size=3, neighbours=2, store_graph=False)
    assert not (index / "neighbours").exists(), "store_graph=False leaves the directory as it was"
    ntotal = calls[0][2]
    assert sum(n for n, _, _ in calls) == ntotal  # every stored vector queried once
    assert max(n for n, _, _ in calls) <= 3 and {k for _, k, _ in calls} == {3}
    calls.clear()
    assert sets(groups) == sets(find_duplicate_groups(index, 0.9))
    assert not calls, "with the stored neighbour graph the index is not searched"
    info = json.loads((index / "neighbours" / "graph.json").read_text())
    assert info["k"] == info["count"] - 1 and info["exact"] and info["recall"] == 1.0


def test_an_open_searcher_is_reused(planted) -> None:
    _, index = planted
    with Searcher(index) as searcher:
        assert sets(scan_duplicates(searcher, 0.9).groups()) == sets(
            find_duplicate_groups(index, 0.9))


def test_cli_text_json_and_csv(planted) -> None:
    _, index = planted
    runner = CliRunner()
    text = runner.invoke(app, ["index", "dupes", str(index), "--threshold", "0.9",
                               "--no-progress"])
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines()[:2] == ["3 groups, 4 copies beyond the first file of each",
                                            "group 1: 3 files (exact)"]
    result = runner.invoke(app, ["index", "dupes", str(index), "--threshold", "0.9", "--json",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)
    assert isinstance(groups, list) and [g["size"] for g in groups] == [3, 2, 2]
    assert {f["relpath"] for f in groups[0]["files"]} == EXACT and groups[0]["exact"]
    assert all(isinstance(f["score"], float) for g in groups for f in g["files"])
    result = runner.invoke(app, ["index", "dupes", str(index), "--threshold", "0.9", "--csv",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 7 and {r["relpath"] for r in rows if r["group"] == "1"} == EXACT
    assert set(rows[0]) >= {"group", "group_size", "relpath", "score", "exact"}


def test_one_line_errors_for_missing_or_damaged_index(planted, tmp_path: Path) -> None:
    _, index = planted
    runner = CliRunner()
    for args in (["index", "dupes", str(tmp_path / "none")],
                 ["index", "dupes", str(index), "--json", "--csv"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    damaged = tmp_path / "damaged"
    shutil.copytree(index, damaged)
    (damaged / "meta.sqlite").write_bytes(b"not a database" * 100)
    for name in ("meta.sqlite-wal", "meta.sqlite-shm"):
        (damaged / name).unlink(missing_ok=True)
    with pytest.raises(IndexDirError, match=r"meta.sqlite: damaged .*groco index repair"):
        find_duplicate_groups(damaged)
    result = runner.invoke(app, ["index", "dupes", str(damaged), "--no-progress"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "meta.sqlite: damaged" in result.output


def test_min_score_cuts_search_results(planted) -> None:
    images, index = planted
    with Searcher(index) as searcher:
        everything = searcher.search_image(images / "a/1.png", k=10)
        assert len(everything) == 10 and everything[-1].score < 0.5
        kept = searcher.search_image(images / "a/1.png", k=10, min_score=0.9)
        assert {r.relpath for r in kept} == RESIZED and all(r.score >= 0.9 for r in kept)
        assert [r.relpath for r in searcher.more_like("a/1.png", k=10, min_score=0.9)] == [
            "a/1-big.png"]
        with pytest.raises(ValueError, match="min_score"):
            searcher.search_image(images / "a/1.png", min_score=2.0)
    result = CliRunner().invoke(app, ["search", str(index), str(images / "b/2.png"), "--json",
                                      "--min-score", "0.9"])
    assert result.exit_code == 0, result.output
    assert {r["relpath"] for r in json.loads(result.stdout)["results"]} == JPEG


def test_a_row_without_content_hash_is_grouped_by_similarity_and_said(
        planted, tmp_path: Path, caplog) -> None:
    import sqlite3

    _, index = planted
    copy = tmp_path / "unhashed"
    shutil.copytree(index, copy)
    with sqlite3.connect(copy / "meta.sqlite") as db:
        db.execute("UPDATE files SET hash = '' WHERE path = 'b/0-copy.png'")
    with caplog.at_level("WARNING", logger="groco.index.dupes"):
        groups = find_duplicate_groups(copy, 0.9)
    assert "1 embedded files have no content hash" in caplog.text
    assert sets(groups)[0] == EXACT
    unhashed = next(f for f in groups[0].files if f.relpath == "b/0-copy.png")
    assert not unhashed.exact and unhashed.score == pytest.approx(1.0, abs=1e-5)
