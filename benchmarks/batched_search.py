"""Concurrent queries searched in one FAISS call or one at a time: what a batch saves when
the threads are the same.

A server's batcher (:mod:`groco.index.api.batcher`) embeds the queries waiting at the
same moment in one ONNX Runtime call, where a batch of ``n`` costs far less than ``n``
runs. Whether their FAISS searches should also go in one call depends on what FAISS does
with a batch: the sides below search the same ``n`` unit queries at the same ``k`` on
the same OpenMP threads (``--threads``, default 1: a busy server has no idle core to
give a batch), either as ``n`` one-query calls or as one ``n``-query call. Indexes: IVF
and Flat as groco builds them (``IDMap2`` around the index), on random unit vectors
(search cost does not depend on the data at these sizes). Timing follows :mod:`timing`:
own warm-up, interleaved rounds, median; the ratio is ``n`` single calls / one batch.

    python benchmarks/batched_search.py
    python benchmarks/batched_search.py --quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402
from timing import LoadWatch, interleaved, ratio_summary  # noqa: E402


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(spec: str, vectors: np.ndarray) -> faiss.Index:
    """``spec`` (a FAISS factory string, inner product) over ``vectors``, ids 0..n-1."""
    index = faiss.index_factory(vectors.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(vectors[: min(len(vectors), 50 * 1024)])
    wrapped = faiss.IndexIDMap2(index)
    wrapped.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
    if spec.startswith("IVF"):
        faiss.extract_index_ivf(index).nprobe = 16
    return wrapped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--indexes", nargs="+",
                        default=["Flat:10000:512", "IVF1024,Flat:200000:384"],
                        help="SPEC:VECTORS:DIM each (nprobe 16 for IVF)")
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8, 32])
    parser.add_argument("--k", type=int, nargs="+", default=[12, 100])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="tiny indexes, few runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.indexes, args.batches, args.k, args.runs = (
            ["Flat:2000:64", "IVF16,Flat:4000:64"], [4], [12], 3)
    faiss.omp_set_num_threads(args.threads)
    watch = LoadWatch()
    rows = []
    for entry in args.indexes:
        spec, count, dim = entry.rsplit(":", 2)
        index = build(spec, unit_vectors(int(count), int(dim), seed=0))
        queries = unit_vectors(max(args.batches), int(dim), seed=1)
        for k in args.k:
            for n in args.batches:
                batch = queries[:n]

                def singles(batch=batch, k=k, index=index) -> None:
                    for row in range(len(batch)):
                        index.search(batch[row:row + 1], k)

                def together(batch=batch, k=k, index=index) -> None:
                    index.search(batch, k)

                sides = interleaved({"one at a time": singles, "one call": together},
                                    runs=args.runs, warmup=2, min_seconds=0.5)
                rows.append((f"{spec}, {int(count):,} x {dim}", k, n,
                             sides["one at a time"].median * 1000 / n,
                             sides["one call"].median * 1000 / n,
                             ratio_summary(sides["one at a time"], sides["one call"])))
                print(f"{rows[-1][0]} k={k} n={n}: {rows[-1][3]:.3f} vs {rows[-1][4]:.3f} "
                      f"ms/query", file=sys.stderr, flush=True)
    print(header())
    print("Command: `python benchmarks/batched_search.py" + (" --quick" if args.quick else "")
          + f"`; {args.threads} OpenMP thread(s) on both sides; {watch.line()}\n")
    print("| index | k | queries waiting | one at a time, ms/query | one call, ms/query "
          "| one at a time / one call |")
    print("|---|---|---|---|---|---|")
    for name, k, n, single, batched, ratio in rows:
        print(f"| {name} | {k} | {n} | {single:.3f} | {batched:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
