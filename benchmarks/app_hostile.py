"""The web server under hostile uploads and under many clients: peak RSS, errors, latency.

    python benchmarks/app_hostile.py                 # 2,000 Fashion-MNIST images

Serves an index of Fashion-MNIST test images (an untrained resnet18 at 32 px: memory and
latency do not depend on the weights) from a separate server process, whose memory is
read from ``/proc/PID/status`` (``VmHWM``, the peak resident set, reset with
``/proc/PID/clear_refs`` before each phase), then:

1. hostile uploads, 8 at once through ``gradio_client``: an 11000x11000 PNG (121 MP,
   under PIL's decompression-bomb limit and under the 10 MB byte cap), a 7000x7000 PNG
   (49 MP, under the 50 MP query cap: decoded in full, then reduced) and a 7000x7000
   JPEG (decoded reduced by ``draft``), while a probe client keeps sending normal
   queries (does the server keep answering, and how fast, against its idle latency);
2. the same uploads on a server with the old limits (128 MP cap, no reduction, 8 decodes
   at once), the baseline, measured in the same run, 2 at once (``--baseline-at-once``:
   8 unbounded 121 MP decodes would take several GB of a shared machine);
3. 20 concurrent clients x 25 normal queries: errors, p50/p95 latency, RSS before and
   after (drift).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402
from app import export_untrained  # noqa: E402
from fashion_mnist import write_folder  # noqa: E402

LAUNCH = """
import json, sys
from groco.app.settings import AppSettings
from groco.app.web import launch_app
launch_app(sys.argv[1], port=int(sys.argv[2]), settings=AppSettings(**json.loads(sys.argv[3])))
"""
OLD_LIMITS = {"max_query_pixels": 128_000_000, "decode_concurrency": 8,
              "reduce_queries": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``groco``'s app in its own process, with its memory readable."""

    def __init__(self, index: Path, settings: dict, images: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, str(index), str(self.port), json.dumps(settings)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=2).read()
                break
            except OSError:
                if time.time() > deadline or self.process.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.5)
        thumbs = index / "thumbnails"  # its background thumbnail pass, done before measuring
        while len(list(thumbs.glob("*.jpg"))) < images and time.time() < deadline + 300:
            time.sleep(0.5)

    def status(self, key: str) -> float:
        """A ``/proc/PID/status`` memory line in MB."""
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        raise KeyError(key)

    def reset_peak(self) -> None:
        with open(f"/proc/{self.process.pid}/clear_refs", "w") as f:
            f.write("5")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def query(client, path: Path) -> tuple[float, str | None]:
    """(seconds, None or the error's first line) of one search."""
    from gradio_client import handle_file

    started = time.perf_counter()
    try:
        client.predict(handle_file(str(path)), 12, "all", api_name="/search")
        error = None
    except Exception as exc:  # what a client sees: the server's one-line message
        error = (str(exc).splitlines() or [type(exc).__name__])[0]
    return time.perf_counter() - started, error


def hostile_files(folder: Path) -> dict[str, Path]:
    """Compressible pictures (gradients), so they pass the byte cap as an attacker's would."""
    files = {}
    for side, name in ((11000, "11000x11000 PNG"), (7000, "7000x7000 PNG")):
        ramp = np.linspace(0, 255, side, dtype=np.float32)
        row = np.stack([ramp, ramp[::-1], np.full(side, 128, np.float32)], axis=1)
        pixels = np.broadcast_to(row.astype(np.uint8), (side, side, 3))
        path = folder / f"hostile-{side}.png"
        Image.fromarray(np.ascontiguousarray(pixels)).save(path, compress_level=9)
        files[name] = path
        if side == 7000:
            files["7000x7000 JPEG"] = folder / "hostile-7000.jpg"
            Image.fromarray(np.ascontiguousarray(pixels)).save(files["7000x7000 JPEG"],
                                                               quality=90)
    return files


def hostile_phase(server: Server, upload: Path, at_once: int, probes: list[Path]) -> dict:
    """``at_once`` concurrent uploads of ``upload`` while a probe client sends normal
    queries one after another; the server's peak RSS over the phase."""
    from gradio_client import Client

    clients = [Client(server.url, verbose=False, download_files=False)
               for _ in range(at_once)]
    prober = Client(server.url, verbose=False, download_files=False)
    server.reset_peak()
    done = threading.Event()
    probe_times: list[float] = []
    probe_errors: list[str] = []

    def probe() -> None:
        i = 0
        while not done.is_set():
            seconds, error = query(prober, probes[i % len(probes)])
            (probe_errors.append(error) if error else probe_times.append(seconds))
            i += 1

    thread = threading.Thread(target=probe)
    started = time.perf_counter()
    thread.start()
    with ThreadPoolExecutor(at_once) as pool:
        outcomes = list(pool.map(lambda c: query(c, upload), clients))
    wall = time.perf_counter() - started
    done.set()
    thread.join()
    errors = [e for _, e in outcomes if e]
    return {"wall": wall, "peak": server.status("VmHWM"), "answered": at_once - len(errors),
            "errors": sorted(set(errors)), "probes": len(probe_times),
            "probe_errors": len(probe_errors),
            "probe_p50": float(np.median(probe_times)) * 1000 if probe_times else float("nan")}


