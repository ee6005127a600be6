"""`groco train` end to end on generated folders: CNN and ViT, broken files, torchrun with
two CPU processes, clear errors (resume after a kill at every checkpoint operation:
tests/test_resume.py)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from groco.cli import app
from groco.training import checkpoint
from groco.training.config import TrainConfig
from groco.training.trainer import Trainer, TrainError

FAST = ["--image-size", "16", "--batch-size", "8", "--topk-neg", "4", "--workers", "0",
        "--projector-dim", "32", "--projector-hidden", "32", "--lr", "0.5"]


def _groco(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "groco.cli", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("backbone", ["resnet18", "vit_tiny_patch16_224"])
def test_train_cli_on_a_folder_with_broken_files(collection, tmp_path, backbone):
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(collection), "--out", str(run), "--backbone",
                                      backbone, "--epochs", "2", *FAST])
    assert result.exit_code == 0, result.output
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]  # the start, then each epoch
    assert rows[0]["loss"] == "" and rows[1]["loss"] != ""
    weights = load_file(str(run / "last.safetensors"))
    assert any(k.startswith("backbone.") for k in weights)
    assert any(k.startswith("projector.") for k in weights)
    # The kept epoch is the first with the highest k-NN, the start included.
    knn = [float(r["knn_top1"]) for r in rows]
    best = knn.index(max(knn))
    assert [int(r["kept"]) for r in rows][best] == 1
    assert checkpoint.weights_metadata(run, checkpoint.BEST)["epoch"] == str(best)
    assert f"kept epoch {best}" in result.output  # what the command says it kept


def test_broken_files_are_skipped_and_counted(tmp_path):
    from conftest import make_collection

    data = make_collection(tmp_path / "images", classes=2, per_class=6, broken=4)
    config = TrainConfig(data=str(data), out=str(tmp_path / "run"), image_size=16,
                         batch_size=16, topk_neg=4, workers=0, projector_dim=32,
                         projector_hidden=32, epochs=1, eval_every=0)
    trainer = Trainer(config, show_progress=False)
    _, _, broken = trainer.train_epoch()
    assert broken == 4  # 16 files, one batch of 16: every broken file is in it


@pytest.mark.slow
def test_torchrun_with_two_cpu_processes_trains(collection, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "groco.cli", "train", str(collection), "--out", str(run), "--epochs", "1",
         "--device", "cpu", *FAST],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    state = (run / "last.json").read_text()
    assert '"rank_count": 2' in state
    assert (run / "metrics.csv").read_text().count("\n") == 3  # header, the start, epoch 1


def test_clear_errors(tmp_path, collection):
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["train", str(empty), "--out", str(tmp_path / "r1"), *FAST])
    assert result.exit_code == 1 and "no images" in result.output

    result = runner.invoke(app, ["train", str(collection), "--out", str(tmp_path / "r2"),
                                 *FAST, "--batch-size", "64"])
    assert result.exit_code == 1 and "fewer than one batch" in result.output

    broken = tmp_path / "broken" / "a"
    broken.mkdir(parents=True)
    for i in range(10):
        (broken / f"{i}.png").write_bytes(b"garbage")
    result = runner.invoke(app, ["train", str(broken.parent), "--out", str(tmp_path / "r3"),
                                 *FAST, "--epochs", "1"])
    assert result.exit_code == 1 and "no readable image" in result.output

    result = runner.invoke(app, ["train", str(collection), "--out", str(tmp_path / "r4"),
                                 *FAST, "--method", "mystery"])
    assert result.exit_code == 1 and "unknown method" in result.output


def test_an_existing_run_needs_resume(collection, tmp_path):
    run = tmp_path / "run"
    config = TrainConfig(data=str(collection), out=str(run), image_size=16, batch_size=8,
                         topk_neg=4, workers=0, projector_dim=32, projector_hidden=32,
                         epochs=1, eval_every=0)
    Trainer(config, show_progress=False).fit()
    with pytest.raises(TrainError, match="--resume"):
        Trainer(config, show_progress=False)
    assert Path(run / "last.safetensors").exists()
