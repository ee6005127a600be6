"""The stored neighbour graph (groco.index.neighbours, `groco index graph`): the partition's
rows are the exact nearest others within the probed cells, its recall is what it says, a
run killed with SIGKILL resumes, and `groco index update` keeps the graph current.

Vectors: clustered unit vectors (30 centres in 24 dimensions), small enough that the
exact answer is a brute-force product; the partition is forced on by small cells.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_collection
from PIL import Image

from groco.encoder.baselines import export_raw_pixels
from groco.index.build import build_index_dir, update_index_dir
from groco.index.neighbours import ensure_graph, partition, read_graph, read_info
from groco.index.store import DB_NAME, Store

REPO = Path(__file__).resolve().parents[1]


def clustered(n: int, dim: int = 24, centres: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True))


def exact(x: np.ndarray, k: int) -> np.ndarray:
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def check_rows(x: np.ndarray, pos: np.ndarray, scores: np.ndarray) -> None:
    """No row holds itself or one item twice; scores are the true cosines, best first."""
    n = len(x)
    assert not (pos == np.arange(n)[:, None]).any()
    filled = np.sort(np.where(pos >= 0, pos, -np.arange(1, pos.shape[1] + 1)), axis=1)
    assert (np.diff(filled, axis=1) != 0).all()
    true = np.einsum("ij,ikj->ik", x, x[pos.clip(0)])
    np.testing.assert_allclose(scores[pos >= 0], true[pos >= 0], atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_small_sets_get_the_exact_graph(tmp_path: Path) -> None:
    x = clustered(500)
    pos, scores, facts = partition.knn_graph(x, 8, tmp_path / "w", {"t": 1}, progress=False)
    assert facts["exact"] and facts["cells"] == 1 and facts["recall"] == 1.0
    check_rows(x, pos, scores)
    want = exact(x, 8)
    assert partition.recall_at_k(pos, want) == 1.0


def test_partitioned_graph_reaches_its_measured_recall(tmp_path: Path) -> None:
    x = clustered(3000, centres=5)  # each cluster cut into several cells
    k = 10
    pos, scores, facts = partition.knn_graph(x, k, tmp_path / "w", {"t": 1}, progress=False,
                                             cell_size=100, exact_max=0)
    assert not facts["exact"] and facts["cells"] == 30 and 1 < facts["probes"] <= 32
    check_rows(x, pos, scores)
    whole = partition.recall_at_k(pos, exact(x, k))  # every row, not the sample
    assert whole >= partition.RECALL_TARGET - 0.02
    assert abs(whole - facts["recall"]) < 0.02  # the sampled figure is the true one
    assert facts["recall"] >= facts["predicted_recall"] - 1e-6
    one_probe = partition.knn_graph(x, k, tmp_path / "w1", {"t": 1}, progress=False,
                                    cell_size=100, exact_max=0, recall_target=0.0)[2]
    assert one_probe["probes"] == 1 and one_probe["recall"] < whole


CHILD = """
import sys, time
import numpy as np
from pathlib import Path
from groco.index.neighbours import partition
real = partition.merge
def slow(*a, **kw):
    time.sleep(0.02)
    return real(*a, **kw)
partition.merge = slow
x = np.load(sys.argv[1])
partition.knn_graph(x, 10, Path(sys.argv[2]), {"t": 1}, progress=False, cell_size=60,
                    exact_max=0)
"""


def test_a_graph_killed_with_sigkill_resumes_after_its_last_cells(tmp_path: Path) -> None:
    x = clustered(3000)
    np.save(tmp_path / "x.npy", x)
    work = tmp_path / "work"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "x.npy"), str(work)],
                             cwd=REPO)
    state = work / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if json.loads(state.read_text()).get("cells_done", 0) >= 16:
                break
        except (OSError, ValueError):
            pass
        assert child.poll() is None, "the child finished before it could be killed"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done = json.loads(state.read_text())["cells_done"]
    assert 16 <= done < 50
    pos, scores, facts = partition.knn_graph(x, 10, work, {"t": 1}, progress=False,
                                             cell_size=60, exact_max=0)
    assert facts["resumed_cells"] == done
    fresh = partition.knn_graph(x, 10, tmp_path / "fresh", {"t": 1}, progress=False,
                                cell_size=60, exact_max=0)
    np.testing.assert_array_equal(pos, fresh[0])
    np.testing.assert_allclose(scores, fresh[1], atol=1e-6)
    assert facts["recall"] == fresh[2]["recall"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("enc") / "raw.onnx"
    export_raw_pixels(8, path, parity_images=2)
    return path


def stored_vectors(index: Path) -> tuple[np.ndarray, np.ndarray]:
    from groco.index import shards

    with Store(index / DB_NAME, readonly=True) as store:
        ids, numbers, rows = store.embedded_locations()
    return ids, shards.gather(index, numbers, rows)


def test_update_keeps_the_graph_current(encoder: Path, tmp_path: Path) -> None:
    images = make_collection(tmp_path / "images", classes=3, per_class=20, size=8)
    index = tmp_path / "index"
    build_index_dir(images, encoder, index, progress=False)
    report = ensure_graph(index, 5, progress=False)
    assert report.built and report.k == 5
    assert not ensure_graph(index, 5, progress=False).built  # current: reused
    gone = sorted((images / "class1").iterdir())[:3]
    for f in gone:
        f.unlink()
    for i in range(4):
        source = sorted((images / "class2").iterdir())[i]
        Image.open(source).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
            images / "class0" / f"late{i}.png")
    result = update_index_dir(index, progress=False)
    assert result.graph == {"added": 4, "removed": 3, "searched": result.graph["searched"]}
    graph = read_graph(index)
    ids, x = stored_vectors(index)
    with Store(index / DB_NAME, readonly=True) as store:
        assert graph.info["generation"] == store.generation
    np.testing.assert_array_equal(graph.ids, ids)
    assert np.isin(graph.neighbours[graph.neighbours >= 0], ids).all()  # no deleted item
    pos = graph.positions()
    check_rows(x, pos, graph.scores)
    # new items' rows are exact (the index is exact at this size, rescored from the stored
    # vectors); an old row gains a new item when the new item's own row holds it
    new = np.flatnonzero(np.isin(ids, ids[-4:]))
    want = exact(x, 5)
    assert partition.recall_at_k(pos[new], want[new]) == 1.0
    assert partition.recall_at_k(pos, want) >= 0.95
    assert graph.info["added"] == 4 and graph.info["removed"] == 3


def test_cli_graph_prints_and_stores_its_recall(encoder: Path, tmp_path: Path) -> None:
    images = make_collection(tmp_path / "images", classes=2, per_class=5, size=8)
    index = tmp_path / "index"
    build_index_dir(images, encoder, index, progress=False)
    from typer.testing import CliRunner

    from groco.cli import app

    run = ["index", "graph", str(index), "--no-progress"]
    first = CliRunner().invoke(app, run)
    assert first.exit_code == 0, first.stderr
    assert first.stdout.startswith("neighbour graph built in ")
    # 10 items: 9 others each at most
    assert "10 items x 9 neighbours (exact; recall@9 1.000 on 10 sampled items)" in first.stdout
    again = CliRunner().invoke(app, [*run, "--json"])
    facts = json.loads(again.stdout)
    assert facts["built"] is False and facts["recall"] == 1.0
    assert facts == {"built": False, "seconds": 0.0, **read_info(index)}
    missing = CliRunner().invoke(app, [*run[:-2], str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and len(missing.stderr.strip().splitlines()) == 1
