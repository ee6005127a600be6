"""Curation (groco.index.curate, `groco index curate`): outlier scores rank what is unlike
its neighbourhood first, the sample covers the collection better than chance and never
holds two copies of one image, and the command's answers and errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import make_collection
from PIL import Image

from groco.encoder.baselines import export_raw_pixels
from groco.index.build import build_index_dir
from groco.index.curate import coverage, k_centre, outlier_scores, random_sample
from groco.index.neighbours import NeighbourGraph, partition

REPO = Path(__file__).resolve().parents[1]


def graph_of(x: np.ndarray, k: int = 16) -> NeighbourGraph:
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1)[:, :k]
    return NeighbourGraph(np.arange(len(x)), order, np.take_along_axis(s, order, 1))


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def two_clusters(rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A dense cluster (300), a sparse one (60) and one stray point just off the dense one
    (the last row)."""
    dim = 16
    a, b = np.eye(dim)[0], np.eye(dim)[1]
    dense = a + 0.05 * rng.standard_normal((300, dim))
    sparse = b + 0.5 * rng.standard_normal((60, dim))
    stray = a + 0.4 * rng.standard_normal((1, dim))
    return unit(np.concatenate([dense, sparse, stray])), 360


def test_every_score_puts_far_planted_points_first() -> None:
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((5, 32)))
    x = unit(centres[rng.integers(0, 5, 500)] + 0.15 * rng.standard_normal((500, 32)))
    planted = unit(rng.standard_normal((5, 32)))
    graph = graph_of(np.concatenate([x, planted]))
    for score in ("lof", "knn", "weighted"):
        values = outlier_scores(graph, score)
        assert set(np.argsort(-values)[:5]) == set(range(500, 505)), score


def test_a_group_of_strays_hides_from_the_graph_scores_not_from_the_global_one() -> None:
    from groco.index.curate.outliers import global_scores

    rng = np.random.default_rng(4)
    centres = unit(rng.standard_normal((8, 32)))
    x = unit(centres[rng.integers(0, 8, 5000)] + 0.08 * rng.standard_normal((5000, 32)))
    stray = unit(rng.standard_normal((1, 32)))
    group = unit(stray + 0.03 * rng.standard_normal((30, 32)))  # 30 look-alike strays
    both = np.concatenate([x, group])
    planted = set(range(5000, 5030))
    knn = outlier_scores(graph_of(both), "knn")
    assert len(planted & set(np.argsort(-knn)[:30].tolist())) < 10  # each hides in its group
    calls = []

    def vectors(rows: np.ndarray) -> np.ndarray:
        calls.append(len(rows))
        return both[rows]

    values = global_scores(len(both), vectors)
    assert len(planted & set(np.argsort(-values)[:30].tolist())) >= 28
    assert max(calls) <= 16384  # streamed in blocks
    again = global_scores(len(both), lambda rows: both[rows])
    np.testing.assert_array_equal(values, again)  # seeded sample: the same scores


def test_lof_judges_a_point_against_its_neighbourhood() -> None:
    x, stray = two_clusters(np.random.default_rng(1))
    graph = graph_of(x)
    knn, lof = outlier_scores(graph, "knn"), outlier_scores(graph, "lof")
    # by raw distance the sparse cluster's members look as unusual as the stray point
    assert (knn[300:360] > knn[stray]).sum() > 10
    # against their neighbourhood they do not: the stray point is the first outlier
    assert int(np.argmax(lof)) == stray
    with pytest.raises(ValueError, match="score must be one of"):
        outlier_scores(graph, "isolation")


def test_sample_covers_better_than_chance_and_never_holds_a_copy_twice() -> None:
    rng = np.random.default_rng(2)
    centres = unit(rng.standard_normal((20, 24)))
    x = unit(centres[rng.integers(0, 20, 2000)] + 0.2 * rng.standard_normal((2000, 24)))
    x = np.concatenate([x, x[:50]])  # 50 exact copies
    picks, gaps, radius = k_centre(x, 40, seed=3)
    chosen = set(picks.tolist())
    assert len(chosen) == 40
    assert not any(c in chosen and c - 2000 in chosen for c in range(2000, 2050))
    assert abs(radius - coverage(x, picks)) < 1e-5
    assert np.isinf(gaps[0]) and (np.diff(gaps[1:]) <= 1e-6).all()  # farthest first
    randoms = [coverage(x, random_sample(len(x), 40, s)) for s in range(5)]
    assert radius < min(randoms)
    again = k_centre(x, 40, seed=3)[0]
    np.testing.assert_array_equal(picks, again)  # same seed, same sample
    with pytest.raises(ValueError, match="give 1 to 2050"):
        k_centre(x, 2051)
    with pytest.raises(ValueError, match="give 1 to 2050"):
        k_centre(x, 0)


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("curate")
    images = make_collection(root / "images", classes=3, per_class=15, size=8)
    odd = np.zeros((8, 8, 3), np.uint8)
    odd[::2, ::2] = 255  # a checkerboard among flat hues
    Image.fromarray(odd).save(images / "class1" / "odd.png")
    encoder = root / "raw.onnx"
    export_raw_pixels(8, encoder, parity_images=2)
    build_index_dir(images, encoder, root / "index", progress=False)
    return root / "index"


