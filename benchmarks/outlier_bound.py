"""How far the planted outliers of ``benchmarks/curate.py`` can be found with the Lite0
start: at several geometries, and by scores that are not distances to neighbours.

The collection is ``curate.py``'s (Fashion-MNIST's 10k test images plus 50 of
scikit-learn's digits and 50 noise images, 1 %). Each geometry embeds it once
(``pretrained_start.embed``: Lite0, input size, stem stride, pooling as in
``benchmarks/geometry.py``'s names). For each, the planted share of the top 1 % (the top
100), with how many digits and noise images it holds, by:

- ``global``: groco's default outlier score (:mod:`groco.index.curate.outliers`);
- ``bound``: the distance to the 16th nearest *clean* image, a score that knows which
  images are planted (no distance-to-the-collection score ranks a planted image above a
  clean one that lies farther from the rest);
- ``mahalanobis``: the squared Mahalanobis distance to the collection's mean (covariance
  shrunk by 0.1 of its mean variance; Lee et al., NeurIPS 2018, score out-of-distribution
  inputs this way);
- ``pca-residual``: the squared distance to the collection's first 16 principal axes;
- ``anti-hub``: how rarely the item is among the 16 nearest of the others (Radovanović
  et al., JMLR 2010), ties broken by ``global``.

    python benchmarks/outlier_bound.py
    python benchmarks/outlier_bound.py --geometries 64 96s1-max
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402
from curate import PLANTED, planted_folder  # noqa: E402
from fashion_mnist import write_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NEIGHBOURS = 16
SHRINK = 0.1
AXES = 16


def top_share(score: np.ndarray, digits: np.ndarray, noise: np.ndarray) -> str:
    """``share (digits/50, noise/50)`` of the :data:`PLANTED` highest scores."""
    top = np.argsort(-score, kind="stable")[:PLANTED]
    d, n = int(digits[top].sum()), int(noise[top].sum())
    return f"{(d + n) / PLANTED:.2f} ({d}/{digits.sum()}, {n}/{noise.sum()})"


def scores(x: np.ndarray, planted: np.ndarray) -> dict[str, np.ndarray]:
    """Each score of the module docstring for unit rows ``x``; higher = more unusual."""
    from groco.index.curate.outliers import global_scores

    reference = global_scores(len(x), lambda rows: x[rows])
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    nearest = np.argpartition(-s, NEIGHBOURS, axis=1)[:, :NEIGHBOURS]
    in_lists = np.bincount(nearest.ravel(), minlength=len(x))
    clean = s[:, ~planted]
    kth_clean = -np.partition(-clean, NEIGHBOURS - 1, axis=1)[:, NEIGHBOURS - 1]
    centred = x - x.mean(0)
    cov = centred.T @ centred / len(x)
    cov += SHRINK * np.trace(cov) / len(cov) * np.eye(len(cov))
    axes = np.linalg.svd(centred, full_matrices=False)[2][:AXES]
    residual = centred - (centred @ axes.T) @ axes
    return {
        "global": reference,
        "bound (knows the planted)": -kth_clean,
        "mahalanobis": np.einsum("ij,ij->i", centred @ np.linalg.inv(cov), centred),
        "pca-residual": (residual ** 2).sum(1),
        "anti-hub": -in_lists + 1e-6 * reference,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--geometries", nargs="+",
                        default=["32", "48", "64", "64-max", "96", "128", "64s1", "96s1"],
                        help="input px, 's1' for the stride-1 stem, '-max' for max pooling")
    parser.add_argument("--weights", type=Path, default=REPO / ".bench/lite0.safetensors")
    parser.add_argument("--work", type=Path, default=REPO / ".bench/curate")
    args = parser.parse_args()
    import torch
    from PIL import Image
    from pretrained_start import embed, lite0

    from groco.training.geometry import Geometry

    torch.set_num_threads(2)
    clean = write_folder(args.work / "fmnist", "t10k", None)
    folder = planted_folder(args.work, clean, None)
    paths = sorted(folder.rglob("*.png"))
    relative = np.array([str(p.relative_to(folder)) for p in paths])
    grey = np.stack([np.asarray(Image.open(p).convert("L")) for p in paths])
    digits = np.char.startswith(relative, "planted/digit")
    noise = np.char.startswith(relative, "planted/noise")
    names: list[str] = []
    rows = []
    for geometry in args.geometries:
        started = time.perf_counter()
        shape = Geometry.parse(geometry)
        model = lite0(args.weights, shape.small_stem, shape.pool)
        x, _ = embed(model, grey, shape.image_size)
        found = {k: top_share(v, digits, noise) for k, v in scores(x, digits | noise).items()}
        names = list(found)
        rows.append(f"| {geometry} | " + " | ".join(found.values())
                    + f" | {time.perf_counter() - started:.0f} |")
        print(rows[-1], file=sys.stderr, flush=True)
    print(header())
    print(f"Planted share of the top 1 % ({PLANTED} of {len(relative)}), "
          "(digits, noise) found; Lite0 start.\n")
    print("| geometry | " + " | ".join(names) + " | seconds |")
    print("|---" * (len(names) + 2) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
