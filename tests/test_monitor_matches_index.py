"""The figure a user watches while training is the one the exported encoder delivers: the
k-NN monitor of a run equals `groco index eval`'s k-NN on the same images, through export
and the index, with an eval resize different from the input size."""

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from groco.cli import app
from groco.encoder.export import export_encoder
from groco.index.build import build_index_dir
from groco.training.config import TrainConfig
from groco.training.trainer import Trainer


def _hard_collection(root: Path, classes: int = 4, per_class: int = 12) -> Path:
    """Classes whose mean colours differ by less than their noise: k-NN stays unsaturated."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = 128 + 12 * c + rng.normal(0, 70, (30, 26, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                root / f"class{c}" / f"{i:02d}.png")
    return root


def test_monitor_knn_equals_index_eval(tmp_path):
    data = _hard_collection(tmp_path / "images")
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
