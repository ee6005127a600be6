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
5. steps 3-4 alternate ``--repeats`` times; the best of each is reported, and the ratio
   of the bests.

Run from the repository root:
    .venv/bin/python benchmarks/index_throughput.py               # 2000 x 64 px, resnet18
    .venv/bin/python benchmarks/index_throughput.py --n 500 --repeats 1
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
    parser.add_argument("--n", type=int, default=2000, help="images")
    parser.add_argument("--size", type=int, default=64, help="side of the JPEGs")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64, help="encoder input size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from groco.encoder.runtime import Encoder
    from groco.images import find_images, load_image
    from groco.index.build import build_index_dir

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
        encoder.embed_arrays(batch[: args.batch_size])  # warm-up
        bare, build, total, pairs = [], [], [], []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            encoder.embed_arrays(batch)
            bare.append(len(batch) / (time.perf_counter() - t0))
            log(f"repeat {r + 1}: bare embed_arrays {bare[-1]:.1f} images/s")
            out = work / f"index{r}"
            report = build_index_dir(images, encoder_path, out, batch_size=args.batch_size,
                                     progress=False)
            assert report.embedded == len(files), report
            build.append(report.images_per_second)
            total.append(report.embedded / report.seconds)
            pairs.append(build[-1] / bare[-1])
            log(f"repeat {r + 1}: index build {build[-1]:.1f} images/s embedding, "
                f"{total[-1]:.1f} end to end ({report.index_type})")
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(header())
    print(f"{args.n} generated {args.size}x{args.size} JPEGs in 10 class folders; encoder "
          f"{args.backbone} (untrained) at {args.image_size} px on {encoder.provider}, "
          f"{encoder.threads} intra-op threads, batch {args.batch_size}; best of "
          f"{args.repeats}, alternating.\n")
    print("| path | images/s | vs bare |")
    print("|---|---:|---:|")
    print(f"| decode + preprocess only (1 thread, no inference) | {decode_rate:.0f} | |")
    print(f"| bare `Encoder.embed_arrays` on pre-decoded arrays | {max(bare):.1f} | 1.00x |")
    print(f"| `index build`, embedding phase (read, hash, decode, embed, shards, SQLite) "
          f"| {max(build):.1f} | {max(build) / max(bare):.2f}x |")
    print(f"| `index build`, end to end (+ discovery, FAISS, tuning, manifest) "
          f"| {max(total):.1f} | {max(total) / max(bare):.2f}x |")
    print(f"\nPer-repeat build/bare ratios: {', '.join(f'{p:.2f}' for p in pairs)}")


if __name__ == "__main__":
    main()
