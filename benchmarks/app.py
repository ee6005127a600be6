"""Search round-trip latency of the web UI through its HTTP API (``gradio_client``).

    python benchmarks/app.py                      # 10k Fashion-MNIST images, 200 queries

Builds an index of the Fashion-MNIST test split (10,000 images) with an exported encoder
(resnet18 at 32 px, untrained: latency does not depend on the weights), starts the app on
a free port, and times ``Client.predict(image, k=12, api_name="/search")`` from upload to
the returned gallery, one client at a time and with 8 concurrent clients.
Target: p95 ≤ 150 ms sequential.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402
from fashion_mnist import write_folder  # noqa: E402


def export_untrained(work: Path, backbone: str, image_size: int) -> Path:
    from groco.encoder.export import export_untrained
    from groco.training.config import TrainConfig

    config = TrainConfig(data=str(work), out=str(work / "run"), backbone=backbone,
                         image_size=image_size, small_stem=False).resolved()
    export_untrained(config, work / "run", work / "encoder.onnx", parity_images=4)
    return work / "encoder.onnx"


def timed_queries(url: str, queries: list[Path], clients: int,
                  download: bool = False) -> np.ndarray:
    """Milliseconds per query. Without ``download`` the client takes the gallery's
    thumbnail URLs as a browser does (it fetches them separately, lazily)."""
    from gradio_client import Client, handle_file

    download = tempfile.mkdtemp() if download else False

    def one(chunk: list[Path]) -> list[float]:
        client = Client(url, verbose=False, download_files=download)
        times = []
        for q in chunk:
            started = time.perf_counter()
            client.predict(handle_file(str(q)), 12, "all", api_name="/search")
            times.append(time.perf_counter() - started)
        return times

    chunks = [queries[i::clients] for i in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        return np.array([t for part in pool.map(one, chunks) for t in part]) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--data-dir", type=Path, default=Path(".bench/fmnist"))
    args = parser.parse_args()

    from groco.app.state import AppState
    from groco.app.web import serve
    from groco.index.build import build_index_dir

    images = write_folder(args.data_dir, "t10k")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        encoder = export_untrained(work, args.backbone, args.image_size)
        build_index_dir(images, encoder, work / "index", progress=False)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        state = AppState.open(work / "index")
        state.start_thumbnail_warmup().join()  # a server that has been up for a minute
        app, url = serve(state, port=port, block=False)
        files = sorted(images.rglob("*.png"))
        rng = np.random.default_rng(0)
        queries = [files[i] for i in rng.choice(len(files), args.queries, replace=False)]
        timed_queries(url, queries[:10], 1)  # warm-up: thumbnails, sessions
        results = {(clients, False): timed_queries(url, queries, clients)
                   for clients in (1, 8)}
        results[(1, True)] = timed_queries(url, queries[: args.queries // 2], 1, download=True)
        app.close()

    print(header())
    print(f"Index of {len(files):,} Fashion-MNIST images, encoder {args.backbone} at "
          f"{args.image_size} px (ONNX Runtime, CPU), k=12; each query uploads a PNG and "
          f"waits for the gallery; {args.queries} queries.\n")
    print("| clients | thumbnails downloaded by the client | p50 ms | p95 ms | p99 ms | "
          "queries/s |")
    print("|---|---|---|---|---|---|")
    for (clients, download), ms in results.items():
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        rate = clients * 1000 / ms.mean()
        print(f"| {clients} | {'all 12' if download else 'no (URLs only)'} | {p50:.0f} | "
              f"{p95:.0f} | {p99:.0f} | {rate:.1f} |")


if __name__ == "__main__":
    main()
