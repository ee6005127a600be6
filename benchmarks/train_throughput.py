"""Training throughput: is the data path or the loss the bottleneck?

    python benchmarks/train_throughput.py                  # CPU, resnet18 at 64 px
    python benchmarks/train_throughput.py --device cuda    # on a GPU (bf16 autocast)

In one process, with the same model, batch and views, it measures images/s of
(a) a full ``groco train`` epoch (decoding workers → on-device augmentation → forward →
    GroCo loss → backward → SGD step), (b) the same for SimCLR, and (c) the bare
forward+backward+step of the same network on pre-loaded, pre-augmented tensors with a
trivial loss. Targets: (a)/(c) ≥ 0.8 (the data path is hidden), (a)/(b) ≥ 0.95.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402
from fashion_mnist import write_folder  # noqa: E402


def bare_images_per_s(trainer, steps: int) -> float:
    """Forward+backward+step on tensors already on the device, augmented once."""
    objective, config = trainer.objective, trainer.config
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

    step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * config.batch_size / (time.perf_counter() - started)


def epoch_images_per_s(trainer) -> float:
    """Images/s of one more epoch (persistent workers: started by the warm-up epoch)."""
    speed = trainer.train_epoch()[1]
    trainer.epoch += 1
    return speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=1280)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds; each figure is the best round")
    parser.add_argument("--data-dir", type=Path, default=Path(".bench/fmnist"))
    args = parser.parse_args()

    from groco.training.config import TrainConfig
    from groco.training.trainer import Trainer

    data = write_folder(args.data_dir, "train", args.images)
    results = {"groco": 0.0, "simclr": 0.0, "bare": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for method in ("groco", "simclr"):
            config = TrainConfig(data=str(data), out=str(Path(tmp) / method), method=method,
                                 backbone=args.backbone, image_size=args.image_size,
                                 batch_size=args.batch_size, workers=args.workers,
                                 epochs=args.rounds + 1, eval_every=0, device=args.device)
            trainers[method] = Trainer(config, show_progress=False)
            epoch_images_per_s(trainers[method])  # warm-up: workers, allocator
        # Alternate so that a burst of load on a shared machine hits every figure alike.
        for _ in range(args.rounds):
            for method, trainer in trainers.items():
                results[method] = max(results[method], epoch_images_per_s(trainer))
            results["bare"] = max(results["bare"], bare_images_per_s(
                trainers["groco"], trainers["groco"].steps_per_epoch))
    print(header())
    print(f"{args.backbone} at {args.image_size} px, batch {args.batch_size}, 2 views, "
          f"{args.images} Fashion-MNIST images, best of {args.rounds} alternating rounds, "
          f"{args.workers} workers, device "
          f"{args.device}, torch {torch.__version__} ({torch.get_num_threads()} threads)\n")
    print("| measurement | images/s | ratio | target |")
    print("|---|---|---|---|")
    print(f"| bare forward+backward on pre-loaded tensors | {results['bare']:.1f} | 1.00 | |")
    print(f"| GroCo training epoch | {results['groco']:.1f} | "
          f"{results['groco'] / results['bare']:.2f} of bare | ≥ 0.8 |")
    print(f"| SimCLR training epoch | {results['simclr']:.1f} | "
          f"GroCo/SimCLR {results['groco'] / results['simclr']:.2f} | ≥ 0.95 |")


if __name__ == "__main__":
    main()
