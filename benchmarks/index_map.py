"""The embedding map (`groco index map`): how faithful it is, and what it costs.

Faithfulness: Fashion-MNIST (the 10k test split, balanced, as an image folder) and
scikit-learn's digits (1797 8x8 images), each indexed with two baseline encoders (raw
pixels; the ImageNet EfficientNet-Lite0 start at 64 px), mapped, and scored by the
leave-one-out k-NN accuracy of the 2D coordinates beside that of the full embeddings,
with one rule for both: the majority label of the k nearest other items (exact search,
Euclidean; on unit embeddings that is the cosine order), k = 10. The project's usual
weighted k-NN (k = 20, T = 0.07, cosine) of the embeddings is printed beside it.
Target (issue 17): 2D k-NN >= 0.8 x the embeddings' on Fashion-MNIST.

Scale: synthetic clustered unit vectors written as an index directory (shards +
meta.sqlite + the auto FAISS index, as `groco index build` leaves them), then
`compute_map` in a child process: wall time per step and the child's peak RSS
(``ru_maxrss``), against the float vectors' size (target: 1M laid out in <= 15 min on 2
cores, peak RSS <= 2x the vectors).

    python benchmarks/index_map.py faithfulness
    python benchmarks/index_map.py scale --n 100000 --dim 512

Run heavy jobs under ``nice -n 10``; the load average before and after is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402
from fashion_mnist import write_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
K = 10


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------- faithfulness


def majority_knn_loo(x: np.ndarray, labels: np.ndarray, k: int = K) -> float:
    """Leave-one-out accuracy of the majority label of the ``k`` nearest other rows
    (exact Euclidean search; ties to the smallest label)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, found = index.search(x, k + 1)
    own = found == np.arange(len(x))[:, None]
    # drop the item itself (or the farthest hit when a tie put it elsewhere)
    drop = np.where(own.any(1), own.argmax(1), k)
    keep = np.ones_like(found, dtype=bool)
    keep[np.arange(len(x)), drop] = False
    neighbours = found[keep].reshape(len(x), k)
    classes = int(labels.max()) + 1
    votes = np.zeros((len(x), classes), dtype=np.int64)
    np.add.at(votes, (np.arange(len(x))[:, None], labels[neighbours]), 1)
    return float((votes.argmax(1) == labels).mean())


