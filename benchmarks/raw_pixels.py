"""Raw-pixel baseline: k-NN top-1 with and without per-image centring, through the ONNX
encoder that ``groco export --raw-pixels N`` writes.

    python benchmarks/raw_pixels.py
    python benchmarks/raw_pixels.py --fmnist-bank 10000      # a balanced subset of the bank

For each collection, both raw-pixel encoders (:func:`groco.encoder.baselines.export_raw_pixels`
with ``centre`` on and off) embed the images (decoded as the index does: PIL image ->
``Preprocessing.array`` -> ``Encoder.embed_arrays``) at their native size, and a weighted
k-NN (k = 20, T = 0.07, cosine; :func:`groco.knn.knn_accuracy`) is scored:

- Fashion-MNIST (Debian ``dataset-fashion-mnist``): the training images as the bank, the
  10k test images as queries, 28 px.
- scikit-learn's digits: 1797 images, leave-one-out, 8 px.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402
from fashion_mnist import balanced_subset, read_idx  # noqa: E402

from groco.encoder.baselines import export_raw_pixels  # noqa: E402
from groco.encoder.runtime import Encoder  # noqa: E402
from groco.knn import knn_accuracy  # noqa: E402


def embed(encoder: Encoder, images: np.ndarray) -> np.ndarray:
    """``images`` (N, H, W) uint8 grey through PIL and the encoder's preprocessing."""
    batch = np.stack([encoder.preprocess(Image.fromarray(x)) for x in images])
    return encoder.embed_arrays(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fmnist-bank", type=int, default=None,
                        help="training images in the bank (default: all 60000)")
    args = parser.parse_args()

    train_x, train_y = read_idx("train")
    keep = balanced_subset(train_y, args.fmnist_bank)
    train_x, train_y = train_x[keep], train_y[keep].astype(np.int64)
    test_x, test_y = read_idx("t10k")
    test_y = test_y.astype(np.int64)

    from sklearn.datasets import load_digits

    digits = load_digits()
    digit_images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    digit_labels = digits.target.astype(np.int64)

    rows = []
    with tempfile.TemporaryDirectory(prefix="groco-raw-") as tmp:
        for centre in (True, False):
            start = time.perf_counter()
            fmnist = Encoder(export_raw_pixels(28, Path(tmp) / f"f{centre}.onnx",
                                               centre=centre).path)
            bank, queries = embed(fmnist, train_x), embed(fmnist, test_x)
            f_top1 = knn_accuracy(bank, train_y, queries, test_y, k=20, temperature=0.07)
            small = Encoder(export_raw_pixels(8, Path(tmp) / f"d{centre}.onnx",
                                              centre=centre).path)
            vectors = embed(small, digit_images)
            d_top1 = knn_accuracy(vectors, digit_labels, vectors, digit_labels, k=20,
                                  temperature=0.07, exclude_self=True)
            rows.append(f"| {'per-image mean' if centre else 'none'} | {100 * f_top1:.2f} % | "
                        f"{100 * d_top1:.2f} % | {time.perf_counter() - start:.0f} s |")

    print(header())
    print(f"Weighted k-NN top-1 (k = 20, T = 0.07, cosine). Fashion-MNIST: bank of "
          f"{len(train_x)} training images, {len(test_x)} test queries, 28 px; digits: "
          f"{len(digit_images)} images leave-one-out, 8 px.\n")
    print("| centring | Fashion-MNIST | digits | seconds |")
    print("|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
