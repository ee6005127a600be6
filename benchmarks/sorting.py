"""Forward+backward time of groco's sorting networks against diffsort 0.2.0, and the GroCo
loss's share of a resnet18 training step.

    python benchmarks/sorting.py                 # B=1024, n in 11 32 64 128, both networks
    python benchmarks/sorting.py --sizes 11 32   # a quicker subset

Both implementations get the same inputs and the same loss, ``sum(sorted_x) + sum(P * W)``,
timed in the same process. diffsort keeps four (B, n, n/2) products per layer for its
backward pass; where that would exceed ``--reference-memory-gb`` its batch is run in equal
chunks one after another (its cost is linear in B, so the total is the same work).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, header  # noqa: E402

from groco.training.losses import GroCoLoss  # noqa: E402
from groco.training.sorting import SortingNetwork  # noqa: E402


def diffsort_memory_bytes(kind: str, n: int, batch: int) -> float:
    stages = math.ceil(math.log2(n))
    layers = n if kind == "odd_even" else stages * (stages + 1) // 2
    return layers * 6 * batch * n * (n // 2 + 1) * 4


def time_sorting(
    kind: str, n: int, batch: int, repeats: int, memory_gb: float
) -> tuple[float, float]:
    import diffsort

    gen = torch.Generator().manual_seed(n)
    x = torch.randn(batch, n, generator=gen)
    weights = torch.randn(batch, n, n, generator=gen)
    ours = SortingNetwork(kind, n, steepness=10.0)
    reference = diffsort.DiffSortNet(kind, n, steepness=10.0)
    chunks = max(1, math.ceil(diffsort_memory_bytes(kind, n, batch) / (memory_gb * 2**30)))

    def run(module, parts: int) -> None:
        for xs, ws in zip(x.chunk(parts), weights.chunk(parts), strict=True):
            xs = xs.clone().requires_grad_()
            sorted_x, perm = module(xs)
            (sorted_x.sum() + (perm * ws).sum()).backward()

    # Interleaved, best of each: on a shared machine a burst of load then hits both alike.
    slow = n >= 64
    t_ours = t_ref = float("inf")
    run(ours, 1)
    if not slow:
        run(reference, chunks)
    for i in range(repeats):
        t_ours = min(t_ours, best_time(lambda: run(ours, 1), repeats=1, warmup=0))
        if not slow or i == 0:
            t_ref = min(t_ref, best_time(lambda: run(reference, chunks), repeats=1, warmup=0))
    return t_ours, t_ref


def groco_share(batch: int, image_size: int, backbone: str, repeats: int) -> tuple[float, float]:
    """(loss fwd+bwd seconds, full training step seconds) for a two-view GroCo step."""
    from groco.training.models import build_model

    torch.manual_seed(0)
    model = build_model({"backbone": backbone, "image_size": image_size, "small_stem": None,
                         "projector_hidden": 2048, "projector_dim": 2048,
                         "projector_layers": 3, "weights": None})
    model = model.to(memory_format=torch.channels_last)
    loss_fn = GroCoLoss(topk_neg=10, steepness=1.0)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    views = [torch.randn(batch, 3, image_size, image_size).contiguous(
        memory_format=torch.channels_last) for _ in range(2)]

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        projections = [model(v)[1] for v in views]
        loss_fn(projections).backward()
        optimiser.step()

    with torch.no_grad():
        projections = [model(v)[1] for v in views]

    def loss_only() -> None:
        leaves = [p.detach().clone().requires_grad_() for p in projections]
        loss_fn(leaves).backward()

    t_step = best_time(step, repeats=repeats)
    t_loss = best_time(loss_only, repeats=repeats * 3)
    return t_loss, t_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--sizes", type=int, nargs="+", default=[11, 32, 64, 128])
    parser.add_argument("--networks", nargs="+", default=["odd_even", "bitonic"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-memory-gb", type=float, default=6.0)
    parser.add_argument("--step-batch", type=int, default=256)
    parser.add_argument("--step-image-size", type=int, default=64)
    parser.add_argument("--skip-step", action="store_true", help="skip the training-step share")
    args = parser.parse_args()

    print(header())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, B={args.batch}, "
          "steepness 10, cauchy, loss sum(sorted_x) + sum(P*W), best of "
          f"{args.repeats} (diffsort: 1 run at n >= 64)\n")
    print("| network | n | groco fwd+bwd (ms) | diffsort fwd+bwd (ms) | speed-up |")
    print("|---|---|---|---|---|")
    for kind in args.networks:
        for n in args.sizes:
            started = time.perf_counter()
            ours, ref = time_sorting(kind, n, args.batch, args.repeats, args.reference_memory_gb)
            print(f"| {kind} | {n} | {ours * 1e3:.1f} | {ref * 1e3:.1f} | {ref / ours:.1f}x |",
                  flush=True)
            print(f"  ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if not args.skip_step:
        t_loss, t_step = groco_share(args.step_batch, args.step_image_size, "resnet18",
                                     args.repeats)
        print(f"\nGroCo loss share of a resnet18 training step (batch {args.step_batch}, 2 views, "
              f"{args.step_image_size} px, SGD, CPU): loss fwd+bwd {t_loss * 1e3:.1f} ms, "
              f"step {t_step * 1e3:.0f} ms, share {100 * t_loss / t_step:.2f}%")


if __name__ == "__main__":
    main()
