"""Benchmark groco's FAISS index choices: build time, memory, recall@10, latency, throughput.

Rows: ``Flat`` (exact: the baseline and the ground truth); ``HNSW32`` at FAISS's default
``efSearch=16``, then the same graph tuned by :func:`tune_search_params` on indexed
vectors (no hold-out: the conservative estimate); the ``auto`` choice
(:func:`choose_index_type` under the memory budget, default half the RAM available) built
by :func:`build_tuned_index`, tuned to the recall target on held-out vectors; and any
``--extra`` factory strings, built the same way.

Measures, each on ``--queries`` held-out queries that are *not* in the index:
- build: wall time of training + adding (tuned rows: tuning time apart, in the notes);
- memory: bytes of the serialized index, and the process RSS delta around the build
  (includes allocator slack and freed training buffers);
- recall@10 against exact inner-product search (the Flat results);
- single-query p50/p99 latency through :func:`search`, one query at a time after
  ``--warmup`` queries (Flat: only the first ``--flat-single`` queries, ~0.1 s each at 1M);
- batch throughput: all queries in one :func:`search` call on all threads (best of 3).

Synthetic data (default): unit vectors from ``--clusters`` clusters. Centres ``c_j`` are
random directions in a random ``--centre-dim``-dimensional subspace (graded similarity
between clusters, as in real embedding spaces, which are anisotropic). Each cluster has
its own random ``--intrinsic-dim``-dimensional subspace ``B_j`` (Gaussian ``dim x r``,
columns ~unit norm), and isotropic noise is added: ``x = normalize(c_j + B_j u + e)``,
``u ~ N(0, spread^2 / r I_r)``, ``e ~ N(0, noise^2 / dim I_dim)``, ``j`` uniform. Real
embeddings are locally low-dimensional; this gives each cluster that shape, so recall
depends on the index and not only on near-ties. Queries are fresh draws from the same
clusters, never indexed. Measured at 1M with the defaults (2000 clusters, centres in 32
dims, r=16, spread 1.0, noise 0.1): HNSW32 recall@10 0.88 at efSearch=16, 0.96 at 192.
Orthogonal centres (``--centre-dim 0``) are a hard case for graphs, where greedy search
has no gradient between clusters: HNSW32 reached only 0.61 at efSearch=16 and 0.94 at
2048; with r=32, spread 1.5 as well, 0.43 at efSearch=16.
``--npy FILE`` benchmarks real ``(n, d)`` embeddings instead, holding ``--queries``
random rows out as queries.

Run from the repository root:
    .venv/bin/python benchmarks/index.py                   # 1M x 384, ~7 min on 2 cores
    .venv/bin/python benchmarks/index.py --n 100000
    .venv/bin/python benchmarks/index.py --npy emb.npy --extra IVF1024,Flat
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass

import faiss
import numpy as np

from groco.index.faiss import tune as tuning
from groco.index.faiss.build import build_index
from groco.index.faiss.choose import choose_index_type, default_memory_budget
from groco.index.faiss.query import recall_at_k, search
from groco.index.faiss.source import ArraySource, as_unit_vectors
from groco.index.faiss.spec import DEFAULT_TUNING, BuildSpec, TuningSpec
from groco.index.faiss.tune import Split, build_tuned_index, tune_search_params


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data


def make_world(
    rng: np.random.Generator, clusters: int, dim: int, intrinsic_dim: int, centre_dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unit cluster centres ``(C, dim)`` in a random ``centre_dim`` subspace (0: all of
    ``dim``) and subspace bases ``(C, dim, r)``."""
    if centre_dim:
        mix = rng.standard_normal((dim, centre_dim), dtype=np.float32)
        centres = rng.standard_normal((clusters, centre_dim), dtype=np.float32) @ mix.T
    else:
        centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    faiss.normalize_L2(centres)
    bases = rng.standard_normal((clusters, dim, intrinsic_dim), dtype=np.float32)
    bases /= np.float32(np.sqrt(dim))
    return centres, bases


