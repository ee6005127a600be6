"""The k-NN monitor of a labelled run scores images the run never trained on: the split is
stratified, seeded and the same on resume, the held-out images stay out of training, and
the monitor's figure is what the exported encoder gives those images against the trained
ones."""

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import hard_collection

from groco.encoder.export import export_encoder
from groco.encoder.runtime import Encoder
from groco.knn import class_indices, knn_accuracy
from groco.training.config import TrainConfig
from groco.training.holdout import split
from groco.training.trainer import Trainer


def test_each_class_holds_out_its_share_and_keeps_one_in_training():
    targets = [0] * 60 + [1] * 30 + [2] * 10 + [-1] * 5
    trained, held = split(targets, 10, seed=0)
    assert sorted([*trained, *held]) == list(range(len(targets)))
    counts = np.bincount(np.asarray(targets)[held], minlength=3)
    assert counts.tolist() == [6, 3, 1]
    assert not set(held) & set(range(100, 105))  # unlabelled images always train
    again, _ = split(targets, 10, seed=0)
    other, _ = split(targets, 10, seed=1)
    assert again.tolist() == trained.tolist() and other.tolist() != trained.tolist()
    _, tiny = split([0, 0, 1, 1, 1, 1], 5, seed=0)
    assert np.bincount(np.asarray([0, 0, 1, 1, 1, 1])[tiny]).tolist() == [1, 3]


def test_a_holdout_of_every_labelled_image_is_refused():
    with pytest.raises(ValueError, match="cannot hold out 4 of 4"):
        split([0, 0, 1, 1], 4, seed=0)
    assert split([0, 1], 0, seed=0)[1].size == 0


def test_holdout_and_eval_data_are_refused_together(tmp_path):
    config = TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), holdout=5,
                         eval_data=str(tmp_path))
    with pytest.raises(ValueError, match="--holdout and --eval-data"):
        config.resolved()


def test_the_monitor_scores_held_out_images_as_the_export_does(tmp_path, one_thread):
    data = hard_collection(tmp_path / "images")
    run = tmp_path / "run"
    common = dict(data=str(data), out=str(run), backbone="resnet18", image_size=16,
                  batch_size=12, topk_neg=4, workers=0, projector_dim=32,
                  projector_hidden=32, lr=0.5, holdout=8)
    trainer = Trainer(TrainConfig(epochs=1, **common), show_progress=False)
    held = [Path(f) for f in trainer.monitor.held_out]
    trained = [Path(f) for f in trainer.dataset.files]
    assert len(held) == 8 and len(trained) == 40 and not set(held) & set(trained)
    assert sorted(p.parent.name for p in held) == ["class0"] * 2 + ["class1"] * 2 + [
        "class2"] * 2 + ["class3"] * 2
    assert trainer.monitor.scored_on == "8 held-out images"
    trainer.fit()
    assert yaml.safe_load((run / "config.yaml").read_text())["holdout"] == 8

    resumed = Trainer(TrainConfig(epochs=1, **common), resume=True, show_progress=False)
    assert [Path(f) for f in resumed.monitor.held_out] == held

    with open(run / "metrics.csv", newline="") as f:
        monitor = float(list(csv.DictReader(f))[-1]["knn_top1"])
    export_encoder(run, tmp_path / "encoder.onnx", last=True)
    encoder = Encoder(tmp_path / "encoder.onnx")
    classes, bank_labels = class_indices([p.parent.name for p in trained])
    _, query_labels = class_indices([p.parent.name for p in held], classes)
    expected = knn_accuracy(encoder.embed(trained), bank_labels, encoder.embed(held),
                            query_labels, num_classes=len(classes))
    assert 0.0 < monitor < 1.0
    assert abs(expected - monitor) < 1e-4
