"""Benchmark ``groco index dupes``: group quality on planted copies, and time / peak RSS at scale.

``quality``: a real collection (the Fashion-MNIST test split, 10,000 images written as a
folder) with planted copies of distinct originals, ``--copies`` of each kind:

- ``exact``: the same bytes under another name;
- ``jpeg``: re-encoded as JPEG at quality 70;
- ``resize``: resized (bilinear), half of them up to 2x, half down to 0.75x the side;
- ``crop``: a crop of 0.9 x the side (81 % of the area) at a random offset; the encoder
  resizes it back.

``--size 28`` plants into the images as they are (28 x 28: a JPEG block is a third of
the image, a harsh case); ``--size 112`` first resizes every original to 112 px
(bicubic), closer to photos that are larger than the encoder's input.

Each encoder (``raw``: ``groco export --raw-pixels 28``; ``lite0``: the ImageNet
EfficientNet-Lite0 at 64 px, ``groco export --backbone tf_efficientnet_lite0 --weights``)
indexes the folder with ``groco index build``; one :func:`scan_duplicates` at the lowest
threshold is regrouped at each threshold. Truth: each planted copy with its original,
plus originals whose pixels are identical (Fashion-MNIST has some). Figures, by threshold:

- *found* per kind: planted copies in the same group as their original;
- pair precision / recall: over the pairs of files sharing a predicted group, against
  the pairs sharing a true cluster. Fashion-MNIST also holds near-identical originals
  that are not in the truth (the same product photographed alike); they count as false
  positives, so precision is a lower bound;
- groups, files in groups, largest group.

``scale``: synthetic unit vectors (the clustered model of ``benchmarks/index.py``,
``--dim`` 384) with planted near copies (1 % of the vectors get a copy at cosine ~0.98:
``normalize(x + e)``) and exact copies (0.2 %: the same vector and content hash), written
as an index directory (shards, ``meta.sqlite``, the ``auto`` FAISS index by
``write_index``, or ``--index-type``), then :func:`find_duplicate_groups` at the default
threshold, each in a fresh process: wall time, CPU time, peak RSS (``VmHWM``), the
planted pairs found (recall) and the pair precision of the groups (planted pairs found
over all pairs sharing a group). Rows, in one run: the search route (every stored vector
searched in the index, batch by batch: the code path before the stored neighbour graph;
``--no-search`` skips it), the graph built and stored (no graph in the directory before),
and the graph kept (a second ``dupes``: its graph phase takes no time). ``--threads``
OpenMP threads each (default: every core).

Run from the repository root (heavy: ``nice -n 10``):
    .venv/bin/python benchmarks/dupes.py quality
    .venv/bin/python benchmarks/dupes.py scale --n 100000 --n 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402
from fashion_mnist import write_folder  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KINDS = ("exact", "jpeg", "resize", "crop")
NEAR_NOISE = 0.2
"""Norm of the noise added to a synthetic near copy: cosine ~ 1 / sqrt(1 + 0.04) = 0.98."""
CROP_SIDE = 0.9
"""Side of the ``crop`` copies as a fraction of the original's (81 % of the area)."""
TARGET_PRECISION = 0.95
"""The default threshold is the lowest one whose groups reach this pair precision."""
THRESHOLDS = (0.80, 0.85, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def groco(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "groco.cli", *args], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)


# ----------------------------------------------------------------------------- quality


