"""The GPU path in one prepared run: training, export and index on CUDA beside their baselines.

    python -m benchmarks --gpu                 # on a CUDA machine: every part, <= 8 min (H100)
    python benchmarks/gpu.py --quick           # CPU: tiny inputs; CUDA comparisons skipped
    python benchmarks/gpu.py --parts train export

Parts, each in a process of its own with a time limit (``--budget`` scales them), so a part
that fails, hangs or breaks the CUDA context loses only its own table (the quick mode runs
them one after another in one process, each failure caught):

- ``env``: the device, torch, CUDA, ONNX Runtime's providers, FAISS and its GPUs;
- ``train``: images/s of a GroCo training epoch through the real trainer (decoding workers,
  GPU augmentation, bf16 autocast, channels-last for CNNs) against the bare
  forward+backward+step of the same network, batch and precision on pre-augmented tensors,
  for resnet50 and vit_small_patch16_224 at 224 px; the GroCo loss's share of a step (its
  forward+backward on the step's projections); peak GPU memory of a training epoch;
- ``run``: ``benchmarks/quality.py`` on Fashion-MNIST from the EfficientNet-Lite0 weights at
  96 px, its epochs chosen from a measured throughput to fill about 2 minutes of training,
  exported, indexed and evaluated beside the start (``--weights``; the IDX files from
  ``GROCO_FMNIST_DIR`` or the Debian package);
- ``export``: ONNX Runtime's CUDA provider against PyTorch on the GPU, fp32 and fp16, a
  resnet50 at 224 px, both sides from host arrays to host arrays; the session's provider is
  read back and a CPU fallback is a failure;
- ``index``: FAISS builds (IVF k-means on the GPU or the CPU, tuned to recall@10 0.95) and
  searches (the built index on the CPU, the same index copied to the GPU at the same
  ``nprobe``) of 1M x 512 synthetic unit vectors, recall@10 of each against exact search.

Timing is :mod:`timing`'s (own warm-up per side, interleaved rounds, medians with min-max,
ratios of medians), with ``torch.cuda.synchronize`` inside every timed call. Where CUDA, the
CUDA provider or FAISS's GPUs are missing, the comparison says so in one line and the CPU
side is still measured, so the quick mode runs every part's code on CPU in CI.

Without a CUDA device the full mode runs nothing and says so (the quick mode is the one
for a CPU). Exit status: 0 when no part failed (a skipped comparison is not a failure).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import header, run_limited  # noqa: E402

PARTS = ("env", "train", "run", "export", "index")
LIMITS_S = {"env": 30, "train": 100, "run": 250, "export": 60, "index": 120}
"""Each part's time limit on a GPU, in seconds: a stop for a part that hangs, not its budget.
Together 9.3 min, inside a lent machine's 10-minute call with the wheels' install; the parts
aim at about 7 (the run part's training at ``gpu_parts.TRAIN_SECONDS``)."""
QUICK_LIMITS_S = {"env": 60, "train": 120, "run": 180, "export": 120, "index": 60}


def run_part_here(part: str, args: argparse.Namespace) -> tuple[str, str | None]:
    """``(its Markdown section, why it failed or None)``: ``part`` in this process (the quick
    mode: no isolation needed on tiny inputs, and no interpreter start-up per part)."""
    import contextlib
    import io

    import gpu_parts

    output, why = io.StringIO(), None
    started = time.perf_counter()
    with contextlib.redirect_stdout(output):
        try:
            gpu_parts.PARTS[part](argparse.Namespace(quick=True, weights=args.weights,
                                                     work=args.work))
        except SystemExit as stop:
            why = f"stopped: {stop.code}"
        except Exception as error:  # a part's failure is reported, the next part runs
            why = f"{type(error).__name__}: {error}"
    seconds = time.perf_counter() - started
    status = "ok" if why is None else f"FAILED, {why}"
    return f"### {part} ({status}, {seconds:.0f} s)\n\n{output.getvalue().strip()}\n", why


def run_part(part: str, args: argparse.Namespace, limit: float) -> tuple[str, str | None]:
    """``(its Markdown section, why it failed or None)``: ``part`` in a process of its own,
    stopped after ``limit`` seconds."""
    if args.quick:
        return run_part_here(part, args)
    argv = [sys.executable, str(HERE / "gpu_parts.py"), part, "--work", str(args.work)]
    if args.weights is not None:
        argv += ["--weights", str(args.weights)]
    started = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] {part}: started (limit {limit:.0f} s)",
          file=sys.stderr, flush=True)
    code, output, errors = run_limited(argv, limit, {**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - started
    if code == -1:
        why = f"stopped at its limit of {limit:.0f} s"
    elif code != 0:
        last = [line for line in errors.strip().splitlines() if line.strip()]
        why = f"exited {code}: {last[-1] if last else 'no error output'}"
    else:
        why = None
    status = "ok" if why is None else f"FAILED, {why}"
    print(f"[{time.strftime('%H:%M:%S')}] {part}: {status} in {seconds:.0f} s",
          file=sys.stderr, flush=True)
    if why is not None and errors.strip():
        sys.stderr.write(errors[-4000:])
    return f"### {part} ({status}, {seconds:.0f} s)\n\n{output.strip()}\n", why


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--quick", action="store_true",
                        help="tiny inputs on whatever device there is (CI runs it on CPU)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="EfficientNet-Lite0 ImageNet weights for the run part "
                             "[default: .bench/lite0.safetensors]")
    parser.add_argument("--work", type=Path, default=Path(".bench/gpu"),
                        help="scratch folder (data, runs, indexes) [default: .bench/gpu]")
    parser.add_argument("--budget", type=float, default=1.0,
                        help="multiply every part's time limit by this [default: 1]")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    limits = QUICK_LIMITS_S if args.quick else LIMITS_S
    print(header())
    import torch

    if not args.quick and not torch.cuda.is_available():
        print("Skipped: no CUDA device here; the full run is for a GPU machine (--quick runs "
              "every part on tiny inputs on the CPU).")
        return 0
    mode = "quick (tiny inputs)" if args.quick else "full"
    print(f"GPU path, {mode}: parts {', '.join(args.parts)}, each in its own process with a "
          "time limit; a comparison whose GPU side is missing says so in one line.\n")
    failed = []
    for part in args.parts:
        section, why = run_part(part, args, limits[part] * args.budget)
        print(section, flush=True)
        if why is not None:
            failed.append(f"{part}: {why}")
    for line in failed:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
