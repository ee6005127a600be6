"""Forward+backward time of groco's sorting networks against diffsort 0.2.0, and the GroCo
loss's share of a resnet18 training step.

    python benchmarks/sorting.py                 # B=1024, n in 11 32 64 128, both networks
    python benchmarks/sorting.py --sizes 11 32   # a quicker subset
    python benchmarks/sorting.py --quick         # tiny inputs (CI: it runs, prints its table)

Both implementations get the same inputs and the same loss, ``sum(sorted_x) + sum(P * W)``,
timed in the same process with :mod:`timing`: one warm-up call each (its cold cost is a
column of its own, never in the ratio), then ``--runs`` interleaved rounds, more (up to
4x) until a row's timed rounds add up to ``--min-seconds`` (20 s: the median of a
millisecond row settles, a row of seconds keeps 5 rounds); each figure
is the median with the min-max beside it, the speed-up is diffsort's median over groco's
with the per-round range. diffsort keeps four (B, n, n/2) products per layer for its
backward pass; where that would exceed ``--reference-memory-gb`` its batch is run in equal
chunks one after another (its cost is linear in B, so the total is the same work). Each
(network, n) row runs in a fresh process of its own, twice: with glibc's mmap threshold
pinned low ("fresh": every large tensor is new memory, its page faults paid each call)
and high ("reused": tensors up to 32 MiB come from a heap kept between calls). Left to
itself the threshold moves with the program's frees, and diffsort's odd-even n = 64 took
2.3 s or 6 s a call by that alone, from one process to the next.

The step share times a full two-view GroCo training step of resnet18 and the GroCo loss's
forward + backward on that step's projections, interleaved; by default at the step the
Fashion-MNIST tables train (``benchmarks/fmnist_knn.py``: 32 px, batch 128, projector
2048, ImageNet stem), with the small stem beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, json_from_child  # noqa: E402
from timing import LoadWatch, Side, interleaved, ratio_summary, speedup  # noqa: E402

from groco.training.losses import GroCoLoss  # noqa: E402
from groco.training.sorting import SortingNetwork  # noqa: E402

# glibc's malloc moves its mmap threshold with the program's frees (up to 32 MiB), so a
# (B, n, n) tensor of 16 MiB is fresh memory in one process and reused heap in the next:
# diffsort's odd-even n = 64 took 2.3 s or 6 s a call by that alone. Each row is timed
# with the threshold pinned (which also pins the trim threshold) both ways.
HEAPS: dict[str, dict[str, str]] = {
    # every allocation above 128 KiB is a fresh mmap: each call pays its page faults
    "fresh": {"MALLOC_MMAP_THRESHOLD_": str(128 * 2**10)},
    # up to 32 MiB from the heap, kept between calls (larger ones are always mmapped)
    "reused": {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
               "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30)},
}


def diffsort_memory_bytes(kind: str, n: int, batch: int) -> float:
    stages = math.ceil(math.log2(n))
    layers = n if kind == "odd_even" else stages * (stages + 1) // 2
    return layers * 6 * batch * n * (n // 2 + 1) * 4


def time_sorting(kind: str, n: int, batch: int, runs: int, memory_gb: float,
                 min_seconds: float = 0.0) -> tuple[Side, Side]:
    """(groco, diffsort) timings of forward + backward on the same (batch, n) inputs."""
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

    result = interleaved({"diffsort": lambda: run(reference, chunks),
                          "groco": lambda: run(ours, 1)}, runs=runs, warmup=1,
                         min_seconds=min_seconds)
    return result["groco"], result["diffsort"]


def time_sorting_in_child(kind: str, n: int, batch: int, runs: int, memory_gb: float,
                          threads: int | None, min_seconds: float, heap: str
                          ) -> tuple[Side, Side]:
    """:func:`time_sorting` in a fresh Python process (the same threads) with the allocator
    setting ``HEAPS[heap]``, so no row inherits another's heap."""
    command = [__file__, "--one-row", kind, str(n), "--batch", str(batch),
               "--runs", str(runs), "--reference-memory-gb", str(memory_gb),
               "--min-seconds", str(min_seconds)]
    if threads:
        command += ["--threads", str(threads)]
    sides = json_from_child(command, f"{kind} n={n}", env=HEAPS[heap])
    return Side(**sides["groco"]), Side(**sides["diffsort"])


