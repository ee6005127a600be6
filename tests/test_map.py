"""The embedding map (groco.index.map, `groco index map`): its files, the JSON, placement
of new items by `groco index update`, resuming a killed run, and the missing extra.

A few hundred 8 px images of four hues through the raw-pixel encoder: the classes are
far apart in the embedding, so a faithful map keeps them apart in 2D.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_collection
from PIL import Image

from groco.encoder.baselines import export_raw_pixels
from groco.index import map as index_map
from groco.index.build import build_index_dir, update_index_dir
from groco.index.neighbours import read_info
from groco.index.store import DB_NAME, EMBEDDED, Store

REPO = Path(__file__).resolve().parents[1]
CLASSES, PER_CLASS = 4, 60
FAST = {"progress": False, "n_epochs": 100}
"""100 UMAP epochs (500 by default below 10k items): the classes separate long before."""


def run_cli(*args: str, block_umap: bool = False) -> subprocess.CompletedProcess:
    """`groco ARGS` in a fresh interpreter (``block_umap``: as if umap-learn were missing),
    else in this one (umap-learn's compiled functions reused: seconds, not a JIT)."""
    if not block_umap:
        from typer.testing import CliRunner

        from groco.cli import app

        result = CliRunner().invoke(app, list(args))
        return subprocess.CompletedProcess(args, result.exit_code, result.stdout,
                                           result.stderr)
    prelude = "import sys; sys.modules['umap'] = None; " if block_umap else "import sys; "
    code = prelude + "from groco.cli import app; sys.argv = ['groco', *sys.argv[1:]]; app()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("enc") / "raw.onnx"
    export_raw_pixels(8, path, parity_images=2)
    return path


def build(root: Path, encoder: Path, per_class: int = PER_CLASS) -> tuple[Path, Path]:
    images = make_collection(root / "images", classes=CLASSES, per_class=per_class, size=8)
    index = root / "index"
    build_index_dir(images, encoder, index, progress=False)
    return images, index


@pytest.fixture(scope="module")
def mapped(encoder: Path, tmp_path_factory: pytest.TempPathFactory):
    """An index of 240 items with its map: (images, index, report)."""
    images, index = build(tmp_path_factory.mktemp("map"), encoder)
    report = index_map.compute_map(index, **FAST)
    return images, index, report


def leave_one_out_1nn(xy: np.ndarray, labels: np.ndarray) -> float:
    d = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float((labels[d.argmin(1)] == labels).mean())


def test_map_files_points_and_clusters(mapped) -> None:
    _, index, report = mapped
    n = CLASSES * PER_CLASS
    assert report.computed and report.count == n
    info = json.loads((index / "map.json").read_text())
    assert (index / info["points_file"]).is_file()
    assert not (index / "neighbours" / "work").exists(), "the work folder goes once done"
    assert not list(index.glob(".*.tmp"))
    data = index_map.read_map(index)
    with Store(index / DB_NAME, readonly=True) as store:
        ids, _, _ = store.embedded_locations()
        generation = store.generation
    np.testing.assert_array_equal(data.ids, ids)
    assert info["generation"] == generation and info["count"] == n
    assert data.xy.shape == (n, 2) and np.isfinite(data.xy).all()
    k = report.clusters
    assert k == index_map.default_clusters(n) == len(info["clusters"])
    assert sum(c["size"] for c in info["clusters"]) == n
    np.testing.assert_array_equal(np.bincount(data.cluster, minlength=k),
                                  [c["size"] for c in info["clusters"]])
    # representatives are members, nearest the centroid first
    for c in info["clusters"]:
        reps = [r["id"] for r in c["representatives"]]
        assert len(reps) == min(index_map.REPRESENTATIVES, c["size"])
        members = np.flatnonzero(data.cluster == c["id"])
        assert set(reps) <= set(data.ids[members].tolist())
        sims = data.sim[np.searchsorted(data.ids, reps)]
        assert (np.diff(sims) <= 1e-6).all()
        if c["size"]:  # the hue classes are far apart: each cluster is one class
            assert c["label_count"] == c["size"]
    labels = np.array(data.labels())
    assert leave_one_out_1nn(data.xy, labels) > 0.95


def test_map_and_dupes_share_one_stored_graph(mapped, tmp_path: Path) -> None:
    index = tmp_path / "index"
    shutil.copytree(mapped[1], index)
    info = read_info(index)
    with Store(index / DB_NAME, readonly=True) as store:
        assert info["generation"] == store.generation and info["count"] == store.count(EMBEDDED)
    assert info["exact"] and info["recall"] == 1.0  # 240 items: the exact graph
    report = index_map.compute_map(index, force=True, **FAST)
    assert report.graph is not None and not report.graph.built, "the map reuses the graph"
    assert read_info(index)["files"] == info["files"]
    result = run_cli("index", "dupes", str(index), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "neighbour graph reused" in result.stderr
    assert read_info(index)["files"] == info["files"]


def test_landmark_layout_keeps_the_classes_apart(mapped, tmp_path: Path,
                                                monkeypatch) -> None:
    """The route of large collections, forced on 240 items with 60 landmarks: the other
    180 are placed from the graph and refined over the whole graph."""
    index = tmp_path / "index"
    shutil.copytree(mapped[1], index)
    from groco.index.map import compute

    monkeypatch.setattr(compute, "LANDMARKS", 60)
    report = index_map.compute_map(index, force=True, landmarks_above=0, seed=0,
                                   progress=False)
    data = index_map.read_map(index)
    assert report.computed and data.info["layout"] == "landmarks"
    assert data.xy.shape == (CLASSES * PER_CLASS, 2) and np.isfinite(data.xy).all()
    assert len(np.unique(data.xy, axis=0)) == len(data.xy)
    assert leave_one_out_1nn(data.xy, np.array(data.labels())) > 0.95


def test_propagation_reaches_every_item_from_the_landmarks() -> None:
    from groco.index.map.layout import propagate

    # a chain 0-1-2-3-4 (each row: its two chain neighbours) and an island 5-6
    idx = np.array([[1, -1], [0, 2], [1, 3], [2, 4], [3, -1], [6, -1], [5, -1]])
    dist = np.where(idx >= 0, 0.5, np.inf).astype(np.float32)
    xy = np.zeros((7, 2), np.float32)
    xy[0], xy[4] = (0.0, 0.0), (4.0, 0.0)
    placed = np.zeros(7, bool)
    placed[[0, 4]] = True
    cluster = np.array([0, 0, 0, 0, 0, 1, 1])
    rounds = propagate(idx, dist, xy, placed, cluster)
    assert rounds == 2  # 1 and 3 first, then 2 between them
    np.testing.assert_allclose(xy[:5, 0], [0, 0, 2, 4, 4], atol=1e-3)
    # the island has no path to a landmark and no placed cluster mate: the median of all
    np.testing.assert_allclose(xy[5:], [[np.median([0, 0, 2, 4, 4]), 0]] * 2, atol=1e-3)


def test_map_is_up_to_date_on_rerun(mapped) -> None:
    _, index, _ = mapped
    points = json.loads((index / "map.json").read_text())["points_file"]
    again = index_map.compute_map(index, **FAST)
    assert again.up_to_date and not again.computed
    assert json.loads((index / "map.json").read_text())["points_file"] == points


@pytest.mark.slow
def test_map_json_cli(mapped) -> None:
    images, index, _ = mapped
    result = run_cli("index", "map", str(index), "--json", "--no-progress")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    data = index_map.read_map(index)
    assert out["count"] == len(out["items"]) == len(data.ids)
    assert len(out["clusters"]) == len(data.centroids)
    first = out["items"][0]
    assert set(first) == {"id", "path", "relpath", "x", "y", "cluster", "label"}
    assert Path(first["path"]).is_file() and Path(first["path"]).is_relative_to(images)
    by_id = {item["id"]: item for item in out["items"]}
    for i, (x, y), c in zip(data.ids[:20], data.xy[:20], data.cluster[:20], strict=True):
        assert by_id[int(i)]["cluster"] == int(c)
        assert by_id[int(i)]["x"] == pytest.approx(float(x), abs=1e-4)
        assert by_id[int(i)]["y"] == pytest.approx(float(y), abs=1e-4)


def _add_images(images: Path, per_class: int, seed: int) -> list[str]:
    """New noisy images of each hue class; their relpaths."""
    fresh = make_collection(images.parent / f"fresh{seed}", classes=CLASSES,
                            per_class=per_class, size=8, seed=seed)
    added = []
    for c in range(CLASSES):
        for f in sorted((fresh / f"class{c}").iterdir()):
            name = f"new{seed}_{f.name}"
            shutil.copy(f, images / f"class{c}" / name)
            added.append(f"class{c}/{name}")
    return added


def test_update_places_new_items_near_their_class(encoder: Path, tmp_path: Path) -> None:
    images, index = build(tmp_path, encoder, per_class=40)
    index_map.compute_map(index, **FAST)
    before = index_map.read_map(index)
    added = _add_images(images, per_class=4, seed=7)  # 16 new: 10% of the map
    for f in sorted((images / "class0").glob("img00*.png"))[:3]:
        f.unlink()
    report = update_index_dir(index, progress=False).map  # called from Python, as a user would
    assert report.summary() == "map: 16 new items placed, 3 removed, 173 on the map"
    after = index_map.read_map(index)
    assert after.info["placed"] == 16 and after.info["removed"] == 3
    with Store(index / DB_NAME, readonly=True) as store:
        rows = {r.path: r.id for r in store.iter_rows(EMBEDDED)}
        np.testing.assert_array_equal(after.ids, sorted(rows.values()))
        assert after.info["generation"] == store.generation
    # the items that stayed kept their coordinates
    old_pos = {int(i): p for p, i in enumerate(before.ids)}
    for p, i in enumerate(after.ids):
        if int(i) in old_pos:
            np.testing.assert_array_equal(after.xy[p], before.xy[old_pos[int(i)]])
    # each new item lands among its own class and in its class's cluster
    labels = np.array(after.labels())
    is_new = np.isin(after.ids, [rows[r] for r in added])
    assert is_new.sum() == 16
    old_xy, old_labels = after.xy[~is_new], labels[~is_new]
    for p in np.flatnonzero(is_new):
        nearest = ((old_xy - after.xy[p]) ** 2).sum(1).argsort()[:5]
        assert (old_labels[nearest] == labels[p]).mean() >= 0.8
    for c in after.clusters:
        assert c["size"] == int((after.cluster == c["id"]).sum())
        if c["size"]:
            assert c["label_count"] == c["size"]
    assert index_map.place_new_items(index, progress=False).placed == 0  # nothing left to do
    # many more new items than the layout saw: the update says a recompute is better
    _add_images(images, per_class=10, seed=8)
    report = update_index_dir(index, progress=False).map
    assert report.recompute_advised and "a full recompute would be better" in report.summary()
    assert index_map.read_map(index).info["recompute_advised"]
    # and `groco index map` recomputes a map that has placed items
    report = index_map.compute_map(index, **FAST)
    assert report.computed and index_map.read_map(index).info["placed"] == 0


def test_a_map_killed_in_its_layout_keeps_its_graph(mapped, tmp_path: Path,
                                                    monkeypatch) -> None:
    index = tmp_path / "index"
    shutil.copytree(mapped[1], index, ignore=shutil.ignore_patterns("map*", "neighbours"))
    from groco.index.map import compute

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compute, "fit_layout", killed)
    with pytest.raises(KeyboardInterrupt):
        index_map.compute_map(index, **FAST)
    assert read_info(index) is not None and not index_map.has_map(index)
    monkeypatch.undo()
    report = index_map.compute_map(index, **FAST)
    assert report.computed and not report.graph.built
    data = index_map.read_map(index)
    assert leave_one_out_1nn(data.xy, np.array(data.labels())) > 0.95


def test_without_umap_map_says_which_extra_and_update_still_works(mapped, tmp_path) -> None:
    _, index, _ = mapped
    result = run_cli("index", "map", str(index), "--force", block_umap=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: the embedding map needs umap-learn: pip install 'groco[map]'"]
    code = ("import sys; sys.modules['umap'] = None; import groco.index.map, "
            "groco.index.build; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_update_without_umap_places_at_the_neighbours_mean(encoder: Path, tmp_path: Path
                                                           ) -> None:
    images, index = build(tmp_path, encoder, per_class=20)
    index_map.compute_map(index, **FAST)
    new = images / "class2" / "late.png"
    Image.open(sorted((images / "class2").iterdir())[0]).save(new)
    result = run_cli("index", "update", str(index), "--no-progress", block_umap=True)
    assert result.returncode == 0, result.stderr
    assert "map: 1 new items placed, 0 removed, 81 on the map (placed at their neighbours' " \
           "mean: umap-learn missing" in result.stdout
    data = index_map.read_map(index)
    labels = np.array(data.labels())
    with Store(index / DB_NAME, readonly=True) as store:
        p = int(np.searchsorted(data.ids, store.row_by_path("class2/late.png").id))
    nearest = ((data.xy - data.xy[p]) ** 2).sum(1).argsort()[1:6]
    assert (labels[nearest] == "class2").all()


# ----------------------------------------------------------------------------- the Map tab


def test_map_tab_draws_clicks_into_a_search_and_lists_a_cluster(mapped, tmp_path) -> None:
    from types import SimpleNamespace

    from groco.app.map_tab import HEIGHT, WIDTH, MapHandlers
    from groco.app.state import AppState

    _, index, _ = mapped
    state = AppState.open(index, thumbnails_dir=tmp_path / "thumbs")
    try:
        handlers = MapHandlers(state)
        image, summary, choices = handlers.load("cluster")
        assert image.size == (WIDTH, HEIGHT) and "240 items" in summary
        assert handlers.load("folder")[0].size == (WIDTH, HEIGHT)
        view = handlers.view()
        assert len(choices["choices"]) == len(view.data.centroids)
        # a click on an item's pixel searches from that item
        p = 17
        px, py = view.pixels[p]
        gallery, status, ids = handlers.click(5, SimpleNamespace(index=[px, py]))
        item = int(view.data.ids[p])
        row = state.searcher.row(item)
        assert ids[0] == item and gallery[0][1] == f"clicked · {row.path}"
        assert row.path in status and len(ids) == 6
        assert all(Path(thumb).parent == tmp_path / "thumbs" for thumb, _ in gallery)
        labels = {state.searcher.row(i).label for i in ids[1:]}
        assert labels == {row.label}
        # a cluster: its representatives first, then others of it
        fact = view.data.clusters[0]
        gallery, status, ids = handlers.cluster(0)
        reps = [r["id"] for r in fact["representatives"]]
        assert ids[:len(reps)] == reps and gallery[0][1].startswith("representative")
        assert set(ids) <= set(view.data.ids[view.data.cluster == 0].tolist())
        # the API's points: all of them, or a uniform sample
        every = handlers.points(10_000)
        assert every["count"] == every["shown"] == 240 and not every["sampled"]
        assert set(every["points"][0]) == {"id", "relpath", "x", "y", "cluster", "label"}
        some = handlers.points(50, seed=1)
        assert some["shown"] == 50 and some["sampled"] and some["count"] == 240
        assert len(some["clusters"]) == len(view.data.centroids)
    finally:
        state.close()


def test_map_points_named_endpoint(mapped, tmp_path) -> None:
    import gradio as gr
    from gradio_client import Client

    from groco.app.map_tab import map_tab
    from groco.app.state import AppState

    _, index, _ = mapped
    state = AppState.open(index, thumbnails_dir=tmp_path / "thumbs")
    with gr.Blocks() as app, gr.Tab("Map") as tab:
        map_tab(tab, state)
    _, url, _ = app.launch(prevent_thread_lock=True, quiet=True)
    try:
        answer = Client(url, verbose=False).predict(max_points=30, seed=0,
                                                    api_name="/map_points")
        assert answer["count"] == 240 and answer["shown"] == len(answer["points"]) == 30
        assert {p["cluster"] for p in answer["points"]} <= set(range(len(answer["clusters"])))
    finally:
        app.close()
        state.close()


def test_map_tab_hover_box_and_a_uniform_sample_past_max_drawn(mapped, tmp_path,
                                                               monkeypatch) -> None:
    from types import SimpleNamespace

    from groco.app import map_tab
    from groco.app.api import file_url
    from groco.app.state import AppState

    _, index, _ = mapped
    state = AppState.open(index, thumbnails_dir=tmp_path / "thumbs")
    try:
        handlers = map_tab.MapHandlers(state)
        view = handlers.view()
        assert not view.sampled and "every item drawn" in handlers.load("cluster")[1]
        # hover: the item under the pointer, its thumbnail from the cache; nothing far away
        p = 40
        hit = handlers.hover(*view.pixels[p])
        row = state.searcher.row(int(view.data.ids[p]))
        assert hit["id"] == row.id and row.path in hit["caption"]
        assert hit["thumbnail"] == file_url(state.thumbnails.path_for(
            state.searcher.root / row.path, row.hash))
        assert hit["thumbnail"].startswith(file_url(tmp_path / "thumbs"))
        gaps = np.sqrt(((view.pixels - [1.0, 1.0]) ** 2).sum(1)).min()
        assert gaps > map_tab.HOVER_PX and handlers.hover(1.0, 1.0) is None
        assert handlers.hover("x", None) is None
        # a box: exactly the items whose pixels are inside, every one shown up to BOX_SHOWN
        (x0, y0), (x1, y1) = view.pixels[p] - 25, view.pixels[p] + 25
        inside = ((view.pixels >= [x0, y0]) & (view.pixels <= [x1, y1])).all(1)
        gallery, status, ids = handlers.box(SimpleNamespace(box=[x1, y1, x0, y0]))
        want = sorted(view.data.ids[inside].tolist())
        assert 0 < len(want) <= map_tab.BOX_SHOWN and sorted(ids) == want
        assert f"{len(want)} items in the box (all shown)" in status and len(gallery) == len(ids)
        gallery, status, ids = handlers.box(SimpleNamespace(box=[0, 0, 5, 5]))
        assert ids == [] and status == "no item in the box"
        # past MAX_DRAWN: a uniform sample drawn, and the page says so; hover and click find
        # drawn items only; a box still selects every item
        monkeypatch.setattr(map_tab, "MAX_DRAWN", 100)
        handlers = map_tab.MapHandlers(state)
        _, summary, _ = handlers.load("folder")
        view = handlers.view()
        assert view.sampled and len(np.unique(view.drawn)) == 100
        assert "240 items" in summary and "a uniform sample of 100 drawn" in summary
        drawn = set(view.drawn.tolist())
        for q in np.random.default_rng(0).uniform([0, 0], [map_tab.WIDTH, map_tab.HEIGHT],
                                                  (50, 2)):
            assert view.nearest(*q) in drawn
        hidden = next(r for r in range(240) if r not in drawn)
        hit = handlers.hover(*view.pixels[hidden])
        assert hit is None or hit["id"] != int(view.data.ids[hidden])
        _, status, ids = handlers.box(SimpleNamespace(box=[0, 0, map_tab.WIDTH,
                                                           map_tab.HEIGHT]))
        assert "240 items in the box" in status and "a uniform sample of 96 shown" in status
        assert len(set(ids)) == map_tab.BOX_SHOWN
    finally:
        state.close()
