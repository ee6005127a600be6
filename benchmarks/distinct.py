"""Distinct results on planted near copies: what `groco search --distinct` hides and what
it shows instead.

    python benchmarks/distinct.py                      # 2,000 images, 100 originals x 4 copies

A Fashion-MNIST folder (the t10k split, ``--count`` images) where ``--originals`` images get
4 near copies each beside them: JPEG at quality 70, resized to 2x and to 0.75x the side
(bilinear), a crop of 0.9 x the side. Each encoder (``raw``: ``groco export --raw-pixels
28``; ``lite0``: the ImageNet EfficientNet-Lite0 at 64 px) indexes the folder; each
original is then a query, searched for k = 10 plain and distinct. Per encoder and mode:

- *copies shown*: the query's group (itself and its 4 copies) in the top 10, mean;
- *copies counted*: the ``copies`` the query's own result carries (distinct only), mean;
- *other items*: results outside the query's group, mean (the room distinct search frees);
- *P@10 others*: of those, the share with the query's label;
- *ms*: median time per query (embedding included), after 10 warm-up queries per mode.

Distinct search runs at each ``--thresholds`` value (``near_copy``; 0.97 is groco's
duplicate threshold, the one ``--distinct`` uses).
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import header  # noqa: E402
from dupes import export_encoder  # noqa: E402
from fashion_mnist import write_folder  # noqa: E402

K = 10


def plant_groups(originals: Path, out: Path, count: int, seed: int = 0) -> dict[str, str]:
    """Copy ``originals`` to ``out`` and give ``count`` of them 4 near copies each;
    returns ``{relpath: original relpath}`` for every member of a planted group."""
    shutil.copytree(originals, out, ignore=shutil.ignore_patterns(".complete"))
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    rng = np.random.default_rng(seed)
    group: dict[str, str] = {}
    for pick in rng.choice(len(files), size=count, replace=False):
        rel = files[pick]
        source = out / rel
        image = Image.open(source)
        group[rel] = rel
        for kind in ("jpeg", "up", "down", "crop"):
            target = source.with_name(f"{source.stem}-{kind}" +
                                      (".jpg" if kind == "jpeg" else ".png"))
            near_copy(image, kind).save(target, **({"quality": 70} if kind == "jpeg" else {}))
            group[target.relative_to(out).as_posix()] = rel
    return group


def near_copy(image: Image.Image, kind: str) -> Image.Image:
    """``image`` resized to 2x or 0.75x its side, or cropped to 0.9 x (``jpeg``: as is,
    saved at quality 70 by the caller)."""
    side = image.width
    if kind == "up":
        return image.resize((2 * side, 2 * side), Image.BILINEAR)
    if kind == "down":
        return image.resize((round(0.75 * side),) * 2, Image.BILINEAR)
    if kind == "crop":
        return image.crop((1, 1, 1 + round(0.9 * side), 1 + round(0.9 * side)))
    return image


def measure(reader, queries: list[Path], root: Path, group: dict[str, str],
            thresholds: list[float]) -> dict:
    rows: dict[str, dict] = {}
    for mode in ["plain", *thresholds]:
        shown, counted, others, precise, seconds = [], [], [], [], []
        for query in queries:
            rel = query.relative_to(root).as_posix()
            started = time.perf_counter()
            results = (reader.search_image(query, k=K) if mode == "plain" else
                       reader.search_vector(reader.embed_image(query), K, distinct=True,
                                            near_copy=mode))
            seconds.append(time.perf_counter() - started)
            members = [r for r in results if group.get(r.relpath) == rel]
            rest = [r for r in results if group.get(r.relpath) != rel]
            shown.append(len(members))
            counted.append(sum(r.copies for r in members))
            others.append(len(rest))
            label = rel.split("/")[0]
            precise.append(sum(r.label == label for r in rest) / max(1, len(rest)))
        rows[mode] = {"shown": np.mean(shown), "counted": np.mean(counted),
                      "others": np.mean(others), "p10": 100 * np.mean(precise),
                      "ms": 1000 * float(np.median(seconds))}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--originals", type=int, default=100)
    parser.add_argument("--encoders", nargs="+", default=["raw", "lite0"])
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.97, 0.93, 0.9],
                        help="near-copy thresholds of the distinct search (0.97: groco's)")
    parser.add_argument("--weights", type=Path, default=Path(".bench/lite0.safetensors"))
    parser.add_argument("--data-dir", type=Path, default=Path(".bench/fmnist"))
    args = parser.parse_args()

    from groco.index.api import IndexReader
    from groco.index.build import build_index_dir

    originals = write_folder(args.data_dir, "t10k", args.count)
    table = []
    with tempfile.TemporaryDirectory(prefix="groco-distinct-") as tmp:
        work = Path(tmp)
        collection = work / "collection"
        group = plant_groups(originals, collection, args.originals)
        queries = sorted(collection / rel for rel, original in group.items() if rel == original)
        for name in args.encoders:
            encoder = export_encoder(name, work, args.weights)
            index = work / f"index-{name}"
            build_index_dir(collection, encoder, index, progress=False)
            with IndexReader(index) as reader:
                measure(reader, queries[:10], collection, group, args.thresholds)  # warm-up
                rows = measure(reader, queries, collection, group, args.thresholds)
            for mode, r in rows.items():
                search = mode if mode == "plain" else f"distinct, near copy >= {mode:.2f}"
                table.append(f"| {name} | {search} | {r['shown']:.2f} | "
                             f"{r['counted']:.2f} | {r['others']:.2f} | {r['p10']:.1f} | "
                             f"{r['ms']:.1f} |")
    print(header())
    print(f"Collection: Fashion-MNIST t10k ({args.count} images) + {args.originals} originals "
          f"x 4 near copies (JPEG q70, 2x, 0.75x, 0.9 crop); each original is a query, k = {K}; "
          "post-processing as built (centre+dba3).\n")
    print("| encoder | search | copies shown (of 5) | copies counted | other items | "
          "P@10 others | ms / query |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(table))


if __name__ == "__main__":
    main()
