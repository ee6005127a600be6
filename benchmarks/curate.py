"""Curation (`groco index curate`): planted outliers found, and how well a sample covers.

Outliers: Fashion-MNIST's 10k test images as a folder, plus 1 % planted outliers (100
images: 50 of scikit-learn's digits, resized from 8 to 28 px, and 50 of uniform noise),
indexed with raw pixels at 28 px and the ImageNet Lite0 start at 64 px. For each outlier
score, the share of the planted images among the top 100 (= the top 1 %).

Beside the scores, the *bound* any distance-to-the-collection score meets: the planted
share of the top 1 % by the distance to the 16th nearest clean image (it knows which images
are planted; no score does). Planted images that resemble the collection more than its own
odd images do cannot be ranked first by distance.

Held-out class: for each Fashion-MNIST class in turn, the 9,000 test images of the other
nine classes plus 90 images of that class from the train split (1 %: a coherent group of
strays, as a folder of screenshots among photos), embedded once, scored from an exact
16-NN graph in memory. The table gives the planted share of the top 1 %, mean and worst
over the ten classes.

Sample: the same 10k images without the planted ones. For 100 and 1,000 picks and 10
seeds: the classes covered and the coverage radius (largest cosine distance from any item
to its nearest pick) of groco's sample (greedy k-centre) and of a uniform random sample
with the same seed; the table gives the seeds covering all 10 classes and the median
radius.

    python benchmarks/curate.py
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, index_of  # noqa: E402
from fashion_mnist import CLASSES, read_idx, write_folder  # noqa: E402
from index_map import encoders  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PLANTED = 100


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def planted_folder(root: Path, clean: Path, count: int | None) -> Path:
    """``clean`` plus ``planted/`` (half digits, half noise); reused when complete."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = root / f"fmnist-planted-{count or 'all'}"
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(clean, folder, ignore=shutil.ignore_patterns(".complete"))
    (folder / "planted").mkdir()
    rng = np.random.default_rng(0)
    digits = load_digits().images
    for i, d in enumerate(digits[rng.choice(len(digits), PLANTED // 2, replace=False)]):
        image = Image.fromarray((d * (255 / 16)).round().astype(np.uint8))
        image.resize((28, 28), Image.BILINEAR).save(folder / "planted" / f"digit-{i:03d}.png")
    for i in range(PLANTED - PLANTED // 2):
        noise = rng.integers(0, 256, (28, 28), dtype=np.uint8)
        Image.fromarray(noise).save(folder / "planted" / f"noise-{i:03d}.png")
    (folder / ".complete").write_text("ok\n")
    return folder


def outlier_rows(index: Path) -> list[str]:
    from groco.index.curate import SCORES, find_outliers

    rows = []
    for score in SCORES:
        start = time.perf_counter()
        found = find_outliers(index, PLANTED, score)
        seconds = time.perf_counter() - start
        digits = sum(f.relpath.startswith("planted/digit") for f in found)
        noise = sum(f.relpath.startswith("planted/noise") for f in found)
        rows.append(f"{score} | {(digits + noise) / PLANTED:.2f} | {digits}/{PLANTED // 2} "
                    f"| {noise}/{PLANTED - PLANTED // 2} | {seconds:.2f}")
    return rows


def stored_vectors(index: Path) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors, relpaths) of an index's embedded items, ordered by id."""
    from groco.index import shards
    from groco.index.store import DB_NAME, Store

    with Store(index / DB_NAME, readonly=True) as store:
        ids, numbers, rows = store.embedded_locations()
        by_id = store.rows(ids.tolist())
    paths = np.array([by_id[int(i)].path for i in ids])
    return shards.gather(index, numbers, rows).astype(np.float32), paths


def exact_graph(x: np.ndarray, k: int = 16):
    from groco.index.neighbours import NeighbourGraph

    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    order = np.argpartition(-s, k, axis=1)[:, :k]
    part = np.take_along_axis(s, order, 1)
    by = np.argsort(-part, axis=1)
    order, part = np.take_along_axis(order, by, 1), np.take_along_axis(part, by, 1)
    return NeighbourGraph(np.arange(len(x)), order, part)


def scores_of(x: np.ndarray) -> dict[str, np.ndarray]:
    from groco.index.curate import SCORES, outlier_scores
    from groco.index.curate.outliers import global_scores

    graph = exact_graph(x)
    return {s: global_scores(len(x), lambda r: x[r]) if s == "global"
            else outlier_scores(graph, s) for s in SCORES}


def bound_row(index: Path) -> str:
    """The planted share of the top 1 % by the distance to the 16th nearest clean image."""
    x, paths = stored_vectors(index)
    planted = np.char.startswith(paths, "planted/")
    s = x @ x[~planted].T
    s[np.flatnonzero(~planted), np.arange((~planted).sum())] = -np.inf
    kth = -np.partition(-s, 15, axis=1)[:, 15]
    top = np.argsort(kth)[:PLANTED]
    digits = int(np.char.startswith(paths[top], "planted/digit").sum())
    noise = int(np.char.startswith(paths[top], "planted/noise").sum())
    return (f"bound (knows the planted) | {(digits + noise) / PLANTED:.2f} | "
            f"{digits}/{PLANTED // 2} | {noise}/{PLANTED - PLANTED // 2} | - ")


def held_out_rows(encoder: Path, clean_index: Path, per_class: int = 90) -> list[str]:
    """Per score: mean and worst planted share of the top 1 % over the ten classes."""
    from PIL import Image

    from groco.encoder.runtime import Encoder

    x, paths = stored_vectors(clean_index)
    labels = np.array([CLASSES.index(p.split("/")[0]) for p in paths])
    images, train_labels = read_idx("train")
    rng = np.random.default_rng(0)
    picks = np.concatenate([rng.choice(np.flatnonzero(train_labels == c), per_class,
                                       replace=False) for c in range(len(CLASSES))])
    strays = Encoder(encoder).embed([Image.fromarray(images[i]) for i in picks])
    stray_labels = train_labels[picks]
    found: dict[str, list[float]] = {}
    for c in range(len(CLASSES)):
        collection = np.concatenate([x[labels != c], strays[stray_labels == c]])
        planted = np.arange(len(collection)) >= (labels != c).sum()
        for score, values in scores_of(collection).items():
            top = np.argsort(-values, kind="stable")[:per_class]
            found.setdefault(score, []).append(float(planted[top].mean()))
    return [f"{score} | {np.mean(v):.2f} | {min(v):.2f} ({CLASSES[int(np.argmin(v))]})"
            for score, v in found.items()]


def sample_rows(index: Path, sizes: list[int], seeds: int) -> list[str]:
    from groco.index import shards
    from groco.index.curate import coverage, k_centre, random_sample
    from groco.index.store import DB_NAME, Store

    with Store(index / DB_NAME, readonly=True) as store:
        ids, numbers, rows_ = store.embedded_locations()
        by_id = store.rows(ids.tolist())
    labels = np.array([by_id[int(i)].label for i in ids])
    classes = len(set(labels))
    vectors = shards.gather(index, numbers, rows_)
    out = []
    for size in sizes:
        groco_cov, groco_r, rand_cov, rand_r, seconds = [], [], [], [], []
        for seed in range(seeds):
            start = time.perf_counter()
            picks, _, radius = k_centre(vectors, size, seed)
            seconds.append(time.perf_counter() - start)
            groco_cov.append(len(set(labels[picks])))
            groco_r.append(radius)
            rand = random_sample(len(ids), size, seed)
            rand_cov.append(len(set(labels[rand])))
            rand_r.append(coverage(vectors, rand))
        out.append(f"{size} | {sum(c == classes for c in groco_cov)}/{seeds} "
                   f"| {sum(c == classes for c in rand_cov)}/{seeds} "
                   f"| {min(groco_cov)}-{max(groco_cov)} | {min(rand_cov)}-{max(rand_cov)} "
                   f"| {np.median(groco_r):.4f} | {np.median(rand_r):.4f} "
                   f"| {sum(g < np.median(rand_r) for g in groco_r)}/{seeds} "
                   f"| {np.median(seconds):.2f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=None,
                        help="balanced subset of the 10k test split [default: all]")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--encoders", nargs="+", default=["raw-28", "lite0-64"])
    parser.add_argument("--weights", type=Path, default=REPO / ".bench/lite0.safetensors")
    parser.add_argument("--work", type=Path, default=REPO / ".bench/curate")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    encs = encoders(args.work, args.weights, args.encoders)
    clean = write_folder(args.work / "fmnist", "t10k", args.count)
    planted = planted_folder(args.work, clean, args.count)
    outliers = ["| encoder | score | planted in the top 1 % | digits | noise | seconds |",
                "|---|---|---|---|---|---|"]
    held_out = ["| encoder | score | held-out class in the top 1 %: mean | worst (class) |",
                "|---|---|---|---|"]
    samples = ["| encoder | picks | all classes: groco | all classes: random "
               "| classes: groco | classes: random | radius: groco (median) "
               "| radius: random (median) | groco below random's median | seconds a sample |",
               "|---|---|---|---|---|---|---|---|---|---|"]
    for enc in args.encoders:
        log(f"{enc}: outliers")
        index = index_of(planted, encs[enc], args.work / f"index-planted-{enc}")
        outliers += [f"| {enc} | {row} |" for row in [*outlier_rows(index), bound_row(index)]]
        log(outliers[-1])
        index = index_of(clean, encs[enc], args.work / f"index-clean-{enc}")
        log(f"{enc}: held-out classes")
        held_out += [f"| {enc} | {row} |" for row in held_out_rows(encs[enc], index)]
        log(held_out[-1])
        log(f"{enc}: samples")
        samples += [f"| {enc} | {row} |" for row in sample_rows(index, args.sizes, args.seeds)]
        log(samples[-1])
    print(header())
    print(f"Fashion-MNIST t10k ({clean.name}); planted: {PLANTED} images "
          f"({PLANTED // 2} digits, {PLANTED - PLANTED // 2} noise); {args.seeds} seeds.\n")
    print("\n".join(outliers))
    print()
    print("\n".join(held_out))
    print()
    print("\n".join(samples))


if __name__ == "__main__":
    main()
