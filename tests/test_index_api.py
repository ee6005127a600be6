"""The one read API of an index (groco.index.api): a label filter done inside the index
returns k of that label whenever the collection holds k, however rare the label, on every
index type; pages, label counts, duplicate groups and the map through the same object."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from groco.index.dupes import DEFAULT_THRESHOLD

COMMON, RARE = 55, 5
INDEX_TYPES = ("auto", "HNSW32", "IVF4,Flat")


def _images(root: Path) -> Path:
    """55 reddish images in ``common/``, 5 bluish ones in ``rare/`` and a byte copy of one
    common image: a reddish query has every common image nearer than any rare one."""
    rng = np.random.default_rng(0)
    for folder, count, hue in (("common", COMMON, (220, 40, 30)), ("rare", RARE, (30, 60, 220))):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            pixels = np.clip(np.array(hue) + rng.normal(0, 40, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / folder / f"img{i:03d}.png")
    (root / "common" / "img000-copy.png").write_bytes((root / "common" / "img000.png")
                                                      .read_bytes())
    return root


@pytest.fixture(scope="module")
def indexes(encoder_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same images indexed as Flat (``auto`` at this size), HNSW and IVF."""
    from groco.index.build import build_index_dir

    base = tmp_path_factory.mktemp("api")
    images = _images(base / "images")
    out = {}
    for index_type in INDEX_TYPES:
        out[index_type] = base / index_type.replace(",", "-")
        build_index_dir(images, encoder_file, out[index_type], index_type=index_type,
                        batch_size=16, progress=False)
    return out


@pytest.fixture
def reader(indexes):
    from groco.index.api import IndexReader

    with IndexReader(indexes["auto"]) as opened:
        yield opened


@pytest.mark.parametrize("exact_max", ["default", 0])
@pytest.mark.parametrize("index_type", INDEX_TYPES)
def test_label_filter_returns_k_of_a_rare_label(indexes, index_type, exact_max, monkeypatch):
    from groco.index.api import IndexReader, filtered

    if exact_max == 0:  # FAISS with the selector (and its fallback) even for a rare label
        monkeypatch.setattr(filtered, "EXACT_MAX", 0)
    with IndexReader(indexes[index_type]) as reader:
        query = reader.embed_image(reader.root / "common" / "img003.png")
        nearest = reader.search_vector(query, 2 * 20)  # what a 20x over-fetch of k=2 saw
        assert sum(r.label == "rare" for r in nearest) < 2
        for k in (1, 2, RARE):
            results = reader.search_vector(query, k, label="rare")
            assert len(results) == k and {r.label for r in results} == {"rare"}
            ranks = [r.rank_score for r in results  # the post-processed order after copies
                     if r.score < DEFAULT_THRESHOLD]
            assert ranks == sorted(ranks, reverse=True)
        every = reader.search_vector(query, 20, label="rare")  # fewer only when fewer
        assert len(every) == RARE and len({r.id for r in every}) == RARE
        common = reader.search_vector(query, 10, label="common")
        assert len(common) == 10 and common[0].relpath == "common/img003.png"
        with pytest.raises(ValueError, match="Unknown folder"):
            reader.search_vector(query, 3, label="elsewhere")


def test_label_filter_scores_and_order_are_the_exact_ones(reader):
    query = reader.embed_image(reader.root / "common" / "img007.png")
    everything = reader.search_vector(query, COMMON + RARE + 1)
    rare = [r for r in everything if r.label == "rare"]
    got = reader.search_vector(query, RARE, label="rare")
    assert [r.id for r in got] == [r.id for r in rare]
    assert [r.score for r in got] == pytest.approx([r.score for r in rare], abs=1e-5)
    floor = sorted(r.score for r in rare)[-3]  # the encoder's cosine: 3 reach it
    assert [r.id for r in reader.search_vector(query, RARE, label="rare", min_score=floor)] \
        == [r.id for r in rare if r.score >= floor]


@pytest.mark.parametrize("index_type", INDEX_TYPES)
def test_selector_search_stays_inside_the_subset(indexes, index_type):
    from groco.index.api import IndexReader
    from groco.index.api.filtered import search_selected

    with IndexReader(indexes[index_type]) as reader:
        query = reader.embed_image(reader.root / "rare" / "img001.png")[None]
        subset = np.array([r.id for r in reader.search_vector(query[0], 60)][::3], np.int64)
        scores, ids = search_selected(reader._searcher.index, query, 8, subset)
        found = ids[0][ids[0] >= 0]
        assert len(found) and np.isin(found, subset).all()


