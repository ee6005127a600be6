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
(the JSON route's ``ms``) is reported beside them, and the load average before each row
(the machine is shared). Target: p95 ≤ 150 ms sequential.
"""

from __future__ import annotations

import argparse
import json
import os
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


def gradio_queries(url: str, queries: list[Path], clients: int) -> np.ndarray:
    """Milliseconds per ``gradio_client`` query (``clients`` threads, one client each)."""
    from gradio_client import Client, handle_file

    def one(chunk: list[Path]) -> list[float]:
        client = Client(url, verbose=False, download_files=False,
                        httpx_kwargs={"timeout": 120})
        times = []
        for q in chunk:
            started = time.perf_counter()
            client.predict(handle_file(str(q)), K, "all", -1, api_name="/search")
            times.append(time.perf_counter() - started)
        return times

    return _spread(one, queries, clients)


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
                                   json={"data": [payload, K, "all", -1]})
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


def start_server(index: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "wb") as out:  # a file, not a pipe nobody reads while timing
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(index), str(port)],
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--data-dir", type=Path, default=Path(".bench/fmnist"))
    parser.add_argument("--index-dir", type=Path, default=None,
                        help="Keep the index here (built when missing) [default: a temp dir].")
    args = parser.parse_args()

    from groco.index.build import build_index_dir

    images = write_folder(args.data_dir, "t10k")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.index_dir.parent if args.index_dir else Path(tmp)
        index = args.index_dir or work / "index"
        if not (index / "manifest.json").is_file():
            encoder = export_untrained(work, args.backbone, args.image_size)
            build_index_dir(images, encoder, index, progress=False)
        server, url = start_server(index, Path(tmp) / "server.log")
        try:
            files = sorted(images.rglob("*.png"))
            rng = np.random.default_rng(0)
            queries = [files[i] for i in rng.choice(len(files), args.queries, replace=False)]
            gradio_queries(url, queries[:10], 1)  # warm-up: sessions, first answers
            json_queries(url, queries[:10], 1)
            rows, server_ms = [], []
            for clients in (1, 8):
                for name, run in (("gradio_client `/search`", gradio_queries),
                                  ("Gradio HTTP, lean client", gradio_http_queries),
                                  ("JSON route `POST /groco/api/search`", json_queries)):
                    load = os.getloadavg()[0]
                    extra = {"server_ms": server_ms} if run is json_queries and clients == 1 else {}
                    started = time.perf_counter()
                    ms = run(url, queries, clients, **extra)
                    rows.append((clients, name, load, ms, time.perf_counter() - started))
        finally:
            server.terminate()
            server.wait(30)

    print(header())
    print(f"Index of {len(files):,} Fashion-MNIST images, encoder {args.backbone} at "
          f"{args.image_size} px (ONNX Runtime, CPU), k={K}; the server in its own process; "
          f"each query sends a PNG and waits for the {K} results (thumbnail URLs); "
          f"{args.queries} queries a row.\n")
    print("| clients | API | load avg (1 min) | p50 ms | p95 ms | p99 ms | queries/s |")
    print("|---|---|---|---|---|---|---|")
    for clients, name, load, ms, wall in rows:
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        rate = len(ms) / wall
        print(f"| {clients} | {name} | {load:.1f} | {p50:.0f} | {p95:.0f} | {p99:.0f} | "
              f"{rate:.1f} |")
    p50, p95 = np.percentile(server_ms, [50, 95])
    gradio_1, json_1 = (np.percentile(rows[i][3], 95) for i in (0, 2))
    print(f"\nServer time per JSON query (decode, embed, search, thumbnails): p50 {p50:.1f} ms, "
          f"p95 {p95:.1f} ms. Sequential p95, gradio_client / JSON route: "
          f"{gradio_1 / json_1:.1f}x.")
    print(json.dumps({"load_after": os.getloadavg()}))


if __name__ == "__main__":
    main()
