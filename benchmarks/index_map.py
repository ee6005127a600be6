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
meta.sqlite + a FAISS index, as `groco index build` leaves them), then `compute_map` in a
child process: wall time per step and the child's peak RSS (``VmHWM``), against the
float vectors' size (target, issue 28: 1M x 512 laid out in <= 10 min on 2 cores, peak
RSS <= 2x the vectors). Each size is mapped from scratch (no stored neighbour graph),
then again with the graph kept (its phase should take no time); ``--old REV`` also maps
with the code of commit REV (a git worktree) where ``n <= --old-max``.

Faithfulness at scale (issue 28): Fashion-MNIST's 70k images (train + test) as one
folder, indexed with the raw-pixel encoder (and ``--lite0``: the Lite0 start at 64 px),
mapped by full UMAP (the layout below 100k), by the landmark route (forced) and, with
``--old REV``, by the code of commit REV, scored like ``faithfulness``.

    python benchmarks/index_map.py faithfulness
    python benchmarks/index_map.py scale --n 100000 --dim 512 --old 4899054
    python benchmarks/index_map.py scale --n 1000000 --dim 512 --index-type Flat
    python benchmarks/index_map.py faithfulness-scale --lite0 --old 4899054

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


def encoders(work: Path, weights: Path,
             names: tuple[str, ...] | list[str] = ("raw-28", "raw-8", "lite0-64"),
             ) -> dict[str, Path]:
    """Raw pixels at 28 and 8 px and the Lite0 start at 64 px or at 96 px
    with the stride-1 stem (``lite0-96s1``, the geometry ``--geometry auto`` chooses on
    Fashion-MNIST), those of ``names`` (exported once)."""
    from groco.encoder.baselines import export_backbone, export_raw_pixels

    out = {name: work / f"{name}.onnx" for name in names}
    for size, name in ((28, "raw-28"), (8, "raw-8")):
        if name in out and not out[name].exists():
            export_raw_pixels(size, out[name])
    if "lite0-64" in out and not out["lite0-64"].exists():
        export_backbone("tf_efficientnet_lite0", 64, out["lite0-64"], weights=weights)
    if "lite0-96s1" in out and not out["lite0-96s1"].exists():
        export_backbone("tf_efficientnet_lite0", 96, out["lite0-96s1"], weights=weights,
                        small_stem=True)
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


def synthetic_index(out: Path, n: int, dim: int, clusters: int, seed: int = 0,
                    index_type: str = "auto") -> dict:
    """An index directory of ``n`` clustered unit vectors (label = cluster), shard by
    shard, then the FAISS index (``index_type``); reused when complete."""
    from groco.index import shards
    from groco.index.build import as_postprocess
    from groco.index.faiss.spec import BuildSpec
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
        log(f"{out}: {n} x {dim} written; building the {index_type} index (load {load()})")
        # no post-processing: the map reads the stored vectors, never the index's
        manifest = write_index(out, store, BuildSpec(factory=index_type),
                               postprocess=as_postprocess("none"))
    facts = {"n": n, "dim": dim, "index_type": manifest["index_type"],
             "search_params": manifest["search_params"],
             "index_build_s": time.perf_counter() - start}
    done.write_text(json.dumps(facts))
    return facts


CHILD = """
import json, os, sys, time
sys.path.insert(0, os.path.join(os.environ["GROCO_BENCH"], "benchmarks"))
from _common import memory_status
from groco.index.map import compute_map, read_map
r = compute_map(sys.argv[1], progress=True, force=True)
info = read_map(sys.argv[1]).info
print(json.dumps({"seconds": r.seconds, "timings": r.timings, "cpu": r.cpu,
                  "graph": info.get("graph") or info.get("graph_search") or {},
                  "layout": info.get("layout", "umap"), "clusters": r.clusters,
                  "load": os.getloadavg(),
                  "maxrss_kb": memory_status("VmHWM") // 1024}))
"""


def map_child(index: Path, log_path: Path, code_dir: Path = REPO) -> dict:
    """``compute_map`` of ``index`` in a fresh process running the code in ``code_dir``."""
    env = {**os.environ, "PYTHONPATH": str(code_dir), "GROCO_BENCH": str(REPO)}
    with open(log_path, "w") as err:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(index)], cwd=code_dir,
                                 stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        stdout, _ = child.communicate()
    if child.returncode:
        raise SystemExit(f"map of {index} failed: see {log_path}")
    return json.loads(stdout.strip().splitlines()[-1])


def old_worktree(rev: str) -> Path:
    """A git worktree of ``rev`` (the previous code path), made once."""
    path = Path(f"/tmp/groco-{rev}")
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=REPO,
                       check=True, capture_output=True)
    return path


