"""The serving geometry of a start, measured on the collection: candidates, cost, the
choice with and without labels, `groco export --geometry` and `groco train --geometry`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch
from conftest import make_collection
from safetensors.torch import save_file
from typer.testing import CliRunner

from groco.cli import app
from groco.training.config import TrainConfig
from groco.training.geometry import (
    RECORD,
    Geometry,
    GeometryScore,
    candidates,
    choose,
    default_geometry,
    score_geometries,
    with_geometry,
)

SMALL = [Geometry(16), Geometry(16, True), Geometry(24)]


@pytest.fixture(scope="module")
def start(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A weights file of timm's ``test_resnet`` (as a download would give it) and a small
    labelled collection."""
    base = tmp_path_factory.mktemp("geometry")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False)
    weights = base / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return weights, make_collection(base / "images", classes=3, per_class=6, size=24)


def test_a_geometry_reads_and_names_its_short_form():
    assert Geometry.parse("64s1") == Geometry(64, True) and Geometry(64, True).name == "64s1"
    assert Geometry.parse(" 96 ") == Geometry(96)
    for bad in ("s1", "4", "96px"):
        with pytest.raises(ValueError, match="64s1"):
            Geometry.parse(bad)
    assert candidates((64, 96), raw_sizes=()) == [Geometry(64), Geometry(64, True),
                                                  Geometry(96), Geometry(96, True)]
    assert Geometry.parse("RAW32") == Geometry(32, raw=True) and Geometry(32, raw=True).name \
        == "raw32"
    assert [g.name for g in candidates((64,), raw_sizes=(32, 16))] == ["64", "64s1", "raw16",
                                                                       "raw32"]
    assert Geometry.parse("96s1-max") == Geometry(96, True, pool="max")
    assert Geometry(96, True, pool="max").name == "96s1-max" and Geometry.parse("96-avg") \
        == Geometry(96)
    for bad in ("raw32-max", "96-gem", "96s1-"):
        with pytest.raises(ValueError, match="96s1-max"):
            Geometry.parse(bad)


def test_max_pooling_wins_a_tie_and_the_rule_without_labels():
    rows = [GeometryScore(Geometry(96, True), 0.7, knn_top1=0.85),
            GeometryScore(Geometry(96, True, pool="max"), 0.7, knn_top1=0.848),
            GeometryScore(Geometry(64), 0.1, knn_top1=0.80)]
    assert choose(rows, labelled=True)[0] == Geometry(96, True, pool="max")
    assert choose(rows, labelled=False)[0] == Geometry(96, True, pool="max")
    rows[0].knn_top1 = 0.86  # averaging a full tie above: it wins
    assert choose(rows, labelled=True)[0] == Geometry(96, True)


def test_labels_choose_by_knn_and_a_tie_goes_to_the_cheaper():
    rows = [GeometryScore(Geometry(64), 0.1, knn_top1=0.80),
            GeometryScore(Geometry(64, True), 0.4, knn_top1=0.852),
            GeometryScore(Geometry(96), 0.2, knn_top1=0.85),
            GeometryScore(Geometry(128), 9.0, skipped="over the cost cap 1")]
    assert choose(rows, labelled=True)[0] == Geometry(96)  # 0.002 below: a tie, cheaper
    rows[1].knn_top1 = 0.9
    assert choose(rows, labelled=True)[0] == Geometry(64, True)
    # without labels: the costliest of the scored
    assert choose(rows, labelled=False)[0] == Geometry(64, True)
    with pytest.raises(ValueError, match="max-cost"):
        choose(rows[3:], labelled=True)


def test_raw_pixels_are_chosen_with_labels_for_an_export_only():
    rows = [GeometryScore(Geometry(64), 0.1, knn_top1=0.80),
            GeometryScore(Geometry(32, raw=True), 0.0, knn_top1=0.83)]
    assert choose(rows, labelled=True)[0] == Geometry(32, raw=True)
    assert choose(rows, labelled=True, networks_only=True)[0] == Geometry(64)
    rows[1].knn_top1 = 0.804  # a tie goes to the cheaper: raw pixels cost nothing
    assert choose(rows, labelled=True)[0] == Geometry(32, raw=True)
    assert choose(rows, labelled=False)[0] == Geometry(64)  # no labels: never raw


