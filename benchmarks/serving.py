"""Serving many users: queries/s, latency and the server's CPU per query for 1, 8 and 20
concurrent clients on the Gradio API (`gradio_client`) and the JSON route, the server as
before and as now, in one run.

Server: `groco serve`'s app over the Fashion-MNIST test split (``--count`` images; the
encoder of ``benchmarks/app.py``: resnet18 at 32 px, untrained, ONNX Runtime on the CPU),
each configuration in its own process, all started before the first query: "before"
embeds each query in its own call, lets ONNX Runtime's threads spin between runs and
Gradio rebuild its monitoring table after every event (the defaults of both); "batched"
hands queries to the batcher (:mod:`groco.index.api.batcher`), blocks those threads
between runs (``AppSettings.encoder_spinning``) and rebuilds that table every
``groco.app.web.ANALYTICS_EVERY`` events (the product now). Clients and servers share the
machine's cores, as in the issue's figures. Rows alternate between the servers for each
route and client count, so load from elsewhere falls on both alike. Each client sends its
share of the row's queries one after another (no pause); a row reports its queries,
errors, queries/s over its wall time, p50 / p95 latency, and the server process's CPU
time (user + system) per query and the clients' (this process's threads). Routes:
``gradio_client`` as made by default, the same with ``ssl_verify=False`` (the server is
plain HTTP: no TLS either way, but the default client builds a TLS context for each of
its HTTP calls, about 100 ms of CPU a query on the same cores), and the JSON route.
``--concurrency`` sets Gradio's events at once and the JSON route's searches at once on
every server (the app's ``settings.concurrency``).

    python benchmarks/serving.py
    python benchmarks/serving.py --quick
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402
from app import (  # noqa: E402
    export_untrained,
    gradio_plain_http_queries,
    gradio_queries,
    json_queries,
    start_server,
)
from fashion_mnist import write_folder  # noqa: E402
from timing import LoadWatch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SERVER = """
import os
import sys
if sys.argv[5] == "1":
    os.environ["GRADIO_ANALYTICS_CACHE_FREQUENCY"] = "1"
from groco.app.settings import AppSettings
from groco.app.state import AppState
from groco.app.web import serve
settings = AppSettings(batch_queries=sys.argv[3] == "1", concurrency=int(sys.argv[4]),
                       queue_size=1000, encoder_spinning=sys.argv[5] == "1")
state = AppState.open(sys.argv[1], settings=settings)
state.start_thumbnail_warmup().join()
serve(state, port=int(sys.argv[2]), block=True)
"""
ROUTES = {"gradio": ("gradio_client `/search`", gradio_queries),
          "gradio-plain": ("gradio_client `/search`, ssl_verify=False", gradio_plain_http_queries),
          "json": ("JSON route", json_queries)}
SERVERS = {"unbatched": ("before: one at a time", False, True),
           "batched": ("batched", True, False)}
"""name: (label, queries embedded together, as before: ONNX Runtime's threads spinning
and Gradio's monitoring table rebuilt after every event)."""


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_cpu_seconds() -> float:
    """User + system CPU seconds this process (the clients' threads) has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def row(fn, url: str, queries: list[Path], clients: int, pid: int) -> dict[str, float]:
    cpu = server_cpu_seconds(pid)
    client_cpu = client_cpu_seconds()
    started = time.perf_counter()
    errors = 0
    try:
        ms = fn(url, queries, clients)
    except Exception as error:  # noqa: BLE001 - a row that fails is reported, not fatal
        print(f"row failed: {error}", file=sys.stderr)
        ms, errors = np.array([np.nan]), len(queries)
    wall = time.perf_counter() - started
    return {"queries": len(queries), "errors": errors, "qps": len(queries) / wall,
            "cpu_ms": (server_cpu_seconds(pid) - cpu) / len(queries) * 1000,
            "client_cpu_ms": (client_cpu_seconds() - client_cpu) / len(queries) * 1000,
            "p50": float(np.nanpercentile(ms, 50)), "p95": float(np.nanpercentile(ms, 95))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=None, help="images [default: all 10k]")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 20])
    parser.add_argument("--per-client", type=int, default=25)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--routes", nargs="+", default=list(ROUTES), choices=list(ROUTES))
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS))
    parser.add_argument("--work", type=Path, default=REPO / ".bench/serving")
    parser.add_argument("--quick", action="store_true", help="200 images, 1 and 2 clients")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.clients, args.per_client = 200, [1, 2], 3
    from groco.index.build import build_index_dir

    args.work.mkdir(parents=True, exist_ok=True)
    images = write_folder(args.work / "fmnist", "t10k", args.count)
    encoder = args.work / "encoder.onnx"
    if not encoder.exists():
        encoder = export_untrained(args.work, "resnet18", 32)
    index = args.work / f"index-{images.name}"
    if not (index / "manifest.json").exists():
        build_index_dir(images, encoder, index, progress=False)
    files = sorted(images.rglob("*.png"))
    routes = [ROUTES[r] for r in args.routes]
    servers = {name: start_server(index, args.work / f"{key}.log", SERVER,
                                  ("1" if batched else "0", str(args.concurrency),
                                   "1" if before else "0"))
               for key, (name, batched, before) in SERVERS.items() if key in args.servers}
    lines = ["| route | clients | server | queries | errors | queries/s | p50 ms | p95 ms | "
             "server CPU ms / query | clients' CPU ms / query |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    try:
        with LoadWatch() as load:
            for _, url in servers.values():  # warm-up: 10 queries a route
                for _, fn in routes:
                    fn(url, files[-10:], 1)
            offset = 0
            for route, fn in routes:
                for clients in args.clients:
                    queries = files[offset:offset + clients * args.per_client]
                    offset += len(queries)
                    for name, (server, url) in servers.items():
                        r = row(fn, url, queries, clients, server.pid)
                        lines.append(f"| {route} | {clients} | {name} | {r['queries']} | "
                                     f"{r['errors']} | {r['qps']:.1f} | {r['p50']:.0f} | "
                                     f"{r['p95']:.0f} | {r['cpu_ms']:.0f} | "
                                     f"{r['client_cpu_ms']:.0f} |")
                        print(lines[-1], file=sys.stderr, flush=True)
    finally:
        for server, _ in servers.values():
            server.terminate()
    print(header())
    print(f"Fashion-MNIST t10k ({len(files)} images), resnet18 at 32 px (untrained), "
          f"k = 12; {args.concurrency} searches at once a server; {load.line()}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
