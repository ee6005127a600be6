"""Index builds past one machine's memory (issue 12): streaming and on-disk against today's path.

Synthetic unit vectors (benchmarks/index.py's clustered generator: 2000 clusters, centres in
32 dims, intrinsic dim 16) are written as the shards of an index directory
(``shards/emb-NNNNN.npy``), with fresh queries and their exact top-10 (computed shard by
shard). Then every row builds an index *in its own child process*, so its peak RSS
(``ru_maxrss``) is its own:

- ``today, in RAM``: what ``write_index`` did before issue 12 (every vector gathered into
  one array, then :func:`groco.index.faiss.tune.build_tuned_index` over it as an
  ``ArraySource``, which also copies the non-held-out ones);
- ``streaming, in RAM``: the same :func:`build_tuned_index` over the shards (trained on a
  sample, filled shard by shard, tuned against a streamed exact search);
- ``streaming, on disk``: :func:`groco.index.ondisk.build_ondisk_index` (per-part fills,
  ``merge_ondisk`` into an ``.ivfdata``), IVF-Flat and, with ``--memory`` a quarter of the
  vectors' size, the OPQ+IVF-PQ that :func:`choose_index_type` picks for it.

Each row reports wall time, peak RSS (``ru_maxrss``, which counts mapped file pages too)
and peak anonymous RSS (sampled: what the build holds, without page cache), the index's
size on disk (``.faiss`` + ``.ivfdata``), the tuned parameters (target recall@10 0.95 on
held-out vectors), and, from a fresh *server* child that opens the index as ``groco
search``/``serve`` do (on-disk lists memory-mapped read-only): the time from starting that
process to its first answer, recall@10 on the fresh queries against the exact top-10,
single-query p50/p99 latency (after warm-up queries), and its RSS split into anonymous
memory (what the process holds) and file-backed pages (the mapped lists it touched: page
cache, evictable).

Run from the repository root:
    .venv/bin/python benchmarks/index_scale.py --quick          # seconds
    .venv/bin/python benchmarks/index_scale.py                  # 1M x 256
    .venv/bin/python benchmarks/index_scale.py --n 4000000 --rows ondisk-pq
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

ROWS = {
    "today": ("today, in RAM", "inram", "flat", False),
    "stream": ("streaming, in RAM", "stream", "flat", False),
    "ondisk": ("streaming, on disk", "stream", "flat", True),
    "ondisk-pq": ("streaming, on disk, --memory 25%", "stream", "pq", True),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_status() -> dict[str, int]:
    """VmHWM/VmRSS/RssAnon/RssFile of this process, bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakSampler:
    """The largest RssAnon and RssFile of this process, sampled every ``interval`` s on a
    thread: ``ru_maxrss`` also counts file pages the process maps (shards read through
    ``np.load(mmap_mode="r")``, the lists ``merge_ondisk`` writes through a mapping),
    which are page cache the kernel can evict, not memory the build holds."""

    def __init__(self, interval: float = 0.05) -> None:
        import threading

        self.anon = self.file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            now = rss_status()
            self.anon = max(self.anon, now["RssAnon"])
            self.file = max(self.file, now["RssFile"])
            self._stop.wait(interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------- jobs (children)


def layout(n: int, shard_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.arange(n, dtype=np.int64)
    return ids, ids // shard_size + 1, ids % shard_size


def job_generate(work: str, n: int, dim: int, shard_size: int, queries: int,
                 seed: int) -> dict:
    import faiss
    from index import make_world, sample

    from groco.index import shards
    from groco.index.faiss.query import exact_knn_source
    from groco.index.stored import ShardSource

    work_dir = Path(work)
    rng = np.random.default_rng(seed)
    world = make_world(rng, 2000, dim, 16, 32)
    t0 = time.perf_counter()
    for number, start in enumerate(range(0, n, shard_size), 1):
        count = min(shard_size, n - start)
        x = sample(world, count, rng, 1.0, 0.1)
        shards.write_shard(work_dir, number, np.arange(start, start + count), x)
    q = sample(world, queries, rng, 1.0, 0.1)
    np.save(work_dir / "queries.npy", q)
    written = time.perf_counter() - t0
    source = ShardSource(work_dir, *layout(n, shard_size))
    t0 = time.perf_counter()
    gt = exact_knn_source(q, source, 10)[1]
    np.save(work_dir / "gt.npy", gt)
    del faiss
    return {"write_s": written, "gt_s": time.perf_counter() - t0}


def job_build(work: str, n: int, shard_size: int, mode: str, factory: str, on_disk: bool,
              out: str, train_size: int | None) -> dict:
    from groco.index import shards
    from groco.index.faiss.io import save_index
    from groco.index.faiss.source import ArraySource
    from groco.index.faiss.spec import DEFAULT_TUNING, BuildSpec
    from groco.index.faiss.tune import build_tuned_index
    from groco.index.ondisk import build_ondisk_index, ivfdata_name
    from groco.index.stored import ShardSource

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids, numbers, rows = layout(n, shard_size)
    name = "index-000001.faiss"
    import logging

    phases: list[str] = []  # groco's own "trained on ... in s", "added ... in s" lines

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            phases.append(f"{time.perf_counter() - t0:.0f} s: {record.getMessage()}")

    logging.getLogger("groco").addHandler(Keep())
    logging.getLogger("groco").setLevel(logging.INFO)
    build = BuildSpec(factory, train_size=train_size)
    sampler = PeakSampler()
    t0 = time.perf_counter()
    if mode == "inram":  # before issue 12: gather everything, then build
        vectors = shards.gather(Path(work), numbers, rows)
        index, params = build_tuned_index(ArraySource(vectors, ids), build, DEFAULT_TUNING)
        del vectors
    else:
        source = ShardSource(work, ids, numbers, rows)
        if on_disk:
            index, params = build_ondisk_index(out_dir, source, name, build, DEFAULT_TUNING)
        else:
            index, params = build_tuned_index(source, build, DEFAULT_TUNING)
    save_index(index, out_dir / name)
    wall = time.perf_counter() - t0
    sampler.stop()
    size = (out_dir / name).stat().st_size
    data = out_dir / ivfdata_name(name)
    size += data.stat().st_size if data.exists() else 0
    return {"build_s": wall, "peak_rss": peak_rss(), "peak_anon": sampler.anon,
            "peak_file": sampler.file, "disk_bytes": size, "params": params,
            "phases": phases}


def job_serve(out: str, params: dict, work: str, warmup: int) -> None:
    """Print one line at the first answer, then a JSON line of the measurements."""
    from groco.index.faiss.io import load_index
    from groco.index.faiss.query import recall_at_k, search

    q = np.load(Path(work) / "queries.npy")
    index = load_index(Path(out) / "index-000001.faiss", params,
                          read_only=(Path(out) / "index-000001.ivfdata").exists())
    search(index, q[0], 10)
    print("answered", flush=True)
    after_first = rss_status()
    gt = np.load(Path(work) / "gt.npy")
    for i in range(min(warmup, len(q))):
        search(index, q[i], 10)
    found = np.empty((len(q), 10), dtype=np.int64)
    times = np.empty(len(q))
    for i in range(len(q)):
        t0 = time.perf_counter()
        found[i] = search(index, q[i], 10)[1][0]
        times[i] = time.perf_counter() - t0
    print(json.dumps({"recall": recall_at_k(found, gt, 10),
                      "p50_ms": float(np.percentile(times, 50) * 1e3),
                      "p99_ms": float(np.percentile(times, 99) * 1e3),
                      "rss_first": after_first, "rss_end": rss_status()}), flush=True)


def child_main(spec: str) -> None:
    job = json.loads(spec)
    kind = job.pop("job")
    if kind == "serve":
        job_serve(**job)
        return
    result = {"generate": job_generate, "build": job_build}[kind](**job)
    print(json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- parent


def run_child(job: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{job['job']} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_server(job: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    to_first = time.perf_counter() - t0
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0 or first.strip() != "answered":
        raise RuntimeError(f"server failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["first_answer_s"] = to_first
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 1)[1])
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors [1M]")
    parser.add_argument("--dim", type=int, default=256, help="dimension [256]")
    parser.add_argument("--shard-size", type=int, default=100_000, help="vectors a shard")
    parser.add_argument("--queries", type=int, default=1000, help="fresh queries [1000]")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up queries [100]")
    parser.add_argument("--rows", default="today,stream,ondisk,ondisk-pq",
                        help=f"comma-separated rows of {sorted(ROWS)}")
    parser.add_argument("--train-per-list", type=int, default=None,
                        help="training points per IVF list [groco's default, 64]")
    parser.add_argument("--work", type=Path, default=Path("/tmp/groco-index-scale"),
                        help="scratch folder (shards, indexes) [/tmp/groco-index-scale]")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--quick", action="store_true",
                        help="20k x 64, shards of 5k, 200 queries: runs in seconds")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a child may run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return
    if args.quick:
        args.n, args.dim, args.shard_size, args.queries, args.warmup = 20_000, 64, 5_000, 200, 20
        if args.rows == parser.get_default("rows"):
            args.rows = "today,stream,ondisk"  # OPQ training alone takes minutes

    from _common import header
    from timing import LoadWatch

    from groco.index.faiss.choose import choose_index_type, ivf_centroids

    load = LoadWatch()
    work = args.work / f"n{args.n}-d{args.dim}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    vector_bytes = args.n * args.dim * 4
    factories = {"flat": choose_index_type(args.n, args.dim, 1 << 50, on_disk=True),
                 "pq": choose_index_type(args.n, args.dim, vector_bytes // 4, on_disk=True)}
    train = (args.train_per_list * ivf_centroids(args.n) if args.train_per_list else None)
    log(f"generating {args.n} x {args.dim} in shards of {args.shard_size} under {work}")
    gen = run_child({"job": "generate", "work": str(work), "n": args.n, "dim": args.dim,
                     "shard_size": args.shard_size, "queries": args.queries, "seed": 0},
                    args.timeout)
    log(f"written in {gen['write_s']:.0f} s, exact top-10 in {gen['gt_s']:.0f} s")
    results = []
    for key in args.rows.split(","):
        label, mode, kind, on_disk = ROWS[key]
        factory = factories[kind]
        out = work / f"index-{key}"
        log(f"{label}: {factory}")
        built = run_child({"job": "build", "work": str(work), "n": args.n,
                           "shard_size": args.shard_size, "mode": mode, "factory": factory,
                           "on_disk": on_disk, "out": str(out), "train_size": train},
                          args.timeout)
        params = dict(built["params"])
        tuned_recall = params.pop("recall@10")
        served = run_server({"job": "serve", "out": str(out), "params": params,
                             "work": str(work), "warmup": args.warmup}, args.timeout)
        results.append((label, factory, built, params, tuned_recall, served))
        log(f"  build {built['build_s']:.0f} s, peak RSS {built['peak_rss'] / 2**20:.0f} MiB, "
            f"recall@10 {served['recall']:.3f}, p50 {served['p50_ms']:.2f} ms, first answer "
            f"{served['first_answer_s']:.2f} s")
        shutil.rmtree(out, ignore_errors=True)
    mib = 2**20
    print(header())
    print(f"{args.n:,} x {args.dim} float32 unit vectors = {vector_bytes / mib:,.0f} MiB, "
          f"shards of {args.shard_size:,}; {args.queries} fresh queries (exact top-10 "
          f"streamed in {gen['gt_s']:.0f} s); training sample "
          f"{'groco default (max(64 K, 65536))' if train is None else f'{train:,}'}; "
          f"target recall@10 0.95 on held-out vectors")
    print(load.line())
    print()
    print("| row | index | build s | peak RSS MiB (% of vectors) | peak anon MiB (%) | on "
          "disk MiB | tuned | recall@10 | p50 ms | p99 ms | start to 1st answer s | server "
          "RSS anon / file MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, factory, built, params, tuned_recall, served in results:
        tuned = " ".join(f"{k}={v}" for k, v in params.items())
        end = served["rss_end"]
        print(f"| {label} | {factory} | {built['build_s']:.0f} | "
              f"{built['peak_rss'] / mib:,.0f} ({100 * built['peak_rss'] / vector_bytes:.0f} %)"
              f" | {built['peak_anon'] / mib:,.0f} "
              f"({100 * built['peak_anon'] / vector_bytes:.0f} %)"
              f" | {built['disk_bytes'] / mib:,.0f} | {tuned} ({tuned_recall:.3f}) | "
              f"{served['recall']:.3f} | {served['p50_ms']:.2f} | {served['p99_ms']:.2f} | "
              f"{served['first_answer_s']:.2f} | {end['RssAnon'] / mib:,.0f} / "
              f"{end['RssFile'] / mib:,.0f} |")
    print()
    for label, _, built, *_ in results:
        print(f"- {label}: " + "; ".join(built.get("phases", [])))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