def test_a_raw_candidate_scores_what_the_raw_pixel_encoder_searches(start, tmp_path):
    """The raw row's k-NN is the k-NN of the file `groco export --raw-pixels` writes, on
    the same images: what is chosen is what ships."""
    from groco.encoder.baselines import export_raw_pixels
    from groco.encoder.runtime import Encoder
    from groco.images import find_images
    from groco.knn import KNN_K, KNN_TEMPERATURE, knn_accuracy

    weights, images = start
    choice = score_geometries("test_resnet", images, [Geometry(16, raw=True)],
                              weights=weights, sample=1000, workers=0)
    row = choice.rows[0]
    assert row.cost == 0.0 and row.skipped is None
    export_raw_pixels(16, tmp_path / "raw.onnx", data=images)
    files = find_images(images)
    vectors = Encoder(tmp_path / "raw.onnx").embed(files)
    labels = np.array([sorted({f.parent.name for f in files}).index(f.parent.name)
                       for f in files])
    expected = knn_accuracy(vectors, labels, vectors, labels, exclude_self=True, k=KNN_K,
                            temperature=KNN_TEMPERATURE, num_classes=3)
    assert row.knn_top1 == pytest.approx(expected, abs=1e-6)


def test_export_auto_writes_raw_pixels_when_they_win_and_train_refuses_them(start, tmp_path):
    weights, images = start
    out = tmp_path / "start.onnx"
    runner = CliRunner()
    result = runner.invoke(app, [  # every network over the cap: raw pixels win
        "export", "--backbone", "test_resnet", "--weights", str(weights), "--data",
        str(images), "--geometry", "auto", "--max-cost", "0.001", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "writing the raw-pixel encoder" in result.output
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["groco.backbone"] == "raw-pixels"
    record = json.loads((tmp_path / "start.onnx.geometry.json").read_text())
    assert record["raw"] and record["chosen"] == f"raw{meta['groco.input_size']}"
    result = runner.invoke(app, ["train", str(images), "--out", str(tmp_path / "run"),
                                 "--backbone", "test_resnet", "--weights", str(weights),
                                 "--geometry", "raw32"])
    assert result.exit_code == 1 and "nothing to train" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_score_measures_cost_and_knn_and_skips_what_the_cap_excludes(start, one_thread):
    weights, images = start
    choice = score_geometries("test_resnet", images, SMALL, weights=weights, max_cost=0.02,
                              sample=12, workers=0)
    rows = {r.geometry: r for r in choice.rows}
    # the stride-1 stem (and no max-pool) puts 16x the pixels through a ResNet's body
    assert 8.0 < rows[Geometry(16, True)].cost / rows[Geometry(16)].cost < 17.0
    assert rows[Geometry(24)].cost == pytest.approx(rows[Geometry(16)].cost * 2.25, rel=0.2)
    assert choice.sample == 12 and choice.labelled
    for row in choice.rows:
        if row.cost > 0.02:
            assert row.skipped and row.knn_top1 is None
        else:
            assert row.skipped is None and 0.0 <= row.knn_top1 <= 1.0
            assert 0.0 <= row.copy_top1 <= 1.0
    assert rows[choice.chosen].skipped is None
    assert "chosen: " + choice.chosen.name in choice.table()
    # the cost is relative to the network's own stem, whichever candidates are asked
    alone = score_geometries("test_resnet", images, [Geometry(16, True)], weights=weights,
                             max_cost=1.0, sample=12, workers=0)
    assert alone.rows[0].cost == pytest.approx(rows[Geometry(16, True)].cost)


def test_train_config_takes_a_named_geometry_and_auto_needs_a_start(tmp_path, start):
    _, images = start
    config = TrainConfig(data=str(images), out=str(tmp_path / "run"), geometry="64s1")
    applied = with_geometry(config, tmp_path / "run")
    assert (applied.image_size, applied.small_stem, applied.geometry) == (64, True, "64s1")
    with pytest.raises(ValueError, match="--pretrained"):
        with_geometry(TrainConfig(data=str(images), out=str(tmp_path), geometry="auto"),
                      tmp_path)


def test_export_geometry_auto_scores_prints_records_and_exports_the_choice(start, tmp_path):
    weights, images = start
    out = tmp_path / "start.onnx"
    result = CliRunner().invoke(app, [
        "export", "--backbone", "test_resnet", "--weights", str(weights), "--data",
        str(images), "--geometry", "auto", "--max-cost", "0.4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "chosen: " in result.output
    record = json.loads((tmp_path / "start.onnx.geometry.json").read_text())
    chosen = Geometry(record["image_size"], record["small_stem"], pool=record["pool"])
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["groco.input_size"] == str(chosen.image_size)
    assert meta.get("groco.pool", "avg") == chosen.pool
    # every candidate, then the best network geometry of those with max pooling
    names = [r["geometry"] for r in record["rows"]]
    assert set(names[:-1]) == {g.name for g in candidates()}
    first_round = [GeometryScore(Geometry.parse(r["geometry"]), r["cost"], r["knn_top1"],
                                 skipped=r["skipped"]) for r in record["rows"][:-1]]
    best, _ = choose(first_round, labelled=True, networks_only=True)
    assert names[-1] == best.name + "-max"


def test_export_geometry_refuses_what_it_cannot_do(start, tmp_path):
    weights, images = start
    runner = CliRunner()
    for args, says in ((["--geometry", "auto", "--weights", str(weights)], "--data"),
                       (["--geometry", "auto", "--data", str(images)], "--pretrained"),
                       (["--geometry", "64", "--image-size", "64"], "not both")):
        result = runner.invoke(app, ["export", "--backbone", "test_resnet", "--out",
                                     str(tmp_path / "x.onnx"), *args])
        assert result.exit_code == 1 and says in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_a_start_from_weights_that_names_no_size_is_measured():
    assert default_geometry({"weights": "w.safetensors"}) == "auto"
    assert default_geometry({"pretrained": True, "image_size": None}) == "auto"
    assert default_geometry({"pretrained_file": "f.pth", "image_size": 64}) is None
    assert default_geometry({"weights": "w.safetensors", "geometry": "96s1"}) is None
    assert default_geometry({"image_size": None, "pretrained": False}) is None


def test_export_of_a_start_with_data_and_no_size_scores_its_geometries(start, tmp_path):
    weights, images = start
    runner = CliRunner()
    result = runner.invoke(app, [
        "export", "--backbone", "test_resnet", "--weights", str(weights), "--data",
        str(images), "--max-cost", "0.4", "--out", str(tmp_path / "start.onnx")])
    assert result.exit_code == 0, result.output
    assert "--geometry auto" in result.output and "chosen: " in result.output
    record = json.loads((tmp_path / "start.onnx.geometry.json").read_text())
    meta = {p.key: p.value for p in onnx.load(tmp_path / "start.onnx").metadata_props}
    assert meta["groco.backbone"] != "raw-pixels"  # asked for the network: it is the network
    assert meta["groco.input_size"] == str(record["image_size"])
    result = runner.invoke(app, [
        "export", "--backbone", "test_resnet", "--weights", str(weights), "--data",
        str(images), "--image-size", "24", "--out", str(tmp_path / "sized.onnx")])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "sized.onnx.geometry.json").exists()


def test_train_from_weights_without_a_size_trains_at_the_choice_and_resumes_it(start,
                                                                              tmp_path):
    weights, images = start
    run = tmp_path / "run"
    args = ["train", str(images), "--out", str(run), "--backbone", "test_resnet",
            "--weights", str(weights), "--geometry-max-cost", "0.4",
            "--epochs", "1", "--batch-size", "8", "--topk-neg", "4", "--workers", "0",
            "--projector-dim", "16", "--projector-hidden", "16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "--geometry auto" in result.output
    record = json.loads((run / RECORD).read_text())
    saved = TrainConfig.from_yaml(run / "config.yaml")
    assert (saved.image_size, saved.small_stem, saved.pool, saved.geometry) == (
        record["image_size"], record["small_stem"], record["pool"], record["chosen"])
    # the same command resumes: auto stands for what the run chose
    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert not record["raw"]  # a run trains a network, whatever raw pixels scored
    # the export says when raw pixels scored above the run's start on the same sample
    rows = {r["geometry"]: r for r in record["rows"]}
    rows["raw16"]["knn_top1"] = min(1.0, (rows[record["chosen"]]["knn_top1"] or 0) + 0.2)
    rows[record["chosen"]]["knn_top1"] = rows["raw16"]["knn_top1"] - 0.2
    (run / RECORD).write_text(json.dumps({**record, "rows": list(rows.values())}))
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "e.onnx")])
    assert result.exit_code == 0, result.output
    assert "note: raw pixels (raw16) scored" in result.output
    assert "groco export --raw-pixels 16" in result.output
