"""Curation at 100k and 1M items: time and peak RSS of `groco index curate`.

The synthetic index directories of ``benchmarks/dupes.py scale`` (clustered unit vectors
with planted copies, ``--dim`` 384, an ``IVF1024,Flat`` index), reused when present.
Each row a fresh process (``VmHWM`` for its peak RSS): the neighbour graph built and
stored (what the first ``dupes``, ``map`` or ``curate`` of an index pays once), the
outliers by the graph's ``lof`` score and by the ``global`` score (a product with a
1,000-item sample, streamed), and samples of 100 and 1,000 (greedy k-centre over the
gathered vectors, beside one random sample's radius).

    python benchmarks/curate_scale.py --n 100000 --n 1000000
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, memory_status  # noqa: E402
from dupes import log, write_synthetic_index  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TASKS = ("graph", "outliers-lof", "outliers-global", "sample-100", "sample-1000")


def measure_child(index: str, task: str) -> None:
    """In a fresh process: run ``task`` on ``index``, print JSON facts."""
    from groco.index.curate import find_outliers, pick_sample
    from groco.index.neighbours import DEFAULT_K, ensure_graph

    usage = resource.getrusage(resource.RUSAGE_SELF)
    before, cpu = memory_status("VmRSS"), usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    facts: dict[str, object] = {}
    if task == "graph":
        graph = ensure_graph(Path(index), DEFAULT_K)
        facts["recall"] = graph.info.get("recall")
    elif task.startswith("outliers-"):
        facts["found"] = len(find_outliers(index, 100, task.split("-")[1], store_graph=False))
    else:
        report = pick_sample(index, int(task.split("-")[1]))
        facts["radius"], facts["random_radius"] = report.radius, report.random_radius
    usage = resource.getrusage(resource.RUSAGE_SELF)
    facts.update(seconds=time.perf_counter() - start,
                 cpu_seconds=usage.ru_utime + usage.ru_stime - cpu,
                 rss_before=before, peak_rss=memory_status("VmHWM"))
    print(json.dumps(facts))


def child(index: Path, task: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, __file__, "_child", str(index), task], check=True,
                         capture_output=True, text=True, cwd=REPO, env=dict(os.environ))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        measure_child(argv[1], argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, action="append", help="vectors (repeatable)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--index-type", default="IVF1024,Flat",
                        help="FAISS index of the synthetic directories (curation reads the "
                             "stored vectors and graph, not the index)")
    parser.add_argument("--work", type=Path, default=REPO / ".bench/dupes")
    args = parser.parse_args(argv)
    rows = ["| items | dim | task | wall s | CPU s | RSS after imports / peak (MB) "
            "| vectors (MB) | peak RSS / vectors | result |",
            "|---|---|---|---|---|---|---|---|---|"]
    for n in args.n or [100_000, 1_000_000]:
        kind = "" if args.index_type == "auto" else "-" + args.index_type.replace(",", "_")
        index = args.work / f"synthetic-{n}-{args.dim}{kind}"
        write_synthetic_index(index, n, args.dim, args.index_type)
        shutil.rmtree(index / "neighbours", ignore_errors=True)
        vec_mb = n * args.dim * 4 / 2**20
        for task in TASKS:
            log(f"{n:,}: {task} (load {os.getloadavg()[0]:.1f})")
            facts = child(index, task)
            result = (f"recall@k {facts['recall']}" if task == "graph" else
                      f"{facts['found']} items" if "found" in facts else
                      f"radius {facts['radius']:.3f} (random {facts['random_radius']:.3f})")
            rows.append(f"| {n:,} | {args.dim} | {task} | {facts['seconds']:.1f} | "
                        f"{facts['cpu_seconds']:.1f} | {facts['rss_before'] / 2**20:.0f} / "
                        f"{facts['peak_rss'] / 2**20:.0f} | {vec_mb:.0f} | "
                        f"{facts['peak_rss'] / 2**20 / vec_mb:.2f} | {result} |")
            log(rows[-1])
    print(header())
    print("\n".join(rows))


if __name__ == "__main__":
    main()
