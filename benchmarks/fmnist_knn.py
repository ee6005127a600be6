"""k-NN top-1 on Fashion-MNIST of encoders trained by groco, per method and seed.

    python benchmarks/fmnist_knn.py                       # groco and simclr, seeds 0 and 1
    python benchmarks/fmnist_knn.py --methods groco --seeds 0 --epochs 2   # quicker
    python benchmarks/fmnist_knn.py --methods all --seeds 0                # every method
    python benchmarks/fmnist_knn.py --seeds 0 1 2 --lr-scales 0.5 1 2     # seeds x LR grid

Writes the training split (a balanced subset of ``--train-images``) and the 10k test split
out as image folders, trains every method with the same backbone, budget, batch and
augmentations through ``groco.training.trainer``, and reports weighted k-NN top-1
(k=20, T=0.07, cosine, backbone features of centre-cropped images) of the test split
against the training images; plus a randomly initialised encoder (the floor a method must
beat) and raw pixels (the floor an encoder worth shipping must beat). Each run is its own
process, so its peak memory (max RSS) is its own.

With several seeds a summary follows: per method and learning rate, the mean k-NN top-1
over the seeds and its range (min–max). ``--lr-scales`` gives every method the same grid,
as multiples of its own default base LR; the best mean per method is marked, chosen on
the same test split it is reported on (the grid is small, so the figure is optimistic by
the spread between grid points, which the table shows).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, json_from_child  # noqa: E402
from fashion_mnist import pixel_knn_floor, write_folder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["groco", "simclr"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--projector-dim", type=int, default=2048)
    parser.add_argument("--data-dir", type=Path, default=Path(".bench/fmnist"))
    parser.add_argument("--lr", type=float, nargs="*", default=None,
                        help="base LR per method, in --methods order (default: each method's)")
    parser.add_argument("--lr-scales", type=float, nargs="+", default=None,
                        help="the same LR grid for every method: multiples of its default "
                             "base LR (per 256 images); not with --lr")
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "SEED", "LR"),
                        help=argparse.SUPPRESS)  # one run in this process, JSON on stdout
    args = parser.parse_args()
    if args.lr and args.lr_scales:
        parser.error("give --lr or --lr-scales, not both")

    train_dir = write_folder(args.data_dir, "train", args.train_images)
    test_dir = write_folder(args.data_dir, "t10k")
    common = dict(data=str(train_dir), eval_data=str(test_dir), backbone=args.backbone,
                  image_size=args.image_size, small_stem=args.small_stem, epochs=args.epochs,
                  batch_size=args.batch_size, workers=args.workers,
                  projector_dim=args.projector_dim, projector_hidden=args.projector_dim,
                  eval_every=args.epochs, device="cpu")
    if args.one:
        method, seed, lr = args.one
        print(json.dumps(one_run(common, method, int(seed), None if lr == "-" else float(lr))))
        return
    from groco.training.methods import METHODS

    methods = list(METHODS) if args.methods == ["all"] else args.methods
    print(header())
    print(f"Backbone {args.backbone} (small stem {args.small_stem}) at {args.image_size} px, "
          f"projector {args.projector_dim}, {args.epochs} epochs of {args.train_images} "
          f"training images, batch {args.batch_size}, 2 views, CPU. k-NN: k=20, T=0.07, "
          "test split (10,000) against the training images.\n")
    print("| encoder | base LR | seed | k-NN top-1 | train images/s | peak memory (MB) "
          "| minutes |")
    print("|---|---|---|---|---|---|---|", flush=True)
    runs = [("random", 0, None)] + [(method, seed, lr) for m, method in enumerate(methods)
                                    for lr in learning_rates(args, m, method)
                                    for seed in args.seeds]
    scores: dict[tuple[str, float], list[float]] = defaultdict(list)
    for method, seed, lr in runs:  # each row as soon as it is measured
        knn, speed, memory, minutes = run_child(args, method, seed, lr)
        if method == "random":
            name, shown_seed, shown_lr = "random init (no training)", "-", "-"
        else:
            name, shown_seed, shown_lr = method, seed, f"{lr:g}"
            scores[method, lr].append(100 * knn)
        print(f"| {name} | {shown_lr} | {shown_seed} | {100 * knn:.2f}% | {speed} | {memory} "
              f"| {minutes} |", flush=True)
    pixels = pixel_knn_floor(args.train_images)
    print(f"| raw pixels | - | - | {100 * pixels:.2f}% | - | - | - |")
    if len(args.seeds) > 1:
        print()
        print(summary_table(scores, 100 * pixels))


def learning_rates(args: argparse.Namespace, index: int, method: str) -> list[float]:
    """The base LRs (per 256 images) ``method`` is trained with: ``--lr``'s, the
    ``--lr-scales`` grid around its default, or its default alone."""
    from groco.training.methods import get_method

    default = get_method(method).base_lr["sgd"]
    if args.lr:
        return [args.lr[index]]
    return [default * scale for scale in (args.lr_scales or [1.0])]


def summary_table(scores: dict[tuple[str, float], list[float]], pixels: float) -> str:
    """Mean and range of k-NN top-1 over seeds per (method, LR); the best mean per method
    in bold."""
    means = {key: statistics.mean(values) for key, values in scores.items()}
    best: dict[str, float] = {}
    for (method, lr), value in means.items():
        if method not in best or value > means[method, best[method]]:
            best[method] = lr
    lines = ["| method | base LR | seeds | k-NN top-1 mean | min – max | vs raw pixels |",
             "|---|---|---|---|---|---|"]
    for (method, lr), values in scores.items():
        cell = f"{means[method, lr]:.2f}%"
        if best[method] == lr:
            cell = f"**{cell}**"
        lines.append(f"| {method} | {lr:g} | {len(values)} | {cell} | {min(values):.2f} – "
                     f"{max(values):.2f} | {means[method, lr] - pixels:+.2f} |")
    return "\n".join(lines)


def one_run(common: dict, method: str, seed: int, lr: float | None) -> dict:
    """Train one method (``random``: none) and measure it; runs in its own process."""
    from groco.training.config import TrainConfig
    from groco.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        if method == "random":
            trainer = Trainer(TrainConfig(out=tmp, **common), show_progress=False)
            result = {"knn": trainer.knn_monitor(), "speed": "-", "minutes": "-"}
        else:
            config = TrainConfig(out=tmp, method=method, seed=seed, lr=lr, **common)
            started = time.perf_counter()
            trained = Trainer(config, show_progress=False).fit()
            result = {"knn": trained.knn_top1, "speed": f"{trained.images_per_s:.0f}",
                      "minutes": f"{(time.perf_counter() - started) / 60:.1f}"}
    result["memory"] = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
    return result


def run_child(args: argparse.Namespace, method: str, seed: int,
              lr: float | None) -> tuple[float, str, str, str]:
    """(k-NN top-1, images/s, peak MB, minutes) of one run in a child process."""
    result = json_from_child([__file__, *sys.argv[1:], "--one", method, str(seed),
                              "-" if lr is None else str(lr)], f"{method} seed {seed}")
    return result["knn"], result["speed"], result["memory"], result["minutes"]


if __name__ == "__main__":
    main()
