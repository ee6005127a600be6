"""Serving geometry of a start: every candidate scored by k-NN and by copy retrieval, and
how well the label-free score ranks the candidates as k-NN does (Kendall tau).

    python benchmarks/pretrained_weights.py --out .bench/lite0.safetensors   # once
    python benchmarks/geometry.py --collections fmnist digits

Each collection is written as a folder (Fashion-MNIST: a balanced sample of the training
split, Debian's ``dataset-fashion-mnist``; digits: scikit-learn's 1,797 scans at 32 px, as
``groco demo`` wrote them before its collection changed) and scored by
:func:`groco.training.geometry.score_geometries` exactly as ``groco export --geometry
auto`` scores it, with no cost cap so every candidate has figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402

from groco.training.geometry import Geometry, candidates, score_geometries  # noqa: E402


def digits_folder(root: Path, upscale: int = 4) -> Path:
    """scikit-learn's digits as ``root/digits/<digit>/<n>.png``, 32 px, written once."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = root / "digits"
    if (folder / ".complete").exists():
        return folder
    digits = load_digits()
    for n, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        grey = (pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(grey).resize((8 * upscale, 8 * upscale),
                                             Image.Resampling.BICUBIC)
        (folder / str(target)).mkdir(parents=True, exist_ok=True)
        image.save(folder / str(target) / f"{n:04d}.png")
    (folder / ".complete").write_text("ok\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=Path(".bench/lite0.safetensors"))
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--collections", nargs="+", default=["fmnist", "digits"],
                        choices=["fmnist", "digits"])
    parser.add_argument("--geometries", nargs="+", default=None,
                        help="e.g. 64 64s1 96 (default: 32, 64, 96, 128, each both stems)")
    parser.add_argument("--sample", type=int, default=1000)
    parser.add_argument("--root", type=Path, default=Path(".bench/geometry"))
    parser.add_argument("--json", type=Path, default=None, help="Also write the rows here.")
    args = parser.parse_args()
    import torch
    from scipy.stats import kendalltau

    torch.set_num_threads(2)
    geometries = ([Geometry.parse(g) for g in args.geometries] if args.geometries
                  else candidates((32, 64, 96, 128)))
    print(header())
    results = {}
    for collection in args.collections:
        if collection == "fmnist":
            from fashion_mnist import write_folder

            folder = write_folder(args.root, "train", args.sample)
        else:
            folder = digits_folder(args.root)
        choice = score_geometries(args.backbone, folder, geometries, weights=args.weights,
                                  sample=args.sample, max_cost=float("inf"),
                                  progress=lambda line: print("  " + line, flush=True))
        rows = [r for r in choice.rows if r.skipped is None]
        knn = [r.knn_top1 for r in rows]
        copy = [r.copy_top1 for r in rows]
        tau = float(kendalltau(knn, copy).statistic)
        tau_cost = float(kendalltau(knn, [r.cost for r in rows]).statistic)
        print(f"\n{collection}: {choice.sample} images, {args.backbone} from {args.weights}\n")
        print("| geometry | cost | k-NN top-1 | copy retrieval | seconds |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r.geometry.name} | {r.cost:.2f} | {100 * r.knn_top1:.1f} | "
                  f"{100 * r.copy_top1:.1f} | {r.seconds:.0f} |")
        print(f"\nKendall tau over the {len(rows)} candidates: copy retrieval vs k-NN "
              f"{tau:+.2f}; cost vs k-NN {tau_cost:+.2f}")
        results[collection] = {**choice.to_dict(), "tau_copy_knn": tau,
                               "tau_cost_knn": tau_cost}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
