"""Embedding throughput of `groco index build` against the bare encoder on the same images.

The question: does the build's pipeline (read + hash + decode + preprocess on a thread
pool, bounded prefetch, shard writes, SQLite commits) keep the ONNX Runtime session busy?
Target: build embedding rate >= 0.9x the rate of ``Encoder.embed_arrays`` on images that
were decoded and preprocessed beforehand (I/O and decoding hidden behind inference).

Steps:
1. write ``--n`` generated JPEGs (``--size`` px, class subfolders) to a temp folder;
2. export an untrained encoder (``--backbone`` at ``--image-size`` px, timm, small stem at
   <= 64 px) with ``groco.encoder.export.export_encoder``;
3. ``bare``: decode + preprocess every image first (untimed), then time one
   ``embed_arrays`` over all of them (``--batch-size`` per ONNX call);
4. ``build``: time ``build_index_dir`` on the folder into a fresh directory: the
   embedding rate is images / embedding-phase time (discovery to the last shard commit);
   the end-to-end rate also counts file discovery, the FAISS build, tuning and manifest;
5. steps 3-4 are timed with :mod:`timing`: one warm-up call each (its cold cost
   reported apart, in no ratio), then ``--repeats`` interleaved rounds. Reported: the
   median rate with the min-max beside it, the ratio of medians and the per-round
   build/bare ratios (each from the same round).

Run from the repository root:
    .venv/bin/python benchmarks/index_throughput.py               # 1000 x 64 px, resnet18
    .venv/bin/python benchmarks/index_throughput.py --n 500 --repeats 2
    .venv/bin/python benchmarks/index_throughput.py --quick       # tiny (CI: it runs)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402
from timing import LoadWatch, Side, interleaved, round_ratios, speedup  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_images(root: Path, n: int, size: int, classes: int = 10, seed: int = 0) -> None:
    """``n`` JPEGs: a class hue, a random bright rectangle and noise, in class folders."""
    rng = np.random.default_rng(seed)
    hues = rng.integers(30, 226, (classes, 3))
    for i in range(n):
        c = i % classes
        pixels = hues[c] + rng.normal(0, 30, (size, size, 3))
        x0, y0 = rng.integers(0, size // 2, 2)
        w, h = rng.integers(size // 8, size // 2, 2)
        pixels[y0:y0 + h, x0:x0 + w] += 60
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            folder / f"img{i:05d}.jpg", quality=90)


def export(work: Path, backbone: str, image_size: int) -> Path:
    from groco.encoder.export import export_untrained
    from groco.training.config import TrainConfig

    config = TrainConfig(data=str(work), out=str(work / "run"), backbone=backbone,
                         image_size=image_size, projector_hidden=64, projector_dim=32,
                         mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    out = work / "encoder.onnx"
    export_untrained(config, work / "run", out, parity_images=4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images")
    parser.add_argument("--size", type=int, default=64, help="side of the JPEGs")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64, help="encoder input size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument("--quick", action="store_true",
                        help="tiny inputs: 48 32-px images, encoder at 32 px, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.n, args.size, args.image_size, args.batch_size, args.repeats = 48, 32, 32, 16, 2

    from groco.encoder.runtime import Encoder
    from groco.images import find_images, load_image
    from groco.index.build import build_index_dir

    load = LoadWatch()
    work = Path(tempfile.mkdtemp(prefix="groco-bench-"))
    try:
        images = work / "images"
        log(f"writing {args.n} {args.size}px JPEGs to {images}")
        write_images(images, args.n, args.size)
        log(f"exporting {args.backbone} at {args.image_size}px")
        encoder_path = export(work, args.backbone, args.image_size)
        encoder = Encoder(encoder_path, batch_size=args.batch_size)
        files = find_images(images)
        t0 = time.perf_counter()
        batch = np.stack([encoder.preprocess(load_image(f)) for f in files])
        decode_rate = len(files) / (time.perf_counter() - t0)
        reports = []

        def build() -> None:
            out = work / f"index{len(reports)}"
            report = build_index_dir(images, encoder_path, out, batch_size=args.batch_size,
                                     progress=False)
            assert report.embedded == len(files), report
            reports.append(report)
            shutil.rmtree(out)

        def progress(r: int, sides: dict[str, Side]) -> None:
            log(f"round {r + 1}/{args.repeats}: bare {len(files) / sides['bare'].times[-1]:.1f}"
                f" images/s, index build {reports[-1].images_per_second:.1f} embedding")

        sides = interleaved({"bare": lambda: encoder.embed_arrays(batch), "build": build},
                            runs=args.repeats, warmup=1, on_round=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = len(files)
    bare, total = sides["bare"], sides["build"]
    # The build's embedding phase (discovery to the last shard commit), from its report;
    # reports[0] is the warm-up build.
    embedding = Side("embedding phase", cold=reports[0].embed_seconds,
                     times=[r.embed_seconds for r in reports[1:]])
    per_round = round_ratios(embedding, bare)
    print(header())
    print(f"{args.n} generated {args.size}x{args.size} JPEGs in 10 class folders; encoder "
          f"{args.backbone} (untrained) at {args.image_size} px on {encoder.provider}, "
          f"{encoder.threads} intra-op threads, batch {args.batch_size} on both sides; one "
          f"warm-up call each, then {args.repeats} interleaved rounds; images/s median "
          "(min-max); ratios of medians.")
    print(load.line() + "\n")
    print("| path | images/s median (min-max) | vs bare | first call images/s (cold) |")
    print("|---|---:|---:|---:|")
    print(f"| decode + preprocess only (1 thread, no inference) | {decode_rate:.0f} | | |")
    print(f"| bare `Encoder.embed_arrays` on pre-decoded arrays | {bare.rate_summary(n)} | "
          f"1.00x | {n / bare.cold:.1f} |")
    print(f"| `index build`, embedding phase (read, hash, decode, embed, shards, SQLite) "
          f"| {embedding.rate_summary(n)} | {speedup(bare, embedding):.2f}x | "
          f"{n / embedding.cold:.1f} |")
    print(f"| `index build`, end to end (+ discovery, FAISS, tuning, manifest) "
          f"| {total.rate_summary(n)} | {speedup(bare, total):.2f}x | {n / total.cold:.1f} |")
    print(f"\nPer-round build (embedding phase) / bare rate ratios: "
          f"{', '.join(f'{1 / p:.2f}' for p in per_round)}")


if __name__ == "__main__":
    main()
