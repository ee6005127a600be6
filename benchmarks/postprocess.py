"""Label-free post-processing of stored embeddings: what centring, database-side
augmentation and alpha-query expansion do to search on a collection.

    python benchmarks/pretrained_weights.py --out .bench/lite0.safetensors   # once
    python benchmarks/postprocess.py --collections fmnist digits --geometries 64s1 96

Encoders: the ImageNet Lite0 start of ``benchmarks/pretrained_start.py`` at each geometry
(``64s1`` = 64 px with the stride-1 stem; ``96s1-max`` max-pooled), embeddings cached
under ``--cache``; or
``--npy BANK.npy LABELS.npy [QUERIES.npy QUERY_LABELS.npy]`` for any encoder's vectors.
Every variant is :func:`groco.index.postprocess.Postprocess` applied as the index applies
it: fitted on the bank alone (the queries are images the index never saw), the bank's
stored vectors transformed once, each query transformed and searched. Figures as
``benchmarks/_common.retrieval_figures`` (Fashion-MNIST: test queries against a balanced
training bank; digits: leave-one-out, a query never its own neighbour).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, retrieval_figures, unit_rows  # noqa: E402

from groco.index.postprocess import Postprocess  # noqa: E402
from groco.training.geometry import Geometry  # noqa: E402

VARIANTS = ["none", "centre", "dba1", "dba2", "dba3", "dba5", "qe2", "qe3", "qe5",
            "centre+dba3", "centre+qe3", "dba3+qe3", "centre+dba2+qe2", "centre+dba3+qe3"]


def figures(post, bank: np.ndarray, bank_y: np.ndarray, queries: np.ndarray | None,
            query_y: np.ndarray | None) -> dict[str, float]:
    """Retrieval figures of ``queries`` (None: leave-one-out) after ``post``."""
    fitted = post.fit(bank)
    stored = fitted.stored(bank)
    if queries is None:
        expanded = fitted.queries(bank, stored, exclude=np.arange(len(bank)))
        return retrieval_figures(stored, bank_y, expanded, bank_y, exclude_self=True)
    return retrieval_figures(stored, bank_y, fitted.queries(queries, stored), query_y)


def start_embeddings(collection: str, geometry: str, args) -> tuple:
    """(bank, bank labels, queries or None, query labels or None), cached as .npz."""
    import torch
    from pretrained_start import digits_arrays, embed, lite0

    cache = args.cache / f"{collection}-{geometry}-{args.bank}-{args.queries}.npz"
    if cache.is_file():
        z = np.load(cache)
        q = z["queries"] if z["queries"].size else None
        return z["bank"], z["bank_y"], q, (z["query_y"] if q is not None else None)
    torch.set_num_threads(args.threads)
    network = None if geometry == "raw" else Geometry.parse(geometry)
    if collection == "fmnist":
        from fashion_mnist import balanced_subset, read_idx

        train_x, train_y = read_idx("train")
        test_x, test_y = read_idx("t10k")
        keep = balanced_subset(train_y, args.bank)
        ask = balanced_subset(test_y, args.queries)
        raw = (train_x[keep], train_y[keep], test_x[ask], test_y[ask])
    else:
        x, y = digits_arrays(args.cache / "digits")
        raw = (x, y, None, None)
    if network is None:
        bank = unit_rows(raw[0].reshape(len(raw[0]), -1).astype(np.float32))
        queries = None if raw[2] is None else unit_rows(
            raw[2].reshape(len(raw[2]), -1).astype(np.float32))
    else:
        model = lite0(args.weights, network.small_stem, network.pool)
        bank, _ = embed(model, raw[0], network.image_size)
        queries = None if raw[2] is None else embed(model, raw[2], network.image_size)[0]
    args.cache.mkdir(parents=True, exist_ok=True)
    np.savez(cache, bank=bank, bank_y=raw[1], queries=np.zeros(0) if queries is None
             else queries, query_y=np.zeros(0) if raw[3] is None else raw[3])
    return bank, raw[1].astype(np.int64), queries, (None if raw[3] is None
                                                    else raw[3].astype(np.int64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path(".bench/lite0.safetensors"))
    parser.add_argument("--collections", nargs="+", default=["fmnist", "digits"],
                        choices=["fmnist", "digits"])
    parser.add_argument("--geometries", nargs="+", default=["raw", "64s1", "96"],
                        help="raw (pixels), N (px) or Ns1 (px, stride-1 stem), each "
                        "with -max for max pooling (e.g. 96s1-max)")
    parser.add_argument("--npy", type=Path, nargs="+",
                        help="BANK LABELS [QUERIES QUERY_LABELS] instead of the start")
    parser.add_argument("--bank", type=int, default=4000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--cache", type=Path, default=Path(".bench/postprocess"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    print(header())
    runs = []
    if args.npy:
        arrays = [np.load(p) for p in args.npy]
        runs.append((f"{args.npy[0].name}", tuple(arrays) + (None,) * (4 - len(arrays))))
    else:
        for collection in args.collections:
            for geometry in args.geometries:
                runs.append((f"{collection} {geometry}",
                             start_embeddings(collection, geometry, args)))
    for title, (bank, bank_y, queries, query_y) in runs:
        print(f"\n{title}: {len(bank)} stored"
              + (" (leave-one-out)" if queries is None else f", {len(queries)} queries") + "\n")
        print("| post-processing | k-NN top-1 | precision@10 | mAP@R |")
        print("|---|---|---|---|", flush=True)
        base = None
        for name in args.variants:
            f = figures(Postprocess.parse(name), unit_rows(bank), bank_y,
                        None if queries is None else unit_rows(queries), query_y)
            base = base or f
            cells = " | ".join(f"{100 * f[key]:.2f} ({100 * (f[key] - base[key]):+.2f})"
                               for key in ("knn_top1", "precision_at_10", "map_at_r"))
            print(f"| {name} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
