"""The figure a user watches while training is the one the exported encoder delivers: the
k-NN monitor of a run equals `groco index eval`'s k-NN on the same images, through export
and the index, with an eval resize different from the input size, and for runs that start
from weights at sizes where the stem choice differs; the export of a run is the network it
trained or nothing."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from conftest import hard_collection
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from groco.cli import app
from groco.encoder.baselines import export_backbone
from groco.encoder.export import ExportError, export_encoder
from groco.encoder.runtime import Encoder
from groco.index.build import build_index_dir
from groco.training import checkpoint
from groco.training.config import TrainConfig
from groco.training.trainer import Trainer


def test_monitor_knn_equals_index_eval(tmp_path):
    data = hard_collection(tmp_path / "images")
    run = tmp_path / "run"
    config = TrainConfig(data=str(data), out=str(run), backbone="resnet18", image_size=16,
                         eval_resize=20, batch_size=12, topk_neg=4, workers=0,
                         projector_dim=32, projector_hidden=32, epochs=1, lr=0.5)
    Trainer(config, show_progress=False).fit()
    with open(run / "metrics.csv", newline="") as f:
        monitor = float(list(csv.DictReader(f))[-1]["knn_top1"])

    export_encoder(run, tmp_path / "encoder.onnx", last=True)
    build_index_dir(data, tmp_path / "encoder.onnx", tmp_path / "index", progress=False)
    result = CliRunner().invoke(app, ["index", "eval", str(tmp_path / "index"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    report = report[0] if isinstance(report, list) else report
    assert 0.3 < monitor < 1.0  # a figure that can move, not a saturated one
    assert abs(report["knn_top1"] - monitor) < 1e-4


def _start_file(path: Path) -> Path:
    """A start as a user has it: ``test_resnet``'s 1000-class state dict, seeded."""
    torch.manual_seed(3)
    model = timm.create_model("test_resnet", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _monitor(run: Path, epoch: int) -> float:
    with open(run / "metrics.csv", newline="") as f:
        return float(next(r for r in csv.DictReader(f) if int(r["epoch"]) == epoch)["knn_top1"])


def _index_eval(data: Path, encoder: Path, where: Path) -> float:
    build_index_dir(data, encoder, where, progress=False)
    result = CliRunner().invoke(app, ["index", "eval", str(where), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    return (report[0] if isinstance(report, list) else report)["knn_top1"]


@pytest.mark.slow
@pytest.mark.parametrize("size", [64, 96])
@pytest.mark.parametrize("start", ["weights", "pretrained_file"])
def test_export_of_a_run_from_weights_is_the_network_it_trained(tmp_path, start, size,
                                                                one_thread):
    """At <= 64 px an untrained CNN gets the stride-1 stem and a started one keeps its own:
    the export rebuilds the stem the run trained (its recorded facts), and its parity check
    is against the trained network's own features, so another stem could not pass."""
    data = hard_collection(tmp_path / "images", classes=3, per_class=10)
    start_file = _start_file(tmp_path / "start.safetensors")
    common = dict(data=str(data), backbone="test_resnet", image_size=size, batch_size=12,
                  topk_neg=4, workers=0, projector_dim=16, projector_hidden=16, lr=0.5,
                  **{start: str(start_file)})

    # Epoch 1 trains only the heads: the kept epoch is the start, exported as it is.
    first = tmp_path / "warm-up"
    Trainer(TrainConfig(out=str(first), epochs=1, **common), show_progress=False).fit()
    assert checkpoint.weights_metadata(first, checkpoint.BEST)["epoch"] == "0"
    report = export_encoder(first, tmp_path / "start-run.onnx")
    assert report.trained_diff is not None and report.trained_diff < 1e-5
    export_backbone("test_resnet", size, tmp_path / "start.onnx", weights=start_file)
    images = sorted(data.rglob("*.png"))[::5]
    run_start = Encoder(tmp_path / "start-run.onnx").embed(images)
    baseline = Encoder(tmp_path / "start.onnx").embed(images)
    assert np.abs(run_start - baseline).max() <= 1e-5

    trained = tmp_path / "trained"
    Trainer(TrainConfig(out=str(trained), epochs=2, head_warmup_epochs=0, **common),
            show_progress=False).fit()
    kept = int(checkpoint.weights_metadata(trained, checkpoint.BEST)["epoch"])
    export_encoder(trained, tmp_path / "trained.onnx")
    assert abs(_index_eval(data, tmp_path / "trained.onnx", tmp_path / "index")
               - _monitor(trained, kept)) <= 0.005


def test_export_refuses_a_network_that_is_not_the_trained_one(tmp_path):
    """A run whose recorded stem was lost (an older groco, an edited file): the network
    rebuilt by the automatic rule differs from the trained one, and the export says so."""
    data = hard_collection(tmp_path / "images", classes=2, per_class=6)
    run = tmp_path / "run"
    Trainer(TrainConfig(data=str(data), out=str(run), backbone="test_resnet", image_size=32,
                        weights=str(_start_file(tmp_path / "start.safetensors")),
                        batch_size=12, topk_neg=4, workers=0, projector_dim=16,
                        projector_hidden=16, epochs=1), show_progress=False).fit()
    generation = checkpoint.current_generation(run)
    for name in (checkpoint.WEIGHTS, checkpoint.BEST):
        weights = load_file(str(generation / name))
        facts = checkpoint.weights_metadata(generation, name)
        facts.pop("small_stem")
        save_file(weights, str(generation / name), metadata=facts)
    settings = yaml.safe_load((run / "config.yaml").read_text())
    settings.update(small_stem=None, weights=None)  # as if started from nothing
    (run / "config.yaml").write_text(yaml.safe_dump(settings))
    with pytest.raises(ExportError, match="not the one the run trained"):
        export_encoder(run, tmp_path / "wrong.onnx")
    assert not (tmp_path / "wrong.onnx").exists()


def test_a_max_pooled_run_exports_max_pooled_and_a_lost_pooling_fact_is_refused(tmp_path):
    """`--pool max` is a fact of the network like its stem: the export of the kept start is
    `groco export --backbone … --pool max` of the same weights, not the averaged network;
    with the fact edited to `avg` the rebuilt network is not the trained one, and the
    export says so instead of writing it. (At 96 px the last feature map is 3 x 3: the
    two poolings differ.)"""
    data = hard_collection(tmp_path / "images", classes=2, per_class=6)
    start_file = _start_file(tmp_path / "start.safetensors")
    run = tmp_path / "run"
    Trainer(TrainConfig(data=str(data), out=str(run), backbone="test_resnet", image_size=96,
                        weights=str(start_file), pool="max", batch_size=12, topk_neg=4,
                        workers=0, projector_dim=16, projector_hidden=16, epochs=1),
            show_progress=False).fit()
    assert checkpoint.weights_metadata(run, checkpoint.BEST)["pool"] == "max"
    export_encoder(run, tmp_path / "run.onnx")
    images = sorted(data.rglob("*.png"))[::3]
    exported = Encoder(tmp_path / "run.onnx").embed(images)
    for pool, path in (("max", "max.onnx"), ("avg", "avg.onnx")):
        export_backbone("test_resnet", 96, tmp_path / path, weights=start_file, pool=pool)
    assert np.abs(exported - Encoder(tmp_path / "max.onnx").embed(images)).max() <= 1e-5
    assert np.abs(exported - Encoder(tmp_path / "avg.onnx").embed(images)).max() > 1e-2

    generation = checkpoint.current_generation(run)
    for name in (checkpoint.WEIGHTS, checkpoint.BEST):
        facts = checkpoint.weights_metadata(generation, name)
        save_file(load_file(str(generation / name)), str(generation / name),
                  metadata={**facts, "pool": "avg"})
    with pytest.raises(ExportError, match="not the one the run trained"):
        export_encoder(run, tmp_path / "wrong.onnx")
    assert not (tmp_path / "wrong.onnx").exists()