def load_phase(server: Server, queries: list[Path], clients: int, per_client: int) -> dict:
    from gradio_client import Client

    sessions = [Client(server.url, verbose=False, download_files=False)
                for _ in range(clients)]
    before = server.status("VmRSS")
    server.reset_peak()

    def run(c: int) -> list[tuple[float, str | None]]:
        return [query(sessions[c], queries[(c * per_client + i) % len(queries)])
                for i in range(per_client)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        outcomes = [o for part in pool.map(run, range(clients)) for o in part]
    wall = time.perf_counter() - started
    times = np.array([t for t, e in outcomes if e is None]) * 1000
    return {"queries": len(outcomes), "errors": sum(e is not None for _, e in outcomes),
            "p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95)),
            "rate": len(outcomes) / wall, "before": before, "after": server.status("VmRSS"),
            "peak": server.status("VmHWM")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--at-once", type=int, default=8)
    parser.add_argument("--baseline-at-once", type=int, default=2)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=25)
    parser.add_argument("--data-dir", type=Path, default=Path(".bench/fmnist"))
    args = parser.parse_args()

    from groco.index.build import build_index_dir

    images = write_folder(args.data_dir, "t10k", args.images)
    files = sorted(images.rglob("*.png"))
    rng = np.random.default_rng(0)
    queries = [files[i] for i in rng.permutation(len(files))]
    rows, load = [], None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        encoder = export_untrained(work, "resnet18", 32)
        build_index_dir(images, encoder, work / "index", progress=False)
        hostile = hostile_files(work)
        sizes = {name: path.stat().st_size / 1e6 for name, path in hostile.items()}
        for label, settings, at_once in (("bounded (now)", {}, args.at_once),
                                         ("old limits (baseline)", OLD_LIMITS,
                                          args.baseline_at_once)):
            server = Server(work / "index", settings, len(files))
            try:
                from gradio_client import Client

                idle_client = Client(server.url, verbose=False, download_files=False)
                for q in queries[:5]:
                    query(idle_client, q)  # warm-up
                idle = [query(idle_client, q)[0] for q in queries[5:30]]
                rows.append((label, "idle", 0, {"peak": server.status("VmRSS"), "wall": 0,
                                                "answered": 0, "errors": [],
                                                "probes": len(idle), "probe_errors": 0,
                                                "probe_p50": float(np.median(idle)) * 1000}))
                for name, path in hostile.items():
                    rows.append((label, name, at_once,
                                 hostile_phase(server, path, at_once, queries[:50])))
                if not settings:
                    load = load_phase(server, queries, args.clients, args.per_client)
            finally:
                server.close()

    print(header())
    print(f"Server: `groco serve` over {len(files):,} Fashion-MNIST images (resnet18 at 32 px, "
          "ONNX Runtime, CPU), in its own process; RSS from /proc (VmHWM = peak over the "
          "phase). Hostile files on disk: "
          + ", ".join(f"{n} {mb:.2f} MB" for n, mb in sizes.items()) + ".\n")
    print("| server | upload | at once | answered | refused with | peak RSS MB | wall s | "
          "probe queries ok / failed | probe p50 ms (x idle) |")
    print("|---|---|---|---|---|---|---|---|---|")
    idle_p50 = {}
    for label, name, at_once, r in rows:
        if name == "idle":
            idle_p50[label] = r["probe_p50"]
        ratio = r["probe_p50"] / idle_p50[label]
        refused = "; ".join(f"`{e[:70]}`" for e in r["errors"]) or "-"
        print(f"| {label} | {name} | {at_once or '-'} | {r['answered'] if at_once else '-'} | "
              f"{refused} | {r['peak']:.0f} | {r['wall']:.1f} | {r['probes']} / "
              f"{r['probe_errors']} | {r['probe_p50']:.0f} ({ratio:.1f}x) |")
    assert load is not None
    print(f"\n{args.clients} concurrent clients x {args.per_client} normal queries (k=12), "
          "bounded server:\n")
    print("| queries | errors | p50 ms | p95 ms | queries/s | RSS before MB | RSS after MB | "
          "drift MB | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {load['queries']} | {load['errors']} | {load['p50']:.0f} | {load['p95']:.0f} | "
          f"{load['rate']:.1f} | {load['before']:.0f} | {load['after']:.0f} | "
          f"{load['after'] - load['before']:+.0f} | {load['peak']:.0f} |")


if __name__ == "__main__":
    main()
