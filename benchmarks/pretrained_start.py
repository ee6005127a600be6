"""What a user has without training: raw pixels and the ImageNet start at several sizes.

    python benchmarks/pretrained_weights.py --out .bench/lite0.safetensors   # once
    python benchmarks/pretrained_start.py --bank 10000 --queries 2000       # quick
    python benchmarks/pretrained_start.py                                   # 60k / 10k

Rows: raw pixels (the stored grey image flattened and L2-normalised, NumPy) and timm's
``tf_efficientnet_lite0`` with the ImageNet weights of ``benchmarks/pretrained_weights.py``
(``num_classes=0``, eval mode, no grad) on each image resized bicubically (PIL, as
``groco.images.resize_center_crop``) to N x N, grey copied to RGB, ``(x/255 - 0.5)/0.5``
(the network's own mean/std), pooled features L2-normalised. ``s1`` rows set the stem
conv's stride to 1 and keep its pretrained 3x3 weights (REFERENCES.md, "Adapting a
pretrained start"). Figures (``benchmarks/_common.retrieval_figures``): weighted k-NN top-1
(k=20, T=0.07, cosine), precision@10 and mAP@R; Fashion-MNIST test images as queries
against a balanced subset of the training images, the digits leave-one-out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, retrieval_figures, unit_rows  # noqa: E402
from fashion_mnist import balanced_subset, read_idx  # noqa: E402

ARCH = "tf_efficientnet_lite0"


def lite0(weights: Path, stride1: bool, pool: str = "avg") -> torch.nn.Module:
    """The pretrained backbone (pooled features: ``avg`` or ``max`` over the last feature
    map), optionally with a stride-1 stem."""
    import timm
    from timm.layers import SelectAdaptivePool2d

    from groco.training.weights import load_backbone_weights

    model = timm.create_model(ARCH, pretrained=False, num_classes=0)
    load_backbone_weights(model, weights)
    if stride1:
        model.conv_stem.stride = (1, 1)
    if pool != "avg":
        model.global_pool = SelectAdaptivePool2d(pool_type=pool, flatten=True)
    return model.eval()


def embed(model: torch.nn.Module, grey: np.ndarray, size: int,
          batch: int = 128) -> tuple[np.ndarray, float]:
    """L2-normalised features of ``grey`` ``(N, H, W)`` uint8 at ``size`` px; and images/s."""
    out = []
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(grey), batch):
            resized = np.stack([
                np.asarray(Image.fromarray(g).resize((size, size), Image.Resampling.BICUBIC))
                for g in grey[i:i + batch]])
            x = torch.from_numpy(resized).float().div_(255.0).sub_(0.5).div_(0.5)
            x = x[:, None].expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
            out.append(model(x).float().numpy())
    rate = len(grey) / (time.perf_counter() - start)
    return unit_rows(np.concatenate(out)), rate


def digits_arrays(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The digits image folder (``groco.demo.write_digits``) as grey arrays and labels."""
    from groco.demo import write_digits

    write_digits(folder)
    paths = sorted(folder.glob("*/*.png"))
    grey = np.stack([np.asarray(Image.open(p).convert("L")) for p in paths])
    return grey, np.array([int(p.parent.name) for p in paths])


def parse_configs(sizes: list[int], stride1: list[int]) -> list[tuple[int, bool]]:
    return [(s, False) for s in sizes] + [(s, True) for s in stride1]


def row(name: str, px: str, f: dict[str, float], rate: str) -> None:
    """One markdown row of :func:`retrieval_figures`' figures, printed at once."""
    print(f"| {name} | {px} | {100 * f['knn_top1']:.2f}% | "
          f"{100 * f['precision_at_10']:.2f}% | {100 * f['map_at_r']:.2f}% | {rate} |",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path(".bench/lite0.safetensors"))
    parser.add_argument("--bank", type=int, default=None,
                        help="balanced subset of the 60k training images (default: all)")
    parser.add_argument("--queries", type=int, default=None,
                        help="balanced subset of the 10k test images (default: all)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[32, 64, 96, 128, 224])
    parser.add_argument("--stride1", type=int, nargs="*", default=[32, 64])
    parser.add_argument("--collections", nargs="+", default=["fmnist", "digits"],
                        choices=["fmnist", "digits"])
    parser.add_argument("--digits-dir", type=Path, default=Path(".bench/digits"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.weights.is_file():
        raise SystemExit(f"{args.weights} not found: run benchmarks/pretrained_weights.py first")
    torch.set_num_threads(args.threads)

    print(header())
    configs = parse_configs(args.sizes, args.stride1)
    for collection in args.collections:
        if collection == "fmnist":
            train_x, train_y = read_idx("train")
            test_x, test_y = read_idx("t10k")
            keep = balanced_subset(train_y, args.bank)
            ask = balanced_subset(test_y, args.queries)
            bank_x, bank_y = train_x[keep], train_y[keep].astype(np.int64)
            query_x, query_y = test_x[ask], test_y[ask].astype(np.int64)
            title = (f"Fashion-MNIST: {len(ask)} test queries against {len(keep)} training "
                     "images (balanced subsets)")
        else:
            bank_x, bank_y = digits_arrays(args.digits_dir)
            query_x = query_y = None
            title = f"digits: {len(bank_x)} images of {bank_x.shape[1]} px, leave-one-out"
        print(f"\n{title}\n")
        print("| encoder | input px | k-NN top-1 | precision@10 | mAP@R | embed images/s |")
        print("|---|---|---|---|---|---|", flush=True)

        raw_q = None if query_x is None else unit_rows(query_x)
        raw = retrieval_figures(unit_rows(bank_x), bank_y, raw_q, query_y)
        row("raw pixels", str(bank_x.shape[1]), raw, "-")
        for size, stride1 in configs:
            model = lite0(args.weights, stride1)
            bank, rate = embed(model, bank_x, size)
            queries = None
            if query_x is not None:
                queries, _ = embed(model, query_x, size)
            name = "ImageNet lite0, stride-1 stem" if stride1 else "ImageNet lite0"
            row(name, str(size), retrieval_figures(bank, bank_y, queries, query_y), f"{rate:.0f}")


if __name__ == "__main__":
    main()
