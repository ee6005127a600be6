"""groco index eval over several indexes of one collection: k-NN, precision@10, mAP@R."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_collection
from PIL import Image
from typer.testing import CliRunner

from groco.cli import app
from groco.index import shards
from groco.index.build import build_index_dir
from groco.index.evaluate import evaluate_index, evaluate_indexes, map_at_r
from groco.index.manifest import IndexDirError
from groco.index.store import DB_NAME, EMBEDDED, Store
from groco.knn import class_indices, knn_accuracy

FAST = {"batch_size": 8, "shard_size": 16, "workers": 2, "progress": False}


@pytest.fixture(scope="module")
def second_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest encoder's network with other random weights (another encoder)."""
    from groco.encoder.export import export_untrained
    from groco.training.config import TrainConfig

    run = tmp_path_factory.mktemp("run2")
    data = make_collection(run / "data", classes=2, per_class=2)
    config = TrainConfig(data=str(data), out=str(run), backbone="resnet18", image_size=32,
                         small_stem=True, projector_hidden=32, projector_dim=16,
                         mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    export_untrained(config, run, run / "encoder.onnx", seed=1, parity_images=2)
    return run / "encoder.onnx"


@pytest.fixture(scope="module")
def two(encoder_file: Path, second_encoder: Path, tmp_path_factory: pytest.TempPathFactory):
    """One folder (4 classes x 8, one unlabelled image in the root) indexed by two encoders."""
    base = tmp_path_factory.mktemp("eval")
    images = overlapping_classes(base / "images", classes=4, per_class=8)
    shutil.copy(images / "class1" / "img000.png", images / "loose.png")
    for name, encoder in (("a", encoder_file), ("b", second_encoder)):
        build_index_dir(images, encoder, base / name, **FAST)
    return images, base / "a", base / "b"


def overlapping_classes(root: Path, classes: int, per_class: int, seed: int = 3) -> Path:
    """Noisy images whose class shifts the colour a little: no encoder separates them
    perfectly, so every figure is informative (not 1.0)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            base = np.array([110 + 12 * c, 128, 140 - 12 * c]) + rng.normal(0, 25, 3)
            pixels = base + rng.normal(0, 60, (24, 24, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                root / f"class{c}" / f"img{i:03d}.png")
    return root


def stored(index_dir: Path) -> tuple[list[str], np.ndarray, list[str | None]]:
    with Store(index_dir / DB_NAME, readonly=True) as store:
        rows = sorted(store.iter_rows(EMBEDDED), key=lambda r: r.path)
    x = shards.gather(index_dir, np.array([r.shard for r in rows]),
                      np.array([r.shard_row for r in rows]))
    return [r.path for r in rows], x, [r.label for r in rows]


def reference_map_at_r(x: np.ndarray, labels: np.ndarray) -> float:
    """Straight from the formula, one query at a time (labelled rows only)."""
    aps = []
    for q in range(len(x)):
        r = int((labels == labels[q]).sum()) - 1
        if r < 1:
            continue
        others = [j for j in range(len(x)) if j != q]
        others.sort(key=lambda j: -float(x[q] @ x[j]))
        rel = [labels[j] == labels[q] for j in others[:r]]
        aps.append(sum(rel[i] * sum(rel[: i + 1]) / (i + 1) for i in range(r)) / r)
    return float(np.mean(aps))


def test_map_at_r_by_hand() -> None:
    # unit vectors at these angles (degrees); classes 0 and 1. By hand, R = 2 for all:
    # AP@R = 0.5, 0.25, 0 for 0, 12, 50 and 0, 0.5, 0.5 for 20, 63, 71.
    angles = np.radians([0, 12, 50, 20, 63, 71])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert map_at_r(x, labels) == pytest.approx(1.75 / 6)
    assert map_at_r(x, labels, np.array([0, 1])) == pytest.approx(0.75 / 2)
    apart = np.radians([0, 10, 100, 115])
    y = np.stack([np.cos(apart), np.sin(apart)], axis=1)
    assert map_at_r(y, np.array([0, 0, 1, 1])) == pytest.approx(1.0)
    assert map_at_r(y, np.array([0, 1, 0, 1])) == pytest.approx(0.0)
    assert map_at_r(y, np.array([0, 1, 2, 3])) is None  # no class has a second member


def test_two_encoders_one_table_against_brute_force(two) -> None:
    images, a, b = two
    reports = evaluate_indexes([a, b], k=5, latency_queries=10)
    assert [r.index_dir for r in reports] == [str(a), str(b)]
    maps = []
    for report, index_dir in zip(reports, (a, b), strict=True):
        paths, x, names = stored(index_dir)
        assert paths[0] == "class0/img000.png" and "loose.png" in paths
        classes, labels = class_indices(names)
        keep = labels >= 0
        assert (report.count, report.labelled, report.classes) == (33, 32, 4)
        assert report.map_at_r == pytest.approx(reference_map_at_r(x[keep], labels[keep]))
        expected_knn = knn_accuracy(x[keep], labels[keep], x[keep], labels[keep], k=5,
                                    exclude_self=True)
        assert report.knn_top1 == pytest.approx(expected_knn)
        assert report.recall_at_10 == 1.0
        maps.append(report.map_at_r)
    assert maps[0] != maps[1]  # two encoders, two figures: nothing shared between rows
    single = evaluate_index(b, k=5, latency_queries=10)
    assert single.map_at_r == reports[1].map_at_r and single.knn_top1 == reports[1].knn_top1


def test_other_collections_are_refused(two, encoder_file: Path, tmp_path: Path) -> None:
    images, a, _ = two
    other = make_collection(tmp_path / "other", classes=2, per_class=4)
    build_index_dir(other, encoder_file, tmp_path / "other-index", **FAST)
    with pytest.raises(IndexDirError, match="different folders"):
        evaluate_indexes([a, tmp_path / "other-index"])
    # the same folder with one more file: another set of files
    Image.open(images / "class2/img001.png").save(images / "class2/extra.png")
    try:
        build_index_dir(images, encoder_file, tmp_path / "grown", **FAST)
    finally:
        (images / "class2/extra.png").unlink()
    with pytest.raises(IndexDirError, match="different files.*class2/extra.png.*update"):
        evaluate_indexes([a, tmp_path / "grown"])
    result = CliRunner().invoke(app, ["index", "eval", str(a), str(tmp_path / "grown")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot compare")


def test_cli_prints_one_table_and_json(two) -> None:
    _, a, b = two
    runner = CliRunner()
    result = runner.invoke(app, ["index", "eval", str(a), str(b), "-k", "5"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("index"))
    assert "mAP@R" in lines[header] and "P@10" in lines[header]
    rows = [line for line in lines[header + 1:] if not line.startswith("  +")]
    assert [row.split()[0] for row in rows] == [str(a), str(b)]
    reports = evaluate_indexes([a, b], k=5, latency_queries=10)
    for row, report in zip(rows, reports, strict=True):
        cells = row.split()
        assert cells[2:5] == [f"{report.knn_top1:.4f}", f"{report.precision_at_10:.4f}",
                              f"{report.map_at_r:.4f}"]
    result = runner.invoke(app, ["index", "eval", str(a), str(b), "-k", "5", "--json"])
    payload = json.loads(result.output)
    assert [p["index_dir"] for p in payload] == [str(a), str(b)]
    assert [p["map_at_r"] for p in payload] == [r.map_at_r for r in reports]
