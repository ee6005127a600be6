"""More clients than the server lets wait: every query answered or refused at once, and the
server's memory flat across rounds.

    python benchmarks/app_overload.py                # 50 clients, a queue of 10

Serves an index of Fashion-MNIST test images (an untrained resnet18 at 32 px) from its own
process (``benchmarks/app_hostile.py``'s :class:`Server`) with ``queue_size`` 10 and the
default 4 searches at once, then for each route (the JSON route, one ``urllib`` request per
query; the Gradio API through ``gradio_client``, as the page's events go) runs ``--rounds``
rounds of ``--clients`` concurrent clients x ``--per-client`` queries with no pause
between them. Per route: queries answered and refused (HTTP 429 / "Queue is full"), any
other error, the latency of answers and of refusals (p50/p95/max), and the server's RSS
before the first round and after each (``/proc/PID/status``), with its peak (``VmHWM``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402
from app import export_untrained  # noqa: E402
from app_hostile import Server  # noqa: E402
from fashion_mnist import write_folder  # noqa: E402


def json_query(url: str, body: bytes) -> tuple[str, float]:
    """("answered" | "refused" | "error: ...", seconds) of one JSON search."""
    started = time.perf_counter()
    request = urllib.request.Request(f"{url}groco/api/search?k=12", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()
            outcome = "answered"
    except urllib.error.HTTPError as error:
        outcome = "refused" if error.code == 429 else f"error: HTTP {error.code}"
    except OSError as error:
        outcome = f"error: {error}"
    return outcome, time.perf_counter() - started


def gradio_query(client, path: Path) -> tuple[str, float]:
    from gradio_client import handle_file

    started = time.perf_counter()
    try:
        client.predict(handle_file(str(path)), 12, "all", api_name="/search")
        outcome = "answered"
    except Exception as error:  # noqa: BLE001 - what a client sees
        text = (str(error).splitlines() or [type(error).__name__])[0]
        outcome = "refused" if "queue is full" in text.lower() else f"error: {text[:80]}"
    return outcome, time.perf_counter() - started


def overload(server: Server, route: str, queries: list[Path], clients: int,
             per_client: int, rounds: int) -> dict:
    from gradio_client import Client

    sessions = ([Client(server.url, verbose=False, download_files=False)
                 for _ in range(clients)] if route == "gradio" else [None] * clients)
    bodies = [q.read_bytes() for q in queries]
    rss = [server.status("VmRSS")]
    server.reset_peak()
    outcomes: list[tuple[str, float]] = []

    def run(c: int) -> list[tuple[str, float]]:
        picks = [(c * per_client + i) % len(queries) for i in range(per_client)]
        if route == "gradio":
            return [gradio_query(sessions[c], queries[i]) for i in picks]
        return [json_query(server.url, bodies[i]) for i in picks]

    started = time.perf_counter()
    for _ in range(rounds):
        with ThreadPoolExecutor(clients) as pool:
            outcomes += [o for part in pool.map(run, range(clients)) for o in part]
        rss.append(server.status("VmRSS"))
    wall = time.perf_counter() - started

    def latency(kind: str) -> str:
        ms = np.array([s for o, s in outcomes if o == kind]) * 1000
        if not len(ms):
            return "-"
        return f"{np.percentile(ms, 50):.0f} / {np.percentile(ms, 95):.0f} / {ms.max():.0f}"

    errors = sorted({o for o, _ in outcomes if o.startswith("error")})
    return {"queries": len(outcomes), "answered": sum(o == "answered" for o, _ in outcomes),
            "refused": sum(o == "refused" for o, _ in outcomes),
            "errors": sum(o.startswith("error") for o, _ in outcomes), "kinds": errors,
            "answer_ms": latency("answered"), "refusal_ms": latency("refused"),
            "rss": rss, "peak": server.status("VmHWM"), "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--per-client", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queue-size", type=int, default=10)
    parser.add_argument("--data-dir", type=Path, default=Path(".bench/fmnist"))
    args = parser.parse_args()

    from groco.index.build import build_index_dir

    images = write_folder(args.data_dir, "t10k", args.images)
    files = sorted(images.rglob("*.png"))
    queries = [files[i] for i in np.random.default_rng(0).permutation(len(files))[:200]]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        encoder = export_untrained(work, "resnet18", 32)
        build_index_dir(images, encoder, work / "index", progress=False)
        server = Server(work / "index", {"queue_size": args.queue_size}, len(files))
        try:
            for q in queries[:10]:
                json_query(server.url, q.read_bytes())  # warm-up
            for route in ("json", "gradio"):
                results[route] = overload(server, route, queries, args.clients,
                                          args.per_client, args.rounds)
        finally:
            server.close()

    print(header())
    print(f"Server: `groco serve --queue-size {args.queue_size}` (4 searches at once) over "
          f"{len(files):,} Fashion-MNIST images (resnet18 at 32 px, ONNX Runtime, CPU), in its "
          f"own process; {args.rounds} rounds of {args.clients} concurrent clients x "
          f"{args.per_client} queries (k=12) per route, no pause; latency p50 / p95 / max.\n")
    print("| route | queries | answered | refused at once | other errors | answer ms | "
          "refusal ms | RSS MB before, after each round | peak RSS MB | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for route, r in results.items():
        name = "JSON `/groco/api/search`" if route == "json" else "Gradio API `/search`"
        rss = ", ".join(f"{x:.0f}" for x in r["rss"])
        print(f"| {name} | {r['queries']} | {r['answered']} | {r['refused']} | {r['errors']} | "
              f"{r['answer_ms']} | {r['refusal_ms']} | {rss} | {r['peak']:.0f} | "
              f"{r['wall']:.1f} |")
        for kind in r["kinds"]:
            print(f"- {route}: {kind}")


if __name__ == "__main__":
    main()
