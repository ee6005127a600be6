"""Sharded search: the fan-out cost of 2 and 4 local shards against one index over the
same images (`groco search --index`, `groco serve A B ...`).

Fashion-MNIST's test images as a folder, split into 2 and into 4 shards (file ``n`` of
the sorted list to shard ``n mod S``, class folders kept), each indexed with the same
encoder and the index defaults (post-processing included), beside one index over all of
them. Sides, timed alike (:mod:`timing`: own warm-up, interleaved rounds, median with
min-max): ``--queries`` query images (decoded once, outside the timing) searched one after
another at k = 10 through :class:`groco.index.api.IndexReader` (one index) and
:class:`groco.index.api.ShardUnion` (2 and 4 shards: embedded once, searched in a thread
a shard, merged). Beside the time, the union's top-10 agreement with the single index
(each shard centres on its own mean and averages over its own neighbours, so they differ;
without post-processing they are equal, `tests/test_union.py`) and the precision@10 of
each side by folder label (the query itself is indexed and counts, alike on every side).
With ``--ray``, the same unions again with every shard but the first in a Ray Serve
replica (``--ray local``: a Ray started here, on the same cores), as ``groco serve --ray``
opens them.

    python benchmarks/shards.py
    python benchmarks/shards.py --ray
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, index_of  # noqa: E402
from fashion_mnist import write_folder  # noqa: E402
from index_map import encoders  # noqa: E402
from timing import LoadWatch, interleaved, ratio_summary, threads_line  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def split(images: Path, out: Path, count: int) -> list[Path]:
    """``count`` folders holding every ``count``-th image of ``images`` (reused)."""
    parts = [out / f"part-{n}-of-{count}" for n in range(count)]
    if all((p / ".complete").exists() for p in parts):
        return parts
    shutil.rmtree(out, ignore_errors=True)
    files = sorted(p for p in images.rglob("*.png"))
    for n, path in enumerate(files):
        target = parts[n % count] / path.relative_to(images)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    for p in parts:
        (p / ".complete").write_text("ok\n")
    return parts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=None,
                        help="balanced subset of the 10k test split [default: all]")
    parser.add_argument("--encoder", default="lite0-64", choices=["raw-28", "lite0-64"])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--shards", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--weights", type=Path, default=REPO / ".bench/lite0.safetensors")
    parser.add_argument("--work", type=Path, default=REPO / ".bench/shards")
    parser.add_argument("--ray", action="store_true",
                        help="also each union with its shards but the first on a local Ray Serve")
    args = parser.parse_args(argv)

    from PIL import Image

    from groco.index.api import IndexReader, ShardUnion

    args.work.mkdir(parents=True, exist_ok=True)
    encoder = encoders(args.work, args.weights, [args.encoder])[args.encoder]
    images = write_folder(args.work / "fmnist", "t10k", args.count)
    files = sorted(images.rglob("*.png"))
    step = max(1, len(files) // args.queries)
    picked = files[::step][:args.queries]
    queries = [Image.open(p).convert("RGB") for p in picked]
    labels = [p.parent.name for p in picked]
    one = IndexReader(index_of(images, encoder, args.work / f"index-{args.encoder}"))
    unions = {}
    for count in args.shards:
        parts = split(images, args.work / f"split-{count}", count)
        dirs = [index_of(p, encoder, args.work / f"index-{args.encoder}-{p.name}")
                for p in parts]
        unions[f"{count} shards"] = ShardUnion(dirs)
        if args.ray:
            unions[f"{count} shards, Ray Serve"] = ShardUnion(dirs, ray_address="local")

    def searches(reader):
        return lambda: [reader.search_image(q, 10) for q in queries]

    sides = {"one index": searches(one), **{name: searches(u) for name, u in unions.items()}}
    with LoadWatch() as load:
        timed = interleaved(sides, runs=args.runs, warmup=2)
    expected = [[r.relpath for r in one.search_image(q, 10)] for q in queries]
    rows = ["| search | ms / query: median (min-max) | vs one index | top-10 agreement "
            "with one index | P@10 (folder labels) |", "|---|---|---|---|---|"]
    for name, side in timed.items():
        reader = one if name == "one index" else unions[name]
        answers = [reader.search_image(q, 10) for q in queries]
        got = [[r.relpath for r in a] for a in answers]
        agree = sum(len(set(a) & set(b)) for a, b in zip(got, expected, strict=True)) / (
            10 * len(queries))
        precision = sum(r.label == label for a, label in zip(answers, labels, strict=True)
                        for r in a) / (10 * len(queries))
        ratio = "1.00x" if name == "one index" else ratio_summary(timed["one index"], side)
        rows.append(f"| {name} | {side.summary(1e3 / len(queries), 2)} | {ratio} "
                    f"(time ratio one / this) | {agree:.3f} | {100 * precision:.1f} |")
    print(header())
    print(f"Fashion-MNIST t10k ({len(files)} images), encoder {args.encoder}, index defaults; "
          f"{len(queries)} queries one after another, k = 10; {args.runs} rounds.")
    print(load.line() + "; " + threads_line() + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
