"""Shared fixtures: small generated image collections, an exported encoder, a served index;
checks of an index directory's consistency."""

import os

# One OpenMP/BLAS thread for the tests and the commands they start (torch, FAISS, NumPy):
# their tensors are tiny, and on 2 shared cores a second spinning thread costs more than it
# gives (a 4-epoch `groco train` of 24 images took 22 s with 1 thread and 456 s with 2 on
# a loaded machine). Set before NumPy or torch is imported; a value set outside wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from groco.index import shards
from groco.index.faiss.io import load_index
from groco.index.indexfile import index_ids
from groco.index.manifest import read_manifest
from groco.index.store import DB_NAME, EMBEDDED, Store


def hard_collection(root: Path, classes: int = 4, per_class: int = 12) -> Path:
    """Classes whose mean colours differ by less than their noise: k-NN stays unsaturated."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = 128 + 12 * c + rng.normal(0, 70, (30, 26, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                root / f"class{c}" / f"{i:02d}.png")
    return root


def make_collection(root: Path, classes: int = 3, per_class: int = 8, size: int = 24,
                    seed: int = 0, broken: int = 0) -> Path:
    """``classes`` subfolders of coloured noise images (one hue per class), plus ``broken``
    unreadable files in the first class."""
    rng = np.random.default_rng(seed)
    hues = np.array([[220, 30, 30], [30, 200, 40], [40, 60, 230], [200, 200, 40],
                     [180, 40, 200], [40, 200, 200]])
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.normal(0, 35, (size, size, 3))
            pixels = np.clip(hues[c % len(hues)] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img{i:03d}.png")
    for i in range(broken):
        (root / "class0" / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


@pytest.fixture
def one_thread():
    """Tiny tensors: on a shared 2-core CPU, OpenMP thread sync costs more than the work."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def collection(tmp_path: Path) -> Path:
    return make_collection(tmp_path / "images", broken=2)


@pytest.fixture(scope="session")
def encoder_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real exported encoder (untrained resnet18, small stem, 32 px), made once."""
    from groco.encoder.export import export_untrained
    from groco.training.config import TrainConfig

    run = tmp_path_factory.mktemp("run")
    config = TrainConfig(data=str(run / "no-images"), out=str(run), backbone="resnet18",
                         image_size=32, small_stem=True, projector_hidden=32, projector_dim=16,
                         mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    export_untrained(config, run, run / "encoder.onnx", parity_images=2)
    return run / "encoder.onnx"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def served(encoder_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """A running web app over a small index: (images root, index dir, URL)."""
    from groco.app.web import launch_app
    from groco.index.build import build_index_dir

    base = tmp_path_factory.mktemp("app")
    images = make_collection(base / "images", classes=3, per_class=10, size=40)
    # Two planted copies for the Duplicates tab: a byte copy and a re-encoded one.
    (images / "class2" / "img009-copy.png").write_bytes(
        (images / "class2" / "img009.png").read_bytes())
    Image.open(images / "class2" / "img008.png").save(images / "class2" / "img008-resaved.jpg",
                                                      quality=90)
    index = base / "index"
    build_index_dir(images, encoder_file, index, batch_size=8, progress=False)
    app, url = launch_app(index, port=free_port(), block=False)
    yield images, index, url
    app.close()


@pytest.fixture
def browser():
    """A headless Chromium (:mod:`browser`); skips where none is installed, outside CI."""
    from browser import start_browser

    driver = start_browser()
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    """`groco demo --data IMAGES --epochs 1` run once as a user runs it, in its own process
    with outbound connections refused (:mod:`outbound`), serving until the session ends:
    (images, work dir, what it printed up to its addresses, URL, the refused-connections
    log). IMAGES has a byte copy, so the Duplicates tab has a group."""
    import subprocess
    import sys
    import time
    import urllib.request

    from outbound import guarded_env

    base = tmp_path_factory.mktemp("demo")
    images = make_collection(base / "images", classes=4, per_class=20, size=24)
    (images / "class0" / "img000-copy.png").write_bytes(
        (images / "class0" / "img000.png").read_bytes())
    work, log, printed = base / "demo", base / "outbound.log", base / "demo.out"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with printed.open("wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "groco.cli", "demo", "--data",
                                 str(images), "--work", str(work), "--epochs", "1",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env={**guarded_env(base / "guard", log),
                                     "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                urllib.request.urlopen(url, timeout=10).read()
                break
            except OSError:
                assert demo.poll() is None, printed.read_text()
                assert time.monotonic() < deadline, printed.read_text()
                time.sleep(1)
        yield images, work, printed.read_text(), url, log
    finally:
        demo.terminate()
        demo.wait(timeout=30)


# ----------------------------------------------------------------------------- index checks


def embeddings_by_path(index_dir: Path) -> dict[str, np.ndarray]:
    """``{relative path: stored embedding}`` of every embedded row."""
    with Store(index_dir / DB_NAME, readonly=True) as store:
        rows = list(store.iter_rows(EMBEDDED))
    vectors = shards.gather(index_dir, np.array([r.shard for r in rows]),
                            np.array([r.shard_row for r in rows]))
    return {r.path: v for r, v in zip(rows, vectors, strict=True)}


def assert_consistent(index_dir: Path) -> None:
    """Every embedded row once in the shards, no orphan shard, index ids == metadata ids."""
    with Store(index_dir / DB_NAME, readonly=True) as store:
        ids, shard_numbers, rows = store.embedded_locations()
        referenced = set(store.referenced_shards())
    assert shards.shards_on_disk(index_dir) == referenced
    for number in referenced:
        stored = np.load(shards.ids_path(index_dir, number))
        mine = ids[shard_numbers == number]
        assert np.array_equal(stored[rows[shard_numbers == number]], mine)
    manifest = read_manifest(index_dir)
    index = load_index(index_dir / manifest["index_file"])
    assert np.array_equal(np.sort(index_ids(index)), ids)
    assert manifest["count"] == len(ids)
    # one state, or one and the one before it: nothing older is left behind
    assert {p.name for p in index_dir.glob("*.faiss")} <= {manifest["index_file"],
                                                          manifest["previous_index_file"]}
