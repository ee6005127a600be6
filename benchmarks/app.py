"""Search round-trip latency of the web app through its HTTP APIs, sequential and with 8
concurrent clients.

    python benchmarks/app.py                      # 10k Fashion-MNIST images, 200 queries

Builds an index of the Fashion-MNIST test split (10,000 images) with an exported encoder
(resnet18 at 32 px, untrained: latency does not depend on the weights; ``--index-dir``
keeps it for the next run), starts the app in its own process (thumbnails made before the
first query, as on a server that has been up a minute) and times, on the same server and
the same query files:

- ``gradio_client``: ``Client.predict(image, 12, "all", -1, api_name="/search")``, from
  upload to the returned gallery (thumbnail URLs, not downloaded: a browser fetches them
  separately, lazily);
- ``Gradio HTTP, lean client``: the same ``/search`` event through Gradio's HTTP API
  (upload, ``POST /gradio_api/call/search``, its event stream) on one kept-alive
  connection per client: what the server's Gradio path costs without gradio_client's
  own overhead (it opens new HTTP clients, with new TLS contexts, for every request);
- ``JSON route``: ``POST /groco/api/search?k=12`` with the PNG's bytes as the body, on
  one kept-alive HTTP connection per client, to the JSON answer (the same 12 results
  with thumbnail URLs).

Both upload the same file and get the same results back. The server's own time per query
(the JSON route's ``ms``) is reported beside them. Timing follows :mod:`timing`: the very
first query on the fresh server (JSON route) is a row of its own (cold); then every row
(API x clients) gets its own warm-up of ``--warmup`` queries, drawn apart from the timed
ones and never timed again, and the rows run in ``--rounds`` interleaved rounds, each
round sending the same slice of the ``--queries`` timed queries through every row, so
every row times the same queries, the same count. The load average before and after is
printed (the machine is shared). Target: p95 ≤ 150 ms sequential.

    python benchmarks/app.py --quick      # 48 generated images, 8 queries (CI: it runs)
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402
from fashion_mnist import write_folder  # noqa: E402
from timing import LoadWatch, interleaved  # noqa: E402

K = 12
SERVER = """
import sys
from groco.app.state import AppState
from groco.app.web import serve
state = AppState.open(sys.argv[1])
state.start_thumbnail_warmup().join()
serve(state, port=int(sys.argv[2]), block=True)
"""


def export_untrained(work: Path, backbone: str, image_size: int) -> Path:
    from groco.encoder.export import export_untrained
    from groco.training.config import TrainConfig

    config = TrainConfig(data=str(work), out=str(work / "run"), backbone=backbone,
                         image_size=image_size, small_stem=False).resolved()
    export_untrained(config, work / "run", work / "encoder.onnx", parity_images=4)
    return work / "encoder.onnx"


def gradio_queries(url: str, queries: list[Path], clients: int,
                   **client_options: object) -> np.ndarray:
    """Milliseconds per ``gradio_client`` query (``clients`` threads, one client each,
    made with ``client_options``)."""
    from gradio_client import Client, handle_file

    def one(chunk: list[Path]) -> list[float]:
        client = Client(url, verbose=False, download_files=False,
                        httpx_kwargs={"timeout": 120}, **client_options)
        times = []
        for q in chunk:
            started = time.perf_counter()
            client.predict(handle_file(str(q)), K, "all", -1, api_name="/search")
            times.append(time.perf_counter() - started)
        return times

    return _spread(one, queries, clients)


def gradio_plain_http_queries(url: str, queries: list[Path], clients: int) -> np.ndarray:
    """:func:`gradio_queries` with ``ssl_verify=False``, for a plain ``http://`` server
    (no TLS on the wire either way): ``gradio_client`` then skips loading the CA bundle
    into a new TLS context for each of its HTTP calls, about 100 ms of the client's own
    CPU per query."""
    if not url.startswith("http://"):
        raise ValueError(f"not a plain HTTP server: {url}")
    return gradio_queries(url, queries, clients, ssl_verify=False)


def gradio_http_queries(url: str, queries: list[Path], clients: int) -> np.ndarray:
    """Milliseconds per query through Gradio's own HTTP API with a lean client: upload
    (``POST /gradio_api/upload``), ``POST /gradio_api/call/search``, then read its event
    stream, on one kept-alive connection per client."""
    import httpx

    def one(chunk: list[Path]) -> list[float]:
        times = []
        with httpx.Client(base_url=url, timeout=60) as client:
            for q in chunk:
                started = time.perf_counter()
                with open(q, "rb") as f:
                    up = client.post("gradio_api/upload", files=[("files", (q.name, f))])
                up.raise_for_status()
                payload = {"path": up.json()[0], "orig_name": q.name,
                           "meta": {"_type": "gradio.FileData"}}
                call = client.post("gradio_api/call/search",
                                   json={"data": [payload, K, "all", -1, False]})
                call.raise_for_status()
                event = call.json()["event_id"]
                text = client.get(f"gradio_api/call/search/{event}").text
                times.append(time.perf_counter() - started)
                if "event: complete" not in text:
                    raise RuntimeError(f"{q}: {text[-300:]}")
        return times

    return _spread(one, queries, clients)


def json_queries(url: str, queries: list[Path], clients: int,
                 server_ms: list[float] | None = None) -> np.ndarray:
    """Milliseconds per JSON-route query (``clients`` threads, a connection each)."""
    import httpx

    def one(chunk: list[Path]) -> list[float]:
        times = []
        with httpx.Client(base_url=url, timeout=60) as client:
            for q in chunk:
                started = time.perf_counter()
                body = q.read_bytes()
                answer = client.post(f"groco/api/search?k={K}", content=body)
                answer.raise_for_status()
                data = answer.json()
                times.append(time.perf_counter() - started)
                if len(data["results"]) != K:
                    raise RuntimeError(f"{q}: {len(data['results'])} results")
                if server_ms is not None:
                    server_ms.append(data["ms"])
        return times

    return _spread(one, queries, clients)


def _spread(one, queries: list[Path], clients: int) -> np.ndarray:
    chunks = [queries[i::clients] for i in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        return np.array([t for part in pool.map(one, chunks) for t in part]) * 1000


def start_server(index: Path, log: Path, code: str = SERVER,
                 args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """Run ``code`` (argv: index, port, ``args``) in its own process, logging to ``log``;
    returns it and its URL once the JSON route answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "wb") as out:  # a file, not a pipe nobody reads while timing
        server = subprocess.Popen([sys.executable, "-c", code, str(index), str(port), *args],
                                  stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 600
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server failed: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{url}groco/api/browse?page=1", timeout=5)
            return server, url
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("server did not start in 10 minutes")


APIS = (("gradio_client `/search`", gradio_queries),
        ("Gradio HTTP, lean client", gradio_http_queries),
        ("JSON route `POST /groco/api/search`", json_queries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=160, help="timed queries a row")
    parser.add_argument("--warmup", type=int, default=8, help="warm-up queries a row")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--data-dir", type=Path, default=Path(".bench/fmnist"))
    parser.add_argument("--index-dir", type=Path, default=None,
                        help="Keep the index here (built when missing) [default: a temp dir].")
    parser.add_argument("--quick", action="store_true",
                        help="tiny: 48 generated images, 8 queries, 1 and 2 clients")
    args = parser.parse_args()
    if args.quick:
        args.queries, args.warmup, args.rounds, args.clients = 8, 2, 2, [1, 2]
    if args.queries % args.rounds:
        parser.error("--queries must be a multiple of --rounds")

    from groco.index.build import build_index_dir

    load = LoadWatch()
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:  # generated images: CI has no Fashion-MNIST
            from index_throughput import write_images

            images, collection = Path(tmp) / "images", "generated 28-px"
            write_images(images, 48, 28)
        else:
            images, collection = write_folder(args.data_dir, "t10k"), "Fashion-MNIST"
        work = args.index_dir.parent if args.index_dir else Path(tmp)
        index = args.index_dir or work / "index"
        if not (index / "manifest.json").is_file():
            encoder = export_untrained(work, args.backbone, args.image_size)
            build_index_dir(images, encoder, index, progress=False)
        server, url = start_server(index, Path(tmp) / "server.log")
        try:
            files = sorted(p for p in images.rglob("*") if p.suffix in (".png", ".jpg"))
            rng = np.random.default_rng(0)
            picked = [files[i] for i in rng.choice(
                len(files), args.queries + args.warmup + 1, replace=len(files) <= args.queries)]
            cold_query, warm, timed = picked[0], picked[1:args.warmup + 1], picked[args.warmup + 1:]
            per_round = args.queries // args.rounds
            cold_ms = json_queries(url, [cold_query], 1)[0]  # the fresh server's first query
            latencies: dict[str, list[np.ndarray]] = {}
            server_ms: list[float] = []

            def side(name: str, run, clients: int):
                calls = iter([warm] + [timed[r * per_round:(r + 1) * per_round]
                                       for r in range(args.rounds)])

                def call() -> None:
                    batch = next(calls)
                    first = batch is warm
                    extra = ({"server_ms": server_ms}
                             if run is json_queries and clients == 1 and not first else {})
                    ms = run(url, batch, clients, **extra)
                    if not first:
                        latencies.setdefault(name, []).append(ms)
                return call

            rows = {f"{clients}|{name}": side(f"{clients}|{name}", run, clients)
                    for clients in args.clients for name, run in APIS}
            sides = interleaved(rows, runs=args.rounds, warmup=1)
        finally:
            server.terminate()
            server.wait(30)

    print(header())
    print(f"Index of {len(files):,} {collection} images, encoder {args.backbone} at "
          f"{args.image_size} px (ONNX Runtime, CPU), k={K}; the server in its own process; "
          f"each query sends a PNG and waits for the {K} results (thumbnail URLs). Every row: "
          f"its own {args.warmup} warm-up queries (not timed), then the same {args.queries} "
          f"timed queries in {args.rounds} interleaved rounds of {per_round}; queries/s is "
          "the round's queries over the round's median wall time.")
    print(load.line() + "\n")
    print("| clients | API | p50 ms | p95 ms | p99 ms | queries/s |")
    print("|---|---|---|---|---|---|")
    p95 = {}
    for key, timing in sides.items():
        clients, name = key.split("|", 1)
        ms = np.concatenate(latencies[key])
        p50, p95[key], p99 = np.percentile(ms, [50, 95, 99])
        print(f"| {clients} | {name} | {p50:.0f} | {p95[key]:.0f} | {p99:.0f} | "
              f"{timing.rate(per_round):.1f} |")
    print(f"| 1 | first query on the fresh server (JSON route, cold) | {cold_ms:.0f} | | | |")
    line = ""
    if server_ms:
        s50, s95 = np.percentile(server_ms, [50, 95])
        line = (f"Server time per sequential JSON query (decode, embed, search, thumbnails): "
                f"p50 {s50:.1f} ms, p95 {s95:.1f} ms.")
    if 1 in args.clients:
        ratio = p95[f"1|{APIS[0][0]}"] / p95[f"1|{APIS[2][0]}"]
        line += f" Sequential p95, gradio_client / JSON route: {ratio:.1f}x."
    print("\n" + line.strip())


if __name__ == "__main__":
    main()