def plant(originals: Path, out: Path, copies: int, size: int = 28,
          seed: int = 0) -> dict[str, tuple[str, str]]:
    """Copy ``originals`` to ``out`` (resized to ``size`` px, bicubic, unless 28) and plant
    ``copies`` copies of each kind, each of another original; returns ``{copy relpath:
    (kind, original relpath)}``."""
    done = out / "planted.json"
    if done.exists():
        return {k: tuple(v) for k, v in json.loads(done.read_text()).items()}
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(originals, out, ignore=shutil.ignore_patterns(".complete"))
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    if size != 28:
        for rel in files:
            Image.open(out / rel).resize((size, size), Image.BICUBIC).save(out / rel)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(files), size=copies * len(KINDS), replace=False)
    planted = {}
    for n, pick in enumerate(chosen):
        kind, rel = KINDS[n // copies], files[pick]
        source = out / rel
        image = Image.open(source)
        stem = source.with_name(f"{source.stem}-{kind}")
        target = stem.with_suffix(".jpg" if kind == "jpeg" else ".png")
        if kind == "exact":
            shutil.copyfile(source, target)
        elif kind == "jpeg":
            image.save(target, quality=70)
        elif kind == "resize":
            side = round(size * (2 if n % 2 else 0.75))
            image.resize((side, side), Image.BILINEAR).save(target)
        else:
            side = round(size * CROP_SIDE)
            x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
            image.crop((x, y, x + side, y + side)).save(target)
        planted[target.relative_to(out).as_posix()] = (kind, rel)
    done.write_text(json.dumps(planted, indent=1))
    return planted


def truth_clusters(root: Path, planted: dict[str, tuple[str, str]]) -> dict[str, int]:
    """``{relpath: cluster}`` for files with a true copy: planted pairs, and originals
    with identical pixels."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    by_pixels: dict[bytes, str] = {}
    for path in sorted(root.rglob("*.png")):
        rel = path.relative_to(root).as_posix()
        if rel in planted:
            continue
        key = np.asarray(Image.open(path)).tobytes()
        if key in by_pixels:
            union(rel, by_pixels[key])
        else:
            by_pixels[key] = rel
    for copy, (_, original) in planted.items():
        union(copy, original)
    clusters = {x: find(x) for x in list(parent)}
    sizes: dict[str, int] = {}
    for c in clusters.values():
        sizes[c] = sizes.get(c, 0) + 1
    names = {c: n for n, c in enumerate(sorted(c for c, s in sizes.items() if s > 1))}
    return {x: names[c] for x, c in clusters.items() if sizes[c] > 1}


def pairs_within(labels: dict[str, int]) -> int:
    counts = np.bincount(np.fromiter(labels.values(), dtype=np.int64)) if labels else []
    return int(sum(c * (c - 1) // 2 for c in counts))


def score_groups(groups, truth: dict[str, int], planted) -> dict[str, object]:
    predicted = {f.relpath: n for n, g in enumerate(groups) for f in g.files}
    both: dict[tuple[int, int], int] = {}
    for rel, group in predicted.items():
        if rel in truth:
            key = (group, truth[rel])
            both[key] = both.get(key, 0) + 1
    true_positive = sum(c * (c - 1) // 2 for c in both.values())
    predicted_pairs, true_pairs = pairs_within(predicted), pairs_within(truth)
    found = {kind: 0 for kind in KINDS}
    for copy, (kind, original) in planted.items():
        if copy in predicted and predicted.get(original) == predicted[copy]:
            found[kind] += 1
    precision = true_positive / predicted_pairs if predicted_pairs else 1.0
    recall = true_positive / true_pairs if true_pairs else 1.0
    return {"found": found, "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "groups": len(groups), "files": len(predicted),
            "largest": max((g.size for g in groups), default=0)}


def export_encoder(name: str, work: Path, weights: Path) -> Path:
    out = work / f"{name}.onnx"
    if out.exists():
        return out
    if name == "raw":
        groco("export", "--raw-pixels", "28", "--out", str(out))
    elif name == "lite0":
        if not weights.exists():
            subprocess.run([sys.executable, "benchmarks/pretrained_weights.py", "--out",
                            str(weights)], check=True, cwd=REPO)
        groco("export", "--backbone", "tf_efficientnet_lite0", "--image-size", "64",
              "--weights", str(weights), "--out", str(out))
    else:
        raise SystemExit(f"unknown encoder {name!r} (raw, lite0)")
    return out


def quality(args: argparse.Namespace) -> None:
    from groco.index.build import build_index_dir
    from groco.index.dupes import scan_duplicates

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    originals = write_folder(work / "fmnist", "t10k", args.count)
    collection = work / f"planted-{args.count}-{args.copies}-{args.size}px"
    planted = plant(originals, collection, args.copies, args.size)
    truth = truth_clusters(collection, planted)
    natural = len(truth) - 2 * len(planted)
    log(f"{collection}: {len(planted)} planted copies, {natural} extra files in clusters of "
        "pixel-identical originals")
    lines = [f"Collection: Fashion-MNIST t10k ({args.count} images at {args.size} px) + "
             f"{len(planted)} planted "
             f"copies ({args.copies} each: {', '.join(KINDS)}); truth: {len(truth)} files in "
             f"{len(set(truth.values()))} clusters (incl. pixel-identical originals).", ""]
    notes = []
    for name in args.encoders:
        encoder = export_encoder(name, work, args.weights)
        index = work / f"index-{name}-{args.count}-{args.copies}-{args.size}px"
        build_index_dir(collection, encoder, index, progress=False)
        start = time.perf_counter()
        scan = scan_duplicates(index, min(args.thresholds))
        scan_s = time.perf_counter() - start
        lines += [f"Encoder `{name}` ({encoder.name}): scan at floor {min(args.thresholds):.2f} "
                  f"{scan_s:.2f} s, {scan.pairs} candidate pairs.", "",
                  "| linkage | threshold | exact | jpeg | resize | crop | pair precision | "
                  "pair recall | F1 | groups | files in groups | largest | grouping ms |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for linkage in args.linkages:
            precise = []
            for t in sorted(args.thresholds):
                start = time.perf_counter()
                groups = scan.groups(t, linkage=linkage)
                group_ms = (time.perf_counter() - start) * 1000
                s = score_groups(groups, truth, planted)
                found = " | ".join(f"{s['found'][k]}/{args.copies}" for k in KINDS)
                lines.append(f"| {linkage} | {t:.2f} | {found} | {s['precision']:.3f} | "
                             f"{s['recall']:.3f} | {s['f1']:.3f} | {s['groups']} | "
                             f"{s['files']} | {s['largest']} | {group_ms:.0f} |")
                log(f"{name} {linkage} t={t:.2f}: {found} P={s['precision']:.3f} "
                    f"R={s['recall']:.3f} ({group_ms:.0f} ms)")
                if s["precision"] >= TARGET_PRECISION:
                    precise.append(t)
            notes.append(f"`{name}` {linkage}: lowest threshold with pair precision >= "
                         f"{TARGET_PRECISION}: {min(precise) if precise else 'none'}")
        lines.append("")
    lines += ["", *[f"- {note}" for note in notes]]
    print(header())
    print("\n".join(lines))


# ----------------------------------------------------------------------------- scale


def write_synthetic_index(out: Path, n: int, dim: int, index_type: str = "auto",
                          seed: int = 0) -> dict[str, object]:
    """An index directory of ``n`` synthetic vectors with planted copies (module doc);
    returns the planted pairs' facts. Reused when complete."""
    from index import make_world, sample  # benchmarks/index.py

    from groco.index import shards
    from groco.index.build import as_postprocess
    from groco.index.faiss.spec import BuildSpec
    from groco.index.indexfile import write_index
    from groco.index.pipeline import content_hash
    from groco.index.store import EMBEDDED, FileRow, Store

    facts_path = out / "planted.json"
    if facts_path.exists():
        return json.loads(facts_path.read_text())
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    world = make_world(rng, clusters=max(n // 500, 10), dim=dim, intrinsic_dim=16,
                       centre_dim=32)
    near, exact = n // 100, n // 500
    base = n - near - exact
    sources = rng.choice(base, size=near + exact, replace=False)
    shard_size = 10_000
    with Store(out / "meta.sqlite") as store:
        store.set_info({"images_root": "/synthetic", "encoder_hash": "synthetic",
                        "encoder_path": "/synthetic/encoder.onnx", "encoder_backbone": "none",
                        "image_size": 1, "dim": dim})
        originals = sample(world, base, rng, spread=1.0, noise=0.1)
        extra = originals[sources].copy()
        noise = rng.standard_normal((near, dim), dtype=np.float32)
        noise *= np.float32(NEAR_NOISE / np.sqrt(dim))
        extra[:near] += noise
        extra[:near] /= np.linalg.norm(extra[:near], axis=1, keepdims=True)
        vectors = np.concatenate([originals, extra])
        del originals, extra
        hashes = [content_hash(str(i).encode()) for i in range(n)]
        for j, source in enumerate(sources[near:]):
            hashes[base + near + j] = hashes[int(source)]
        for number, start in enumerate(range(0, n, shard_size), 1):
            ids = np.arange(start, min(start + shard_size, n))
            shards.write_shard(out, number, ids, vectors[ids])
            store.commit(FileRow(int(i), f"f/{i:07d}.png", 1000, 0, hashes[i], "f", EMBEDDED,
                                 number, int(i - start)) for i in ids)
        near_cos = np.einsum("ij,ij->i", vectors[base:base + near], vectors[sources[:near]])
        del vectors
        log(f"{out}: building the auto index of {n} x {dim}")
        start = time.perf_counter()
        # no post-processing: the index holds the stored vectors (the search route scores
        # them as the graph does)
        manifest = write_index(out, store, BuildSpec(factory=index_type),
                               postprocess=as_postprocess("none"))
        build_s = time.perf_counter() - start
    pairs = [[int(s), base + j] for j, s in enumerate(sources)]
    facts = {"n": n, "dim": dim, "near": near, "exact": exact, "pairs": pairs,
             "near_cos_min": float(near_cos.min()), "near_cos_median": float(np.median(near_cos)),
             "index_type": manifest["index_type"], "search_params": manifest["search_params"],
             "build_s": build_s}
    facts_path.write_text(json.dumps(facts))
    return facts


def measure_child(index: str, threshold: float, mode: str) -> None:
    """Run in a fresh process: ``mode`` = ``dupes`` (the stored graph, built when missing)
    or ``search`` (the index searched batch by batch); prints JSON."""
    from _common import memory_status

    from groco.index.dupes import find_duplicate_groups

    usage = resource.getrusage(resource.RUSAGE_SELF)
    before, cpu = memory_status("VmRSS"), usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    groups = find_duplicate_groups(index, threshold, store_graph=mode == "dupes")
    result: dict[str, object] = {"groups": len(groups)}
    result["members"] = {f.id: n for n, g in enumerate(groups) for f in g.files}
    result["seconds"] = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime - cpu
    result["rss_before"] = before
    result["peak_rss"] = memory_status("VmHWM")
    print(json.dumps(result))


def child(index: Path, threshold: float, mode: str, threads: int) -> dict[str, object]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, __file__, "_child", str(index), str(threshold), mode],
                         check=True, capture_output=True, text=True, cwd=REPO, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def scale(args: argparse.Namespace) -> None:
    from groco.index.dupes import DEFAULT_THRESHOLD

    rows = ["| vectors | dim | index | planted near / exact copies | route | CPU s (wall) "
            "| RSS after imports / peak (MB) | vectors (MB) | peak RSS / vectors "
            "| planted pairs found | pair precision | groups |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for n in args.n:
        kind = "" if args.index_type == "auto" else "-" + args.index_type.replace(",", "_")
        index = args.work / f"synthetic-{n}-{args.dim}{kind}"
        facts = write_synthetic_index(index, n, args.dim, args.index_type)
        notes.append(f"{n:,}: index built in {facts['build_s']:.0f} s; near copies at cosine "
                     f"min {facts['near_cos_min']:.3f}, median {facts['near_cos_median']:.3f}")
        log(f"{index}: {facts['index_type']} {facts['search_params']}, built in "
            f"{facts['build_s']:.0f} s; near copies cos min {facts['near_cos_min']:.3f} "
            f"median {facts['near_cos_median']:.3f}")
        routes = [("search", "index search (previous)"), ("dupes", "graph built"),
                  ("dupes", "graph kept")]
        for mode, name in routes[1 if args.no_search else 0:]:
            if name != "graph kept":  # the search route reads a current graph too
                shutil.rmtree(index / "neighbours", ignore_errors=True)
            log(f"{n:,}: {name} (load {os.getloadavg()[0]:.1f})")
            result = child(index, DEFAULT_THRESHOLD, mode, args.threads)
            members = {int(k): v for k, v in result["members"].items()}
            found = sum(1 for a, b in facts["pairs"] if a in members and members.get(b) ==
                        members[a])
            sizes = np.bincount(np.fromiter(members.values(), int)) if members else []
            grouped = int(sum(s * (s - 1) // 2 for s in sizes))
            vec_mb = n * args.dim * 4 / 2**20
            rows.append(f"| {n:,} | {args.dim} | {facts['index_type']} "
                        f"{json.dumps(facts['search_params'])} | {facts['near']:,} / "
                        f"{facts['exact']:,} | {name} | {result['cpu_seconds']:.1f} "
                        f"({result['seconds']:.1f}) | {result['rss_before'] / 2**20:.0f} / "
                        f"{result['peak_rss'] / 2**20:.0f} | {vec_mb:.0f} | "
                        f"{result['peak_rss'] / 2**20 / vec_mb:.2f} | "
                        f"{found:,}/{len(facts['pairs']):,} | "
                        f"{found / max(1, grouped):.3f} | {result['groups']:,} |")
            log(rows[-1])
    print(header())
    print(f"Threshold {DEFAULT_THRESHOLD} (default); synthetic vectors (clustered model of "
          f"benchmarks/index.py) with planted copies; each row a fresh process on "
          f"{args.threads} OpenMP threads.\n")
    print("\n".join(rows))
    print("\n" + "; ".join(notes) + ".")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        measure_child(argv[1], float(argv[2]), argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    q = sub.add_parser("quality", help="recall / precision of groups on planted copies")
    q.add_argument("--count", type=int, default=10_000, help="Fashion-MNIST test images")
    q.add_argument("--copies", type=int, default=100, help="planted copies of each kind")
    q.add_argument("--size", type=int, default=28, help="side of the originals (px)")
    q.add_argument("--encoders", nargs="+", default=["raw", "lite0"])
    q.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    q.add_argument("--linkages", nargs="+", default=["star", "connected"])
    q.add_argument("--weights", type=Path, default=REPO / ".bench/lite0.safetensors")
    s = sub.add_parser("scale", help="time and peak RSS on synthetic vectors")
    s.add_argument("--n", type=int, action="append", help="vectors (repeatable)")
    s.add_argument("--dim", type=int, default=384)
    s.add_argument("--index-type", default="auto", help="FAISS factory string or auto")
    s.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="OpenMP threads of each measured process [default: every core]")
    s.add_argument("--no-search", action="store_true",
                   help="skip the index-search route (the previous code path)")
    for p in (q, s):
        p.add_argument("--work", type=Path, default=REPO / ".bench/dupes")
    args = parser.parse_args(argv)
    if args.part == "quality":
        quality(args)
    else:
        args.n = args.n or [100_000, 1_000_000]
        scale(args)


if __name__ == "__main__":
    main()