def sample(
    world: tuple[np.ndarray, np.ndarray],
    n: int,
    rng: np.random.Generator,
    spread: float,
    noise: float,
) -> np.ndarray:
    """``n`` unit vectors ``normalize(c_j + B_j u + e)`` with ``j`` uniform (module doc)."""
    centres, bases = world
    clusters, dim, r = bases.shape
    labels = rng.integers(0, clusters, n)
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=clusters)
    out = np.empty((n, dim), dtype=np.float32)
    start = 0
    for j, count in enumerate(counts):
        rows = order[start : start + count]
        start += count
        u = rng.standard_normal((count, r), dtype=np.float32) * np.float32(spread / np.sqrt(r))
        e = rng.standard_normal((count, dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
        out[rows] = centres[j] + u @ bases[j].T + e
    faiss.normalize_L2(out)
    return out


# ----------------------------------------------------------------------------- measuring


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def serialized_bytes(index: faiss.Index) -> int:
    size = 0

    def count(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)

    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(index, writer)
    del writer  # flushes the last buffered chunk
    return size


@dataclass
class Row:
    name: str
    factory: str
    params: str
    build_s: float
    size_bytes: int
    rss_delta_bytes: int
    recall: float
    p50_ms: float
    p99_ms: float
    qps: float
    n_single: int


def timed_build(x: np.ndarray, ids: np.ndarray, factory: str) -> tuple[faiss.Index, float, int]:
    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    index = build_index(ArraySource(x, ids), BuildSpec(factory))
    seconds = time.perf_counter() - t0
    gc.collect()
    return index, seconds, rss_bytes() - rss0


def timed_tuned_build(
    x: np.ndarray, ids: np.ndarray, factory: str, args: argparse.Namespace
) -> tuple[faiss.Index, dict[str, float], float, float, int]:
    """:func:`build_tuned_index` with its tuning time split out:
    ``(index, params, build_s, tune_s, rss_delta)``."""
    spent: list[float] = []
    original = tuning.tune_search_params

    def timed_tune(*a, **kw):  # build_tuned_index looks the function up in its module
        t = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            spent.append(time.perf_counter() - t)

    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    tuning.tune_search_params = timed_tune
    try:
        index, params = build_tuned_index(ArraySource(x, ids),
                                          BuildSpec(factory, memory_bytes=args.memory_bytes),
                                          TuningSpec(args.target_recall, args.k,
                                                     args.queries, args.seed))
    finally:
        tuning.tune_search_params = original
    total = time.perf_counter() - t0
    gc.collect()
    return index, params, total - sum(spent), sum(spent), rss_bytes() - rss0


def latency(index: faiss.Index, queries: np.ndarray, k: int, warmup: int) -> np.ndarray:
    for q in queries[:warmup]:
        search(index, q, k)
    times = np.empty(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        search(index, q, k)
        times[i] = time.perf_counter() - t0
    return times


def throughput(index: faiss.Index, queries: np.ndarray, k: int, repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        search(index, queries, k)
        best = min(best, time.perf_counter() - t0)
    return len(queries) / best


def measure(
    name: str, factory: str, params: str, index: faiss.Index, build_s: float, rss: int,
    queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace,
) -> Row:
    ids = search(index, queries, args.k)[1]
    times = latency(index, queries, args.k, args.warmup)
    row = Row(
        name, factory, params, build_s, serialized_bytes(index), rss,
        recall_at_k(ids, truth, args.k),
        float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3),
        throughput(index, queries, args.k, repeats=3), len(times),
    )
    log(f"{name}: recall@{args.k}={row.recall:.4f} p50={row.p50_ms:.3f} ms "
        f"p99={row.p99_ms:.3f} ms {row.qps:.0f} q/s")
    return row


# ----------------------------------------------------------------------------- report


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(ln.split()[1] for ln in f if ln.startswith("MemTotal")))
        ram = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores{ram}"


def report(rows: list[Row], args: argparse.Namespace, notes: list[str]) -> str:
    mb = 1e6
    lines = [
        f"## FAISS index benchmark ({args.data_desc})",
        "",
        f"- machine: {machine()}; faiss {faiss.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}, {args.threads} OpenMP threads",
        f"- command: `python {shlex.join(sys.argv)}`",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        *[f"- {note}" for note in notes],
        "",
        f"| index | factory | search params | build s | serialized MB | RSS delta MB "
        f"| recall@{args.k} | p50 ms | p99 ms | batch q/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | `{r.factory}` | {r.params} | {r.build_s:.1f} | "
            f"{r.size_bytes / mb:.0f} | {r.rss_delta_bytes / mb:.0f} | {r.recall:.4f} | "
            f"{r.p50_ms:.3f} | {r.p99_ms:.3f} | {r.qps:.0f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def load_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(args.seed)
    if args.npy:
        x = as_unit_vectors(np.load(args.npy, mmap_mode="r"))
        held = np.zeros(len(x), dtype=bool)
        held[rng.choice(len(x), args.queries, replace=False)] = True
        args.data_desc = f"{args.npy}: {int((~held).sum())} x {x.shape[1]}"
        return np.ascontiguousarray(x[~held]), np.ascontiguousarray(x[held])
    world = make_world(rng, args.clusters, args.dim, args.intrinsic_dim, args.centre_dim)
    base = sample(world, args.n, rng, args.spread, args.noise)
    queries = sample(world, args.queries, rng, args.spread, args.noise)
    args.data_desc = (
        f"synthetic {args.n} x {args.dim}: {args.clusters} clusters with centres in "
        f"{args.centre_dim or args.dim} dims, intrinsic dim {args.intrinsic_dim}, spread "
        f"{args.spread}, noise {args.noise}, seed {args.seed}"
    )
    return base, queries


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="indexed vectors (synthetic)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--centre-dim", type=int, default=32,
                   help="dims spanned by the cluster centres (0: all, orthogonal clusters)")
    p.add_argument("--intrinsic-dim", type=int, default=16)
    p.add_argument("--spread", type=float, default=1.0, help="in-cluster subspace scale")
    p.add_argument("--noise", type=float, default=0.1, help="isotropic noise norm")
    p.add_argument("--npy", help="real (n, d) embeddings instead of synthetic data")
    p.add_argument("--queries", type=int, default=1000, help="held-out queries")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--target-recall", type=float, default=DEFAULT_TUNING.target_recall)
    p.add_argument("--memory-bytes", type=int, default=None,
                   help="budget for the auto choice (default: half the available RAM)")
    p.add_argument("--extra", action="append", default=[], help="more factory strings")
    p.add_argument("--no-hnsw", action="store_true", help="skip the HNSW32 row")
    p.add_argument("--flat-single", type=int, default=100, help="single queries timed on Flat")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    x, queries = load_data(args)
    n, dim = x.shape
    ids = np.arange(n, dtype=np.int64)
    log(f"data {n} x {dim} + {len(queries)} queries in {time.perf_counter() - t0:.1f} s")
    rows: list[Row] = []
    notes: list[str] = []

    flat, build_s, rss = timed_build(x, ids, "Flat")
    t1 = time.perf_counter()
    truth = search(flat, queries, args.k)[1]
    flat_qps = len(queries) / (time.perf_counter() - t1)
    times = latency(flat, queries[: args.flat_single], args.k, min(args.warmup, 5))
    rows.append(Row("Flat (exact)", "Flat", "-", build_s, serialized_bytes(flat), rss, 1.0,
                    float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3),
                    flat_qps, len(times)))
    log(f"Flat: p50={rows[-1].p50_ms:.1f} ms, {flat_qps:.0f} q/s")
    del flat
    gc.collect()

    budget = args.memory_bytes if args.memory_bytes is not None else default_memory_budget()
    auto = choose_index_type(n, dim, budget)
    budget_txt = "no limit" if budget is None else f"{budget / 2**30:.1f} GiB"
    notes.append(f"auto chose `{auto}` for n={n}, dim={dim}, memory budget {budget_txt}")

    def tuned_row(name: str, factory: str) -> Row:
        log(f"building {factory} with hold-out tuning ...")
        index, params, build_s, tune_s, rss = timed_tuned_build(x, ids, factory, args)
        shown = ", ".join(f"{key}={v}" for key, v in params.items() if "@" not in key) or "-"
        notes.append(f"{name}: build_tuned_index chose {shown} in {tune_s:.1f} s of tuning "
                     f"(held-out estimate recall@{args.k}={params[f'recall@{args.k}']}, "
                     f"target {args.target_recall}); build s excludes the tuning")
        return measure(name, factory, shown, index, build_s, rss, queries, truth, args)

    if not args.no_hnsw:
        log("building HNSW32 ...")
        hnsw, build_s, rss = timed_build(x, ids, "HNSW32")
        log(f"HNSW32 built in {build_s:.1f} s")
        faiss.ParameterSpace().set_index_parameter(hnsw, "efSearch", 16)
        rows.append(measure("HNSW32, FAISS default", "HNSW32", "efSearch=16", hnsw, build_s,
                            rss, queries, truth, args))
        t = time.perf_counter()
        params = tune_search_params(hnsw, Split(ArraySource(x, ids)),
                                    TuningSpec(args.target_recall, args.k, seed=args.seed))
        shown = ", ".join(f"{key}={v}" for key, v in params.items() if "@" not in key)
        notes.append(f"HNSW32, no hold-out: tune_search_params on indexed vectors chose "
                     f"{shown} in {time.perf_counter() - t:.1f} s (conservative estimate "
                     f"recall@{args.k}={params[f'recall@{args.k}']})")
        rows.append(measure("HNSW32, tuned without hold-out", "HNSW32", shown, hnsw, build_s,
                            rss, queries, truth, args))
        del hnsw
        gc.collect()

    rows.append(tuned_row("auto, tuned on hold-out", auto))
    gc.collect()
    for factory in args.extra:
        rows.append(tuned_row(f"{factory}, tuned on hold-out", factory))
        gc.collect()
    notes.append(f"single-query latency over {args.queries} queries one at a time after "
                 f"{args.warmup} warm-up ({rows[0].n_single} for Flat); batch = all "
                 f"{args.queries} queries in one call, best of 3 (Flat: 1 run)")
    notes.append(f"total benchmark time {time.perf_counter() - t0:.0f} s; 1-min load average "
                 f"{load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end (shared CPU)")
    print(report(rows, args, notes), flush=True)


if __name__ == "__main__":
    main()
