"""Training throughput: is the data path or the loss the bottleneck?

    python benchmarks/train_throughput.py                  # CPU, resnet18 at 64 px
    python benchmarks/train_throughput.py --device cuda    # on a GPU (bf16 autocast)

In one process, with the same model, batch and views, it measures images/s of
(a) a full ``groco train`` epoch (decoding workers → on-device augmentation → forward →
    GroCo loss → backward → SGD step), (b) the same for SimCLR, and (c) the bare
forward+backward+step of the same network on pre-loaded, pre-augmented tensors with a
trivial loss. Targets: (a)/(c) ≥ 0.8 (the data path is hidden), (a)/(b) ≥ 0.95.

Timing is :mod:`timing`'s: each side one warm-up call of its own (a full epoch; its
cold cost, worker start-up included, is reported apart), then ``--rounds`` interleaved
rounds; images/s is the median with the min-max beside it (every side counts the same
``steps_per_epoch * batch`` images per call), each ratio a ratio of medians with its
per-round range.

    python benchmarks/train_throughput.py --quick          # tiny (CI: it runs)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402
from fashion_mnist import write_folder  # noqa: E402
from timing import LoadWatch, interleaved, ratio_summary  # noqa: E402


def bare_steps(trainer):
    """A call that runs one epoch's worth of forward+backward+step on tensors already on
    the device, augmented once, with a trivial loss."""
    objective = trainer.objective
    images = next(iter(trainer.loader))[0]
    views = trainer._views(images)
    objective.train()

    def step() -> None:
        trainer.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(trainer.device.type, dtype=torch.bfloat16,
                            enabled=trainer.autocast_dtype is not None):
            projections = objective.project(views)
        sum(p.float().square().mean() for p in projections).backward()
        trainer.optimizer.step()

    def epoch() -> None:
        for _ in range(trainer.steps_per_epoch):
            step()
        _sync(trainer)
    return epoch


def training_epoch(trainer):
    """A call that trains one more epoch (persistent workers: started by the warm-up)."""
    def epoch() -> None:
        trainer.train_epoch()
        trainer.epoch += 1
        _sync(trainer)
    return epoch


def _sync(trainer) -> None:
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument("--data-dir", type=Path, default=Path(".bench/fmnist"))
    parser.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None,
                        help="[default: auto, the small stem at <= 64 px, as groco train]")
    parser.add_argument("--quick", action="store_true",
                        help="tiny: 32 generated images, batch 16, 32 px, ImageNet stem, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.images, args.batch_size, args.image_size, args.workers, args.rounds = (
            32, 16, 32, 0, 1)
        args.small_stem = False

    from groco.training.config import TrainConfig
    from groco.training.trainer import Trainer

    load = LoadWatch()
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:  # generated images: CI has no Fashion-MNIST
            from index_throughput import write_images

            data = Path(tmp) / "images"
            write_images(data, args.images, 28)
        else:
            data = write_folder(args.data_dir, "train", args.images)
        trainers = {}
        for method in ("groco", "simclr"):
            config = TrainConfig(data=str(data), out=str(Path(tmp) / method), method=method,
                                 backbone=args.backbone, image_size=args.image_size,
                                 batch_size=args.batch_size, workers=args.workers,
                                 small_stem=args.small_stem,
                                 epochs=args.rounds + 1, eval_every=0, device=args.device)
            trainers[method] = Trainer(config, show_progress=False)
        from groco.training.models import SMALL_STEM_MAX_SIZE

        small_stem = (args.small_stem if args.small_stem is not None
                      else f"auto: {args.image_size <= SMALL_STEM_MAX_SIZE}")
        images = trainers["groco"].steps_per_epoch * args.batch_size
        sides = interleaved({"groco": training_epoch(trainers["groco"]),
                             "simclr": training_epoch(trainers["simclr"]),
                             "bare": bare_steps(trainers["groco"])},
                            runs=args.rounds, warmup=1)
    groco, simclr, bare = sides["groco"], sides["simclr"], sides["bare"]
    collection = "generated 28-px" if args.quick else "Fashion-MNIST"
    print(header())
    print(f"{args.backbone} (small stem {small_stem}) at {args.image_size} px, batch "
          f"{args.batch_size}, 2 views, {args.images} {collection} images ({images} a call on "
          f"every side), {args.workers} workers, device {args.device}, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads); one warm-up call each, "
          f"then {args.rounds} interleaved rounds; images/s median (min-max); ratios of "
          "medians (per-round range).")
    print(load.line() + "\n")
    print("| measurement | images/s median (min-max) | first call images/s (cold) | ratio "
          "| target |")
    print("|---|---|---|---|---|")
    print(f"| bare forward+backward+step on pre-loaded tensors | {bare.rate_summary(images)} | "
          f"{images / bare.cold:.1f} | 1.00 | |")
    print(f"| GroCo training epoch | {groco.rate_summary(images)} | "
          f"{images / groco.cold:.1f} | {ratio_summary(bare, groco)} of bare | ≥ 0.8 |")
    print(f"| SimCLR training epoch | {simclr.rate_summary(images)} | "
          f"{images / simclr.cold:.1f} | GroCo/SimCLR {ratio_summary(simclr, groco)} "
          "| ≥ 0.95 |")


if __name__ == "__main__":
    main()
