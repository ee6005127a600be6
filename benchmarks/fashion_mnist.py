"""Fashion-MNIST (Debian package ``dataset-fashion-mnist``) written out as image folders,
so benchmarks go through the same folder path as users' collections.

``GROCO_FMNIST_DIR`` points the benchmarks at another folder of the same four IDX files;
:func:`write_stand_in` writes one from scikit-learn's digits (ten classes of 28 px grey
images, the same format), which ``python -m benchmarks --quick`` uses where Fashion-MNIST
is not installed (CI). Its figures say nothing about Fashion-MNIST.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
from PIL import Image

IDX_DIR = Path(os.environ.get("GROCO_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle-boot"]


def read_idx(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,)) of ``train`` or ``t10k``."""
    images_path = IDX_DIR / f"{split}-images-idx3-ubyte.gz"
    if not images_path.exists():
        raise SystemExit(f"{images_path} not found: apt-get install dataset-fashion-mnist")
    with gzip.open(images_path) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(IDX_DIR / f"{split}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def write_stand_in(folder: Path, test_every: int = 3) -> Path:
    """The four IDX files of a Fashion-MNIST stand-in in ``folder``: scikit-learn's 1,797
    digits upscaled to 28 px, every ``test_every``-th image in ``t10k``; written once."""
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "t10k-labels-idx1-ubyte.gz").exists():
        return folder
    digits = load_digits()
    grey = (digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(g).resize((28, 28), Image.Resampling.BICUBIC))
                       for g in grey])
    labels = digits.target.astype(np.uint8)
    test = np.arange(len(labels)) % test_every == 0
    for split, keep in (("train", ~test), ("t10k", test)):
        count = int(keep.sum())
        with gzip.open(folder / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(np.array([2051, count, 28, 28], ">i4").tobytes() + images[keep].tobytes())
        with gzip.open(folder / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(np.array([2049, count], ">i4").tobytes() + labels[keep].tobytes())
    return folder


def balanced_subset(labels: np.ndarray, count: int | None, seed: int = 0) -> np.ndarray:
    """Indices of ``count`` images, the same number per class (all when None)."""
    if count is None or count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    per_class = count // len(CLASSES)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:per_class]
              for c in range(len(CLASSES))]
    return np.sort(np.concatenate(picked))


def write_folder(root: Path, split: str, count: int | None = None) -> Path:
    """``root/<split>-<count>/<class>/<index>.png``; reused when already complete."""
    images, labels = read_idx(split)
    keep = balanced_subset(labels, count)
    folder = root / f"{split}-{len(keep)}"
    done = folder / ".complete"
    if done.exists():
        return folder
    for c in CLASSES:
        (folder / c).mkdir(parents=True, exist_ok=True)
    for i in keep:
        Image.fromarray(images[i]).save(folder / CLASSES[labels[i]] / f"{i:05d}.png")
    done.write_text("ok\n")
    return folder


def pixel_knn_floor(train_count: int | None, k: int = 20, temperature: float = 0.07) -> float:
    """Weighted k-NN top-1 on raw L2-normalised pixels, test split against the train bank."""
    from groco.knn import knn_accuracy

    train_x, train_y = read_idx("train")
    keep = balanced_subset(train_y, train_count)
    test_x, test_y = read_idx("t10k")

    def unit(x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), -1).astype(np.float32)
        return flat / np.linalg.norm(flat, axis=1, keepdims=True)

    return knn_accuracy(unit(train_x[keep]), train_y[keep].astype(np.int64), unit(test_x),
                        test_y.astype(np.int64), k=k, temperature=temperature)