def test_more_like_with_a_label_leaves_the_item_out(reader):
    item = reader.row("rare/img002.png")
    results = reader.more_like("rare/img002.png", RARE, label="rare")
    assert len(results) == RARE - 1 and item.id not in {r.id for r in results}
    assert {r.label for r in results} == {"rare"}


def test_pages_and_label_counts(reader):
    assert reader.label_counts() == {"common": COMMON + 1, "rare": RARE}
    first = reader.page(1, 25, order="folder")
    assert first.pages == 3 and first.total == COMMON + 1 + RARE
    ids = [i for n in range(1, 4) for i in reader.page(n, 25, order="folder").ids]
    assert sorted(ids) == sorted({reader.row(i).id for i in ids})
    assert [reader.row(i).label for i in ids] == ["common"] * (COMMON + 1) + ["rare"] * RARE
    rare = reader.page(1, 25, "rare", seed=1)
    assert rare.total == RARE and {reader.row(i).label for i in rare.ids} == {"rare"}
    assert reader.page(1, 25, seed=1).ids != reader.page(1, 25, seed=2).ids
    with pytest.raises(ValueError, match="Unknown folder"):
        reader.page(1, 25, "elsewhere")


def test_duplicate_groups_as_groco_index_dupes(reader, indexes):
    from groco.index.dupes import find_duplicate_groups

    groups = reader.duplicate_groups(1.0)
    assert ["common/img000-copy.png", "common/img000.png"] in [sorted(g.relpaths)
                                                               for g in groups]
    assert [g.relpaths for g in groups] == [g.relpaths for g in
                                            find_duplicate_groups(indexes["auto"], 1.0)]
    scan = reader.duplicate_scan(0.9)
    assert [g.relpaths for g in scan.groups(1.0)] == [g.relpaths for g in groups]


def test_no_map_yet(reader):
    from groco.index.api import IndexDirError

    assert not reader.has_map() and reader.map_stamp() is None
    with pytest.raises(IndexDirError, match="no map yet"):
        reader.read_map()


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF8,Flat", "IVF8_HNSW32,Flat",
                                     "OPQ4,IVF8_HNSW32,PQ4x4"])
def test_every_index_groco_builds_takes_the_selector(factory):
    """groco's index types (faiss.choose), wrapped as groco wraps them: a selector search
    answers from the subset alone, and an exact one equals brute force over the subset."""
    import faiss

    from groco.index.api.filtered import search_selected
    from groco.index.faiss.factory import is_exact, make_index, with_ids

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(600, 16)).astype(np.float32)
    faiss.normalize_L2(vectors)
    ids = np.arange(600, dtype=np.int64) * 3 + 5
    index = with_ids(make_index(16, factory))
    index.train(vectors)
    index.add_with_ids(vectors, ids)
    subset = ids[::40]
    scores, found = search_selected(index, vectors[:1], 5, subset)
    assert (found[0] >= 0).any() and np.isin(found[0][found[0] >= 0], subset).all()
    if is_exact(index):
        exact = np.argsort(-(vectors[::40] @ vectors[0]))[:5]
        assert found[0].tolist() == subset[exact].tolist()


def test_a_served_index_blocks_onnx_runtime_threads_between_queries(indexes):
    """A server's encoder does not spin its ONNX Runtime threads between queries (their CPU
    goes to answering requests); it spins when asked, and answers the same either way."""
    from PIL import Image

    from groco.app.settings import AppSettings
    from groco.app.state import AppState

    key = "session.intra_op.allow_spinning"
    answers = {}
    for spinning in (False, True):
        state = AppState.open(indexes["auto"],
                              settings=AppSettings(encoder_spinning=spinning))
        try:
            options = state.searcher.encoder.session.get_session_options()
            assert options.get_session_config_entry(key) == ("1" if spinning else "0")
            query = Image.open(min(state.searcher.root.rglob("*.png")))
            answers[spinning] = [(r.id, round(r.score, 5))
                                 for r in state.search_image(query, 5)]
        finally:
            state.close()
    assert answers[False] == answers[True]
