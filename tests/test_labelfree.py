"""Label-free scores, and the kept epoch on folders without labels: a run made to destroy
its embedding keeps the start and says so; a run that improves keeps a later epoch."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from groco.training import checkpoint, labelfree
from groco.training.config import TrainConfig
from groco.training.trainer import Trainer


def test_rankme_is_the_effective_rank():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(64, 8)))
    assert labelfree.rankme(q) == pytest.approx(8.0, rel=1e-4)  # 8 equal singular values
    collapsed = np.tile(q[:1], (64, 1))
    assert labelfree.rankme(collapsed) == pytest.approx(1.0, rel=1e-3)


def test_alpha_req_recovers_a_power_law_decay():
    rng = np.random.default_rng(1)
    d = 32
    basis, _ = np.linalg.qr(rng.normal(size=(4000, d)))
    z = basis * np.sqrt(np.arange(1, d + 1) ** -1.5)  # eigenvalues ~ k^-1.5
    assert labelfree.alpha_req(z) == pytest.approx(1.5, abs=0.05)


def test_copy_retrieval_counts_copies_that_find_their_original():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert labelfree.copy_retrieval(x, x) == 1.0
    shuffled = x[[1, 0, *range(2, 10)]]  # copies 0 and 1 find each other's original
    assert labelfree.copy_retrieval(x, shuffled) == 0.8


def test_augmented_copy_is_deterministic_and_changes_the_image():
    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 30, 3), np.uint8))
    a, b = labelfree.augmented_copy(image, 7), labelfree.augmented_copy(image, 7)
    assert a.size == image.size and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(image))
    assert not np.array_equal(np.asarray(a), np.asarray(labelfree.augmented_copy(image, 8)))


def _shapes(root: Path, count: int = 48) -> Path:
    """An unlabelled folder: every image directly in ``root``, coloured ellipses."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(count):
        image = Image.new("RGB", (32, 32), tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, y0 = rng.integers(0, 24, 2)
            x1, y1 = (x0, y0) + rng.integers(4, 16, 2)
            draw.ellipse([int(x0), int(y0), int(x1), int(y1)],
                         fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        image.save(root / f"{i:03d}.png")
    return root


def _run(data: Path, out: Path, lr: float, epochs: int):
    config = TrainConfig(data=str(data), out=str(out), backbone="resnet18", image_size=16,
                         batch_size=16, topk_neg=4, workers=0, projector_dim=32,
                         projector_hidden=32, epochs=epochs, lr=lr)
    return Trainer(config, show_progress=False).fit()


def _metrics(run: Path) -> list[dict[str, str]]:
    import csv

    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_destroyed_run_keeps_the_start_without_labels(tmp_path, caplog):
    data = _shapes(tmp_path / "shapes")
    with caplog.at_level("INFO", logger="groco.train"):
        result = _run(data, tmp_path / "run", lr=20000.0, epochs=2)
    rows = _metrics(tmp_path / "run")
    assert all(r["knn_top1"] == "" for r in rows)  # no labels: nothing but the score
    scores = [float(r["copy_top1"]) for r in rows]
    assert max(scores[1:]) < scores[0]  # the huge LR really destroyed the embedding
    assert result.kept_epoch == 0
    assert checkpoint.weights_metadata(tmp_path / "run", checkpoint.BEST)["epoch"] == "0"
    assert "no epoch improved on the start" in caplog.text
    assert checkpoint.export_choice(tmp_path / "run")[1].startswith("the start (epoch 0)")


def test_improving_run_keeps_a_later_epoch_without_labels(tmp_path):
    data = _shapes(tmp_path / "shapes")
    result = _run(data, tmp_path / "run", lr=0.5, epochs=2)
    rows = _metrics(tmp_path / "run")
    scores = [float(r["copy_top1"]) for r in rows]
    assert result.kept_epoch is not None and result.kept_epoch > 0
    assert scores[result.kept_epoch] > scores[0] + labelfree.MARGIN
    kept = checkpoint.weights_metadata(tmp_path / "run", checkpoint.BEST)
    assert kept["epoch"] == str(result.kept_epoch) and kept["criterion"] == "copy_top1"
    assert [int(r["kept"]) for r in rows][result.kept_epoch] == 1


def test_warm_up_epoch_reuses_the_start_scores_instead_of_embedding_again(tmp_path,
                                                                         monkeypatch):
    data = _shapes(tmp_path / "shapes")
    calls = []
    evaluate = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self: calls.append(self.epoch)
                        or evaluate(self))
    config = TrainConfig(data=str(data), out=str(tmp_path / "run"), backbone="resnet18",
                         image_size=16, batch_size=16, topk_neg=4, workers=0,
                         projector_dim=32, projector_hidden=32, epochs=2, lr=0.5,
                         finetune=True, head_warmup_epochs=1, freeze_bn=True)
    Trainer(config, show_progress=False).fit()
    rows = _metrics(tmp_path / "run")
    assert calls == [0, 2]  # the warm-up epoch trained only the head: nothing to re-embed
    assert rows[1]["rankme"] == rows[0]["rankme"] and rows[1]["kept"] == "0"
    assert rows[2]["rankme"] != rows[0]["rankme"]  # a trained epoch is scored anew