def groco_share(batch: int, image_size: int, small_stem: bool, runs: int,
                min_seconds: float = 0.0) -> tuple[Side, Side]:
    """(GroCo loss fwd+bwd, full two-view training step) timings of resnet18, interleaved."""
    from groco.training.models import build_model

    torch.manual_seed(0)
    model = build_model({"backbone": "resnet18", "image_size": image_size,
                         "small_stem": small_stem, "projector_hidden": 2048,
                         "projector_dim": 2048, "projector_layers": 3, "weights": None})
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

    result = interleaved({"step": step, "loss": loss_only}, runs=runs, warmup=1,
                         min_seconds=min_seconds)
    return result["loss"], result["step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--sizes", type=int, nargs="+", default=[11, 32, 64, 128])
    parser.add_argument("--networks", nargs="+", default=["odd_even", "bitonic"])
    parser.add_argument("--runs", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--min-seconds", type=float, default=20.0,
                        help="more rounds (up to 4x --runs) until a row's timed rounds "
                             "add up to this [0 with --quick]")
    parser.add_argument("--reference-memory-gb", type=float, default=6.0)
    parser.add_argument("--heaps", nargs="+", choices=list(HEAPS), default=list(HEAPS),
                        help="glibc heap settings each row is timed with (module comment)")
    parser.add_argument("--step-batch", type=int, default=128)
    parser.add_argument("--step-image-size", type=int, default=32)
    parser.add_argument("--step-stems", nargs="+", choices=["imagenet", "small"],
                        default=["imagenet", "small"])
    parser.add_argument("--skip-step", action="store_true", help="skip the training-step share")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both sides [default: torch's own]")
    parser.add_argument("--quick", action="store_true",
                        help="tiny inputs: B=64, n in 11 16, a batch-16 step at 32 px, 2 runs")
    parser.add_argument("--one-row", nargs=2, metavar=("NETWORK", "N"),
                        help=argparse.SUPPRESS)  # one row in this process, JSON on stdout
    args = parser.parse_args()
    if args.quick:
        args.batch, args.sizes, args.runs, args.min_seconds = 64, [11, 16], 2, 0.0
        args.step_batch, args.step_image_size, args.step_stems = 16, 32, ["imagenet"]

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one_row:
        kind, n = args.one_row[0], int(args.one_row[1])
        ours, ref = time_sorting(kind, n, args.batch, args.runs, args.reference_memory_gb,
                                 args.min_seconds)
        print(json.dumps({side.name: vars(side) for side in (ours, ref)}))
        return
    load = LoadWatch()
    rows = []
    heaps = ["as is"] if args.quick else args.heaps
    for kind in args.networks:
        for n in args.sizes:
            for heap in heaps:
                started = time.perf_counter()
                if args.quick:  # KBs per call: no heap to inherit, no second torch import
                    ours, ref = time_sorting(kind, n, args.batch, args.runs,
                                             args.reference_memory_gb, args.min_seconds)
                else:
                    ours, ref = time_sorting_in_child(kind, n, args.batch, args.runs,
                                                      args.reference_memory_gb, args.threads,
                                                      args.min_seconds, heap)
                rows.append(f"| {kind} | {n} | {heap} | {ours.summary()} | {ref.summary()} | "
                            f"{ratio_summary(ref, ours, digits=1)} | {ours.cold * 1e3:.1f} | "
                            f"{ref.cold * 1e3:.1f} | {len(ours.times)} |")
                print(f"{rows[-1]}  ({time.perf_counter() - started:.0f} s)", file=sys.stderr,
                      flush=True)
    shares = []
    if not args.skip_step:
        for stem in args.step_stems:
            t_loss, t_step = groco_share(args.step_batch, args.step_image_size,
                                         stem == "small", args.runs, args.min_seconds)
            shares.append(f"| {stem} stem | {t_loss.summary()} | {t_step.summary(digits=0)} | "
                          f"{100 / speedup(t_step, t_loss):.2f} % | {len(t_step.times)} |")
    print(header())
    where = "one process (quick)" if args.quick else "a fresh process each"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on both sides, "
          f"B={args.batch}, steepness 10, cauchy, loss sum(sorted_x) + sum(P*W), forward + "
          f"backward; rows in {where}; one warm-up call each, then at least {args.runs} "
          f"interleaved rounds, more (up to {4 * args.runs}) until a row's timed rounds add up "
          f"to {args.min_seconds:g} s (the rounds column): median (min-max) ms; speed-up = "
          "diffsort median / groco median "
          "(per-round range); the first (cold) call of each side is its own column, not in "
          "the speed-up; heap: glibc's malloc with its mmap threshold pinned, 'fresh' = "
          "every allocation over 128 KiB is new memory (page faults each call), 'reused' = "
          "allocations up to 32 MiB come from a heap kept between calls ('as is': "
          "unpinned).")
    print(load.line() + "\n")
    print("| network | n | heap | groco ms | diffsort ms | speed-up vs diffsort "
          "| groco cold ms | diffsort cold ms | rounds |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if shares:
        print(f"\nGroCo loss share of a resnet18 training step (batch {args.step_batch}, 2 "
              f"views, {args.step_image_size} px, projector 2048, SGD, CPU, channels_last), "
              f"loss and step interleaved, rounds as above, median (min-max); the "
              "Fashion-MNIST tables train the ImageNet stem (benchmarks/fmnist_knn.py):\n")
        print("| stem | loss fwd+bwd ms | step ms | share (median loss / median step) "
              "| rounds |")
        print("|---|---|---|---|---|")
        print("\n".join(shares))


if __name__ == "__main__":
    main()