def run(*args: str) -> subprocess.CompletedProcess:
    """`groco index curate ARGS` in this process (stdout and stderr apart)."""
    from typer.testing import CliRunner

    from groco.cli import app

    result = CliRunner().invoke(app, ["index", "curate", *args])
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def test_cli_outliers_in_text_json_and_csv(index: Path) -> None:
    text = run(str(index), "--outliers", "3", "--no-progress")
    assert text.returncode == 0, text.stderr
    assert "neighbour graph built" in text.stderr  # an index without a graph gets one
    lines = text.stdout.splitlines()
    assert lines[0].startswith("3 most unusual items (global score)")
    assert "class1/odd.png" in lines[1]
    as_json = json.loads(run(str(index), "--outliers", "3", "--json", "--no-progress").stdout)
    assert as_json[0]["relpath"] == "class1/odd.png" and "nearest" in as_json[0]
    assert as_json[0]["score"] >= as_json[1]["score"] >= as_json[2]["score"]
    rows = list(csv.reader(io.StringIO(run(str(index), "--outliers", "2", "--csv",
                                           "--score", "knn", "--no-progress").stdout)))
    assert rows[0][:3] == ["rank", "relpath", "score"] and rows[1][1] == "class1/odd.png"
    as_json = json.loads(run(str(index), "--outliers", "1", "--json", "--score", "global",
                             "--no-progress").stdout)
    assert as_json[0]["relpath"] == "class1/odd.png"


def test_cli_sample_reports_its_coverage(index: Path) -> None:
    result = run(str(index), "--sample", "6", "--json", "--no-progress")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["count"] == 46 and len(facts["files"]) == 6
    assert facts["radius"] <= facts["random_radius"]
    assert facts["files"][0]["score"] is None  # the first pick has no earlier pick
    labels = {f["label"] for f in facts["files"]}
    assert labels == {"class0", "class1", "class2"}
    text = run(str(index), "--sample", "6", "--no-progress")
    assert text.stdout.startswith("6 of 46 items; coverage radius ")


@pytest.mark.parametrize("args, message", [
    ((), "give --outliers N or --sample N (one of them)"),
    (("--outliers", "2", "--sample", "2"), "give --outliers N or --sample N (one of them)"),
    (("--outliers", "47"), "--outliers 47 is larger than the collection (46 items)"),
    (("--sample", "99"), "--sample 99 is larger than the collection (46 items)"),
    (("--outliers", "2", "--score", "mean"),
     "--score must be one of lof, knn, weighted, global, got 'mean'"),
])
def test_cli_errors_are_one_line(index: Path, args: tuple[str, ...], message: str) -> None:
    result = run(str(index), *args, "--no-progress")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: {message}"


def test_cli_refuses_a_count_below_one(index: Path) -> None:
    result = run(str(index), "--outliers", "0")
    assert result.returncode == 2
    assert "Invalid value for '--outliers': Input should be greater than or equal to 1" in \
        result.stderr


def test_partition_is_what_the_scores_read(index: Path) -> None:
    """The stored graph's rows are the exact nearest others at this size."""
    from groco.index import shards
    from groco.index.neighbours import read_graph
    from groco.index.store import DB_NAME, Store

    run(str(index), "--outliers", "1", "--no-progress")
    graph = read_graph(index)
    with Store(index / DB_NAME, readonly=True) as store:
        ids, numbers, rows = store.embedded_locations()
    x = shards.gather(index, numbers, rows)
    want = graph_of(x, graph.k).neighbours
    assert partition.recall_at_k(graph.positions(), want) == 1.0
