"""Training's share, with its seed range: the product's fine-tuning defaults from the
ImageNet Lite0 start, served at the geometry it trained at and at others, beside the start
at each, with and without the index's post-processing.

Fashion-MNIST: a balanced ``--bank`` of the training split as the folder `groco train`
adapts to, ``--queries`` test images searched against it. For each seed, `groco train
BANK --weights LITE0 --image-size SIZE [--no-small-stem] --epochs E --seed S` (every other
setting the product's default); then the kept epoch (``best.safetensors``) and the start
are each exported at every ``--serve`` geometry (`groco.encoder.baselines.export_backbone`
with that weights file and stem: "train at one geometry, serve at another") and the
queries searched exactly: weighted k-NN top-1 (k=20, T=0.07), precision@10, mAP@R (x100),
with the encoder's vectors and after ``centre+dba3`` fitted on the bank
(:class:`groco.index.postprocess.Postprocess`, the index's default). Runs already in
``--work`` are reused.

    python benchmarks/train_share.py --seeds 0 1 2 --serve 64 96s1
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, retrieval_figures  # noqa: E402
from fashion_mnist import CLASSES, write_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
POSTPROCESS = "centre+dba3"


def folder_images(folder: Path) -> tuple[list, np.ndarray]:
    from PIL import Image

    files = sorted(folder.rglob("*.png"))
    return ([Image.open(f).copy() for f in files],
            np.array([CLASSES.index(f.parent.name) for f in files]))


def figures(encoder: Path, bank, queries) -> dict[str, dict[str, float]]:
    from groco.encoder.runtime import Encoder
    from groco.index.postprocess import Postprocess

    model = Encoder(encoder, batch_size=128)
    b, q = model.embed(bank[0]), model.embed(queries[0])
    fitted = Postprocess.parse(POSTPROCESS).fit(b)
    stored = fitted.stored(b)
    return {"none": retrieval_figures(b, bank[1], q, queries[1]),
            POSTPROCESS: retrieval_figures(stored, bank[1], fitted.queries(q, stored),
                                           queries[1])}


def train(run: Path, bank: Path, args: argparse.Namespace, seed: int) -> float:
    if (run / "best.safetensors").exists():
        return float("nan")
    command = [sys.executable, "-m", "groco.cli", "train", str(bank), "--out", str(run),
               "--backbone", "tf_efficientnet_lite0", "--weights", str(args.weights),
               "--image-size", str(args.image_size), "--epochs", str(args.epochs),
               "--seed", str(seed), "--small-stem" if args.small_stem else "--no-small-stem",
               "--pool", args.pool, *shlex.split(args.train_args)]
    started = time.perf_counter()
    with open(run.with_suffix(".log"), "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--serve", nargs="+", default=["64", "96s1"],
                        help="geometries to serve at: SIZE or SIZEs1 (stride-1 stem)")
    parser.add_argument("--image-size", type=int, default=64, help="training size")
    parser.add_argument("--small-stem", action="store_true", help="train with the stride-1 stem")
    parser.add_argument("--pool", choices=["avg", "max"], default="avg",
                        help="global pooling, trained and served")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-args", default="",
                        help="more `groco train` options, e.g. '--lr 0.6 --crop-min-scale 0.5'")
    parser.add_argument("--tag", default="", help="added to the runs' names (another recipe)")
    parser.add_argument("--bank", type=int, default=4000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--weights", type=Path, default=REPO / ".bench/lite0.safetensors")
    parser.add_argument("--work", type=Path, default=REPO / ".bench/train-share")
    args = parser.parse_args()
    from groco.encoder.baselines import export_backbone
    from groco.training.geometry import Geometry

    args.work.mkdir(parents=True, exist_ok=True)
    bank_dir = write_folder(REPO / ".bench/fmnist", "train", args.bank)
    bank = folder_images(bank_dir)
    queries = folder_images(write_folder(REPO / ".bench/fmnist", "t10k", args.queries))
    trained = (Geometry(args.image_size, args.small_stem, pool=args.pool).name
               + (f"-{args.tag}" if args.tag else ""))
    starts = {"start": args.weights}
    for seed in args.seeds:
        run = args.work / f"run{trained}-s{seed}"
        seconds = train(run, bank_dir, args, seed)
        print(f"seed {seed}: trained in {seconds / 60:.1f} min" if seconds == seconds
              else f"seed {seed}: {run} reused", file=sys.stderr, flush=True)
        starts[f"seed {seed}"] = run / "best.safetensors"
    rows = {}
    for geometry in args.serve:
        served = Geometry.parse(geometry)
        for name, weights in starts.items():
            out = args.work / f"{name.replace(' ', '')}-{trained}-at-{geometry}.onnx"
            export_backbone("tf_efficientnet_lite0", served.image_size, out, weights=weights,
                            small_stem=served.small_stem, pool=args.pool)
            rows[(geometry, name)] = figures(out, bank, queries)
            print(geometry, name, json.dumps(rows[(geometry, name)]), file=sys.stderr,
                  flush=True)
    print(header())
    print(f"Fashion-MNIST: {len(bank[1])} bank, {len(queries[1])} queries; trained at "
          f"{trained}, {args.epochs} epochs{' ' + args.train_args if args.train_args else ''}, "
          f"seeds {args.seeds}\n")
    print("| served at | encoder | post-processing | k-NN top-1 | precision@10 | mAP@R |")
    print("|---|---|---|---|---|---|")
    for (geometry, name), by_post in rows.items():
        for post, f in by_post.items():
            print(f"| {geometry} | {name} | {post} | {f['knn_top1'] * 100:.2f} | "
                  f"{f['precision_at_10'] * 100:.2f} | {f['map_at_r'] * 100:.2f} |")
    for geometry in args.serve:
        for post in ("none", POSTPROCESS):
            start = rows[(geometry, "start")][post]
            gains = {key: [(rows[(geometry, f"seed {s}")][post][key] - start[key]) * 100
                           for s in args.seeds]
                     for key in ("knn_top1", "precision_at_10", "map_at_r")}
            print(f"\ntraining's share at {geometry}, {post}: " + ", ".join(
                f"{key} {min(v):+.2f} to {max(v):+.2f}" for key, v in gains.items()))


if __name__ == "__main__":
    main()