def digits_folder(root: Path) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = root / "digits"
    if (folder / ".complete").exists():
        return folder
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    for i, (image, label) in enumerate(zip(images, digits.target, strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / str(label) / f"{i:04d}.png")
    (folder / ".complete").write_text("ok\n")
    return folder


def encoders(work: Path, weights: Path) -> dict[str, Path]:
    """Raw pixels at 28 and 8 px and the Lite0 start at 64 px (exported once)."""
    from groco.encoder.baselines import export_backbone, export_raw_pixels

    out = {"raw-28": work / "raw-28.onnx", "raw-8": work / "raw-8.onnx",
           "lite0-64": work / "lite0-64.onnx"}
    for size, name in ((28, "raw-28"), (8, "raw-8")):
        if not out[name].exists():
            export_raw_pixels(size, out[name])
    if not out["lite0-64"].exists():
        export_backbone("tf_efficientnet_lite0", 64, out["lite0-64"], weights=weights)
    return out


def faithfulness_row(images: Path, encoder: Path, index: Path) -> dict[str, object]:
    from groco.index import shards
    from groco.index.build import build_index_dir
    from groco.index.map import compute_map, read_map
    from groco.index.store import DB_NAME, Store
    from groco.knn import class_indices, weighted_knn_predict

    start = time.perf_counter()
    build_index_dir(images, encoder, index, progress=False)
    build_s = time.perf_counter() - start
    report = compute_map(index, progress=False)
    data = read_map(index)
    with Store(index / DB_NAME, readonly=True) as store:
        ids, numbers, rows = store.embedded_locations()
    assert (ids == data.ids).all()
    vectors = shards.gather(index, numbers, rows)
    _, labels = class_indices(data.labels())
    full = majority_knn_loo(vectors, labels)
    flat = majority_knn_loo(data.xy, labels)
    weighted = float((weighted_knn_predict(vectors, labels, vectors, k=20, temperature=0.07,
                                           exclude_self=True) == labels).mean())
    return {"n": len(ids), "dim": vectors.shape[1], "full": full, "map": flat,
            "ratio": flat / full, "weighted": weighted, "map_s": report.seconds,
            "build_s": build_s, "clusters": report.clusters}


def faithfulness(args: argparse.Namespace) -> None:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    log(f"load average {load()}")
    encs = encoders(work, args.weights)
    sets = {"Fashion-MNIST t10k": (write_folder(work / "fmnist", "t10k", args.fmnist_count),
                                   ("raw-28", "lite0-64")),
            "digits": (digits_folder(work), ("raw-8", "lite0-64"))}
    lines = [header(), f"Load average before: {load()}", "",
             f"| collection | encoder | items | dim | k-NN {K} full | k-NN {K} 2D | 2D / full "
             "| weighted k-NN 20 full | map s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, (images, names) in sets.items():
        for enc in names:
            log(f"{name} with {enc}")
            index = work / f"index-{images.name}-{enc}"
            row = faithfulness_row(images, encs[enc], index)
            lines.append(f"| {name} | {enc} | {row['n']} | {row['dim']} | {row['full']:.4f} "
                         f"| {row['map']:.4f} | {row['ratio']:.3f} | {row['weighted']:.4f} "
                         f"| {row['map_s']:.1f} |")
            log(lines[-1])
    lines.append(f"\nLoad average after: {load()}")
    print("\n".join(lines))


# ----------------------------------------------------------------------------- scale


def synthetic_index(out: Path, n: int, dim: int, clusters: int, seed: int = 0) -> dict:
    """An index directory of ``n`` clustered unit vectors (label = cluster), shard by
    shard, then the auto FAISS index; reused when complete."""
    from groco.index import shards
    from groco.index.indexfile import write_index
    from groco.index.store import EMBEDDED, FileRow, Store

    done = out / "synthetic.json"
    if done.exists():
        return json.loads(done.read_text())
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    shard_size = 10_000
    start = time.perf_counter()
    with Store(out / "meta.sqlite") as store:
        store.set_info({"images_root": "/synthetic", "encoder_hash": "synthetic",
                        "encoder_path": "/synthetic/encoder.onnx", "encoder_backbone": "none",
                        "image_size": 1, "dim": dim})
        for number, lo in enumerate(range(0, n, shard_size), 1):
            ids = np.arange(lo, min(n, lo + shard_size))
            label = rng.integers(0, clusters, len(ids))
            x = centres[label] + rng.standard_normal((len(ids), dim), dtype=np.float32) * \
                np.float32(1.2 / np.sqrt(dim))
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            shards.write_shard(out, number, ids, x)
            store.commit(FileRow(int(i), f"c{c:03d}/{i:07d}.png", 1000, 0, f"{i:016x}",
                                 f"c{c:03d}", EMBEDDED, number, int(i - lo))
                         for i, c in zip(ids, label, strict=True))
        log(f"{out}: {n} x {dim} written; building the auto index (load {load()})")
        manifest = write_index(out, store)
    facts = {"n": n, "dim": dim, "index_type": manifest["index_type"],
             "search_params": manifest["search_params"],
             "index_build_s": time.perf_counter() - start}
    done.write_text(json.dumps(facts))
    return facts


CHILD = """
import json, sys, time
from groco.index.map import compute_map
r = compute_map(sys.argv[1], progress=True, force=True)
import resource
from groco.index.map import read_map
graph = read_map(sys.argv[1]).info.get("graph_search", {})
print(json.dumps({"seconds": r.seconds, "timings": r.timings, "cpu": r.cpu,
                  "graph_search": {k: v for k, v in graph.items() if "recall" not in k},
                  "clusters": r.clusters, "load": __import__("os").getloadavg(),
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def scale(args: argparse.Namespace) -> None:
    lines = [header(), f"Load average before: {load()}", "",
             "| vectors | dim | index | k-NN graph s | clusters s | layout s | total s "
             "| CPU s (graph / clusters / layout) | load avg after | peak RSS GB | vectors GB "
             "| RSS / vectors | import-only RSS GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = subprocess.run([sys.executable, "-c", "import resource, faiss, umap, "
                           "groco.index.map; print(resource.getrusage("
                           "resource.RUSAGE_SELF).ru_maxrss)"],
                          capture_output=True, text=True, check=True, cwd=REPO)
    import_gb = int(base.stdout.split()[-1]) / 2**20
    for n in args.n:
        out = args.work / f"synthetic-{n}-{args.dim}"
        facts = synthetic_index(out, n, args.dim, clusters=max(10, n // 2000))
        log(f"mapping {n} x {args.dim} ({facts['index_type']}), load {load()}")
        with open(args.work / f"map-{n}.log", "w") as err:
            child = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=err, text=True)
            stdout, _ = child.communicate()
        if child.returncode:
            raise SystemExit(f"map of {n} failed: see {args.work / f'map-{n}.log'}")
        result = json.loads(stdout.strip().splitlines()[-1])
        peak_gb = result["maxrss_kb"] / 2**20
        vec_gb = n * args.dim * 4 / 2**30
        t, c = result["timings"], result["cpu"]
        cpu = " / ".join(f"{c[key]:.0f}" for key in ("k-NN graph", "clusters", "layout"))
        search = ", ".join(f"{k} {v:g}" for k, v in result["graph_search"].items())
        index_type = f"{facts['index_type']} ({search or 'exact'})"
        lines.append(f"| {n:,} | {args.dim} | {index_type} | {t['k-NN graph']:.0f} "
                     f"| {t['clusters']:.0f} | {t['layout']:.0f} | {result['seconds']:.0f} "
                     f"| {cpu} | {result['load'][0]:.1f} | {peak_gb:.2f} | {vec_gb:.2f} "
                     f"| {peak_gb / vec_gb:.2f} "
                     f"| {import_gb:.2f} |")
        log(lines[-1])
    lines.append(f"\nLoad average after: {load()}")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    f = sub.add_parser("faithfulness")
    f.add_argument("--fmnist-count", type=int, default=None,
                   help="balanced subset of the 10k test split [default: all]")
    f.add_argument("--weights", type=Path, default=REPO / ".bench/lite0.safetensors")
    s = sub.add_parser("scale")
    s.add_argument("--n", type=int, nargs="+", default=[100_000])
    s.add_argument("--dim", type=int, default=512)
    for p in (f, s):
        p.add_argument("--work", type=Path, default=REPO / ".bench/map")
    args = parser.parse_args()
    faithfulness(args) if args.what == "faithfulness" else scale(args)


if __name__ == "__main__":
    main()