def scale(args: argparse.Namespace) -> None:
    import shutil

    lines = [header(), f"Load average before: {load()}", "",
             "| vectors | dim | code | graph (cells / probes / recall@k) | k-NN graph s "
             "| clusters s | layout s | total s | CPU s (graph / clusters / layout) "
             "| load avg after | peak RSS GB | vectors GB | RSS / vectors | import-only RSS GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = subprocess.run([sys.executable, "-c", "import faiss, umap, groco.index.map; "
                           "from _common import memory_status; "
                           "print(memory_status('VmHWM') // 1024)"],
                          capture_output=True, text=True, check=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'benchmarks'}"})
    import_gb = int(base.stdout.split()[-1]) / 2**20
    for n in args.n:
        kind = "" if args.index_type == "auto" else "-" + args.index_type.replace(",", "_")
        out = args.work / f"synthetic-{n}-{args.dim}{kind}"
        facts = synthetic_index(out, n, args.dim, clusters=max(10, n // 2000),
                                index_type=args.index_type)
        runs = [("this", REPO, True), ("this, graph kept", REPO, False)]
        if args.old and n <= args.old_max:
            runs.append((f"previous ({args.old})", old_worktree(args.old), True))
        for name, code, fresh in runs:
            if fresh:
                shutil.rmtree(out / "neighbours", ignore_errors=True)
            log(f"mapping {n} x {args.dim} ({facts['index_type']}) with {name}, load {load()}")
            result = map_child(out, args.work / f"map-{n}-{name.split()[0]}.log", code)
            peak_gb = result["maxrss_kb"] / 2**20
            vec_gb = n * args.dim * 4 / 2**30
            t, c = result["timings"], result["cpu"]
            cpu = " / ".join(f"{c[key]:.0f}" for key in ("k-NN graph", "clusters", "layout"))
            g = result["graph"]
            graph = (f"{g.get('cells')} / {g.get('probes')} / {g.get('recall')}" if "cells" in g
                     else f"{facts['index_type']} search " + ", ".join(
                         f"{k} {v:g}" for k, v in g.items() if "recall" not in k))
            lines.append(f"| {n:,} | {args.dim} | {name}, layout {result['layout']} | {graph} "
                         f"| {t['k-NN graph']:.1f} | {t['clusters']:.0f} | {t['layout']:.0f} "
                         f"| {result['seconds']:.0f} | {cpu} | {result['load'][0]:.1f} "
                         f"| {peak_gb:.2f} | {vec_gb:.2f} | {peak_gb / vec_gb:.2f} "
                         f"| {import_gb:.2f} |")
            log(lines[-1])
    lines.append(f"\nLoad average after: {load()}")
    print("\n".join(lines))


def fmnist_70k(root: Path) -> Path:
    """Fashion-MNIST's train and test images in one folder of class subfolders."""
    from fashion_mnist import CLASSES, read_idx
    from PIL import Image

    folder = root / "fmnist-70000"
    if (folder / ".complete").exists():
        return folder
    for split in ("train", "t10k"):
        images, labels = read_idx(split)
        for c in CLASSES:
            (folder / c).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            Image.fromarray(image).save(folder / CLASSES[label] / f"{split}-{i:05d}.png")
    (folder / ".complete").write_text("ok\n")
    return folder


def faithfulness_scale(args: argparse.Namespace) -> None:
    from groco.index import shards
    from groco.index.build import build_index_dir
    from groco.index.map import compute_map, read_map
    from groco.index.store import DB_NAME, Store
    from groco.knn import class_indices

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    encs = encoders(work, args.weights)
    images = fmnist_70k(work)
    lines = [header(), f"Load average before: {load()}", "",
             f"| collection | encoder | items | k-NN {K} full | layout | k-NN {K} 2D "
             "| 2D / full | layout s | map s |", "|---|---|---|---|---|---|---|---|---|"]
    for enc in ["raw-28", *(["lite0-64"] if args.lite0 else [])]:
        index = work / f"index-fmnist70k-{enc}"
        if not (index / "manifest.json").exists():
            log(f"indexing 70k with {enc}")
            build_index_dir(images, encs[enc], index, progress=True)
        with Store(index / DB_NAME, readonly=True) as store:
            ids, numbers, rows = store.embedded_locations()
        vectors = shards.gather(index, numbers, rows)
        full = None
        routes: list[tuple[str, int | None]] = [("full UMAP", None), ("landmarks", 0)]
        if args.old:
            routes.insert(0, (f"previous ({args.old}): full UMAP", -1))
        for route, above in routes:
            log(f"{enc}: {route}")
            if above == -1:  # the previous code, in its own process
                result = map_child(index, work / f"map-70k-{enc}-previous.log",
                                   old_worktree(args.old))
                seconds, layout_s = result["seconds"], result["timings"]["layout"]
            else:
                report = compute_map(index, progress=False, force=True, landmarks_above=above)
                seconds, layout_s = report.seconds, report.timings["layout"]
            data = read_map(index)
            _, labels = class_indices(data.labels())
            if full is None:
                full = majority_knn_loo(vectors, labels)
            flat = majority_knn_loo(data.xy, labels)
            lines.append(f"| Fashion-MNIST 70k | {enc} | {len(ids):,} | {full:.4f} | {route} "
                         f"| {flat:.4f} | {flat / full:.3f} | {layout_s:.0f} | {seconds:.0f} |")
            log(lines[-1])
    lines.append(f"\nLoad average after: {load()}")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    f = sub.add_parser("faithfulness")
    f.add_argument("--fmnist-count", type=int, default=None,
                   help="balanced subset of the 10k test split [default: all]")
    s = sub.add_parser("scale")
    s.add_argument("--n", type=int, nargs="+", default=[100_000])
    s.add_argument("--dim", type=int, default=512)
    s.add_argument("--index-type", default="auto", help="FAISS factory string or auto")
    s.add_argument("--old", default=None, help="also map with the code of this git revision")
    s.add_argument("--old-max", type=int, default=100_000,
                   help="largest n mapped with --old's code")
    fs = sub.add_parser("faithfulness-scale")
    fs.add_argument("--lite0", action="store_true", help="also the Lite0 start at 64 px")
    fs.add_argument("--old", default=None, help="also map with the code of this git revision")
    for p in (f, fs):
        p.add_argument("--weights", type=Path, default=REPO / ".bench/lite0.safetensors")
    for p in (f, s, fs):
        p.add_argument("--work", type=Path, default=REPO / ".bench/map")
    args = parser.parse_args()
    {"faithfulness": faithfulness, "scale": scale,
     "faithfulness-scale": faithfulness_scale}[args.what](args)


if __name__ == "__main__":
    main()
