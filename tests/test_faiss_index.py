"""FAISS core of the index (groco.index.faiss): choice rules, build/search with ids, tuning
(in RAM, in place and through an index directory), save/load."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from conftest import embeddings_by_path, make_collection

from groco.index.build import build_index_dir, update_index_dir
from groco.index.faiss import choose
from groco.index.faiss.build import build_index
from groco.index.faiss.factory import apply_search_params, unwrap
from groco.index.faiss.io import load_index, save_index
from groco.index.faiss.query import recall_at_k, search
from groco.index.faiss.source import ArraySource
from groco.index.faiss.spec import BuildSpec, TuningSpec
from groco.index.faiss.tune import Split, build_tuned_index, retune, tune_search_params
from groco.index.manifest import read_manifest
from groco.index.search import Searcher

GIB = 2**30


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """Tiny workloads run faster on one OpenMP thread, and far faster on a busy machine."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 50) -> np.ndarray:
    """Unit vectors around ``clusters`` fixed centres; ``seed`` only draws the points."""
    centres = np.random.default_rng(12345).standard_normal((clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + 0.8 * rng.standard_normal((n, dim))
    x = x.astype(np.float32)
    faiss.normalize_L2(x)
    return x


def scrambled_ids(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n).astype(np.int64) * 7 + 1000


def built(x: np.ndarray, ids: np.ndarray | None, factory: str = "auto",
          **build: object) -> faiss.Index:
    """The one build routine over arrays (untuned)."""
    return build_index(ArraySource(x, ids), BuildSpec(factory, **build))


# ----------------------------------------------------------------------------- package


def test_the_package_does_not_shadow_the_faiss_library() -> None:
    """``groco.index.faiss`` is groco's package; ``import faiss`` in it and beside it (in
    ``groco.index``) is the FAISS library."""
    from groco.index import indexfile
    from groco.index.faiss import build as build_module

    assert build_module.faiss is faiss is indexfile.faiss
    assert hasattr(faiss, "index_factory") and faiss.__name__ == "faiss"


# ----------------------------------------------------------------------------- choice


def test_small_collections_are_flat() -> None:
    assert choose.choose_index_type(1, 384, GIB) == "Flat"
    assert choose.choose_index_type(choose.FLAT_MAX_N - 1, 384, 1) == "Flat"


def test_mid_collections_with_room_are_hnsw() -> None:
    assert choose.choose_index_type(choose.FLAT_MAX_N, 384, GIB) == "HNSW32"
    # 1M x 384: ~1.8 GB of graph and vectors, fits in 4 GiB
    assert choose.choose_index_type(1_000_000, 384, 4 * GIB) == "HNSW32"


def test_tight_memory_gives_ivf_flat() -> None:
    n, dim = 500_000, 384
    # HNSW32 needs ~1.1e9 bytes here (estimate), IVF4096,Flat ~0.93e9
    assert choose.choose_index_type(n, dim, 1_000_000_000) == "IVF4096,Flat"
    k = choose.ivf_centroids(n)
    assert 4 * np.sqrt(n) <= k <= 16 * np.sqrt(n) and k & (k - 1) == 0
    assert n >= choose.IVF_MIN_POINTS_PER_CENTROID * k
    # from 1M on the coarse quantizer is an HNSW graph
    assert choose.choose_index_type(2_000_000, dim, int(2_000_000 * 4 * dim * 1.3)) == (
        "IVF8192_HNSW32,Flat"
    )


def test_huge_or_memory_bound_gives_opq_ivf_hnsw_pq() -> None:
    factory = choose.choose_index_type(1_000_000_000, 384, 64 * GIB)
    assert factory == "OPQ48,IVF131072_HNSW32,PQ48"
    # nothing fits: the most compact code, still a valid factory string
    assert choose.choose_index_type(1_000_000, 384, 1).endswith(",PQ4")
    # M not dividing dim: OPQ also projects to a multiple of M
    assert choose.choose_index_type(1_000_000, 100, 60_000_000).startswith("OPQ32_96,")


def test_ivf_centroids_respects_training_points() -> None:
    for n in (10_000, 20_000, 123_456, 10**6, 10**8):
        k = choose.ivf_centroids(n)
        assert n >= choose.IVF_MIN_POINTS_PER_CENTROID * k
        assert k <= 16 * np.sqrt(n)


@pytest.mark.parametrize("n", [20_000, 2_000_000])
@pytest.mark.parametrize("memory", [10**7, 10**8, 10**9, 10**11])
def test_every_choice_is_a_valid_factory(n: int, memory: int) -> None:
    factory = choose.choose_index_type(n, 64, memory)
    assert faiss.index_factory(64, factory, faiss.METRIC_INNER_PRODUCT).d == 64


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError):
        choose.choose_index_type(0, 384, GIB)
    with pytest.raises(ValueError):
        choose.choose_index_type(10, 0, GIB)


# ----------------------------------------------------------------------------- build


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF64,Flat"])
def test_each_vector_is_its_own_nearest_neighbour(factory: str) -> None:
    x = clustered(5000, 32)
    ids = scrambled_ids(len(x))
    index = built(x, ids, factory)
    assert index.ntotal == len(x)
    if factory == "HNSW32":
        apply_search_params(index, {"efSearch": 64})
    scores, found = search(index, x, k=5)
    np.testing.assert_array_equal(found[:, 0], ids)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)
    # one query (the single-thread path) gives the same answer
    s1, i1 = search(index, x[123], k=5)
    assert i1.shape == (1, 5) and i1[0, 0] == ids[123]


def test_auto_picks_and_carries_ids() -> None:
    x = clustered(3000, 32)
    index = built(x, None, "auto")
    assert isinstance(faiss.downcast_index(index), faiss.IndexIDMap2)
    assert isinstance(unwrap(index), faiss.IndexFlat)
    np.testing.assert_array_equal(faiss.vector_to_array(index.id_map), np.arange(3000))


def test_auto_with_tight_memory_builds_ivf() -> None:
    x = clustered(12_000, 32)
    index = built(x, scrambled_ids(len(x)), memory_bytes=12_000 * 4 * 32 * 2)
    ivf = faiss.try_extract_index_ivf(index)
    assert ivf is not None and ivf.nlist == choose.ivf_centroids(len(x)) == 256


def test_explicit_factory_is_honoured() -> None:
    x = clustered(4000, 32)
    index = built(x, None, "IVF32,Flat")
    ivf = faiss.extract_index_ivf(index)
    assert ivf.nlist == 32 and ivf.metric_type == faiss.METRIC_INNER_PRODUCT
    index = built(x, None, "HNSW16")
    hnsw = unwrap(index)
    assert isinstance(hnsw, faiss.IndexHNSW) and hnsw.hnsw.nb_neighbors(0) == 32
    index = built(x, None, "IDMap2,Flat")
    own = faiss.downcast_index(index)
    assert isinstance(own, faiss.IndexIDMap2) and isinstance(unwrap(own), faiss.IndexFlat)
    small = clustered(1000, 16)
    pq = built(small, None, "OPQ4,IVF8_HNSW32,PQ4")
    assert isinstance(faiss.downcast_index(pq), faiss.IndexPreTransform)
    assert pq.ntotal == len(small) and faiss.extract_index_ivf(pq).nlist == 8


@pytest.mark.parametrize("factory", ["NotAnIndex", "PQ7", "", "IVF10,Flat,Flat"])
def test_invalid_factory_raises_value_error(factory: str) -> None:
    with pytest.raises(ValueError, match="factory"):
        built(clustered(500, 32), None, factory)


def test_bad_inputs_raise() -> None:
    x = clustered(100, 16)
    with pytest.raises(ValueError, match="distinct"):
        built(x, np.zeros(100, dtype=np.int64), factory="Flat")
    with pytest.raises(ValueError, match="shape"):
        built(x, np.arange(99), factory="Flat")
    with pytest.raises(ValueError, match="zeros"):
        built(np.zeros((3, 16), np.float32), None, factory="Flat")
    with pytest.raises(ValueError, match="at least"):
        built(x, None, "IVF256,Flat")
    index = built(x, None, "Flat")
    with pytest.raises(ValueError, match="dim"):
        search(index, np.ones((1, 8), np.float32), k=3)


def test_unnormalised_input_is_normalised() -> None:
    x = clustered(1000, 16)
    index = built(x * 3.0, None, factory="Flat")
    scores, found = search(index, x[:10] * 0.5, k=1)
    np.testing.assert_array_equal(found[:, 0], np.arange(10))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


# ----------------------------------------------------------------------------- tuning


def test_build_tuned_index_holds_out_then_adds_back() -> None:
    x = clustered(20_000, 32)
    ids = scrambled_ids(len(x))
    index, params = build_tuned_index(ArraySource(x, ids), BuildSpec("HNSW32"),
                                      TuningSpec(n_queries=300))
    assert index.ntotal == len(x) and params["recall@10"] >= 0.95
    assert unwrap(index).hnsw.efSearch == params["efSearch"]
    assert sorted(faiss.vector_to_array(index.id_map)) == sorted(ids)
    stored = np.stack([index.reconstruct(int(i)) for i in ids])
    np.testing.assert_array_equal(stored, x)  # held-out vectors came back under their ids
    queries = clustered(300, 32, seed=7)
    exact = ids[faiss.knn(queries, x, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]]
    assert recall_at_k(search(index, queries, 10)[1], exact, 10) >= 0.93


def test_build_tuned_index_auto_flat_and_explicit_queries() -> None:
    x = clustered(2000, 16)
    index, params = build_tuned_index(ArraySource(x), BuildSpec(), TuningSpec())
    assert params == {"recall@10": 1.0} and index.ntotal == 2000
    ivf_index = built(x, None, "IVF16,Flat")
    queries = clustered(100, 16, seed=9)
    split = Split(ArraySource(x), held=ArraySource(queries))
    params = tune_search_params(ivf_index, split, TuningSpec(target_recall=0.99))
    exact = faiss.knn(queries, x, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    got = recall_at_k(search(ivf_index, queries, 10)[1], exact, 10)
    assert got == pytest.approx(params["recall@10"], abs=1e-4) and got >= 0.99
    with pytest.raises(ValueError, match="holds"):
        tune_search_params(ivf_index, Split(ArraySource(x[:100])), TuningSpec())


def test_in_place_retuning_is_the_fresh_build_tuning() -> None:
    """An index edited in place (``groco index update``) is tuned by the fresh build's
    procedure: the same held-out queries, taken out of the index while it is searched."""
    x = clustered(8000, 32)
    ids = scrambled_ids(len(x))
    spec = TuningSpec(n_queries=300)
    index, fresh = build_tuned_index(ArraySource(x, ids), BuildSpec("IVF64,Flat"), spec)
    apply_search_params(index, {"nprobe": 1})
    again = retune(index, ArraySource(x, ids), spec)
    assert again == fresh and faiss.extract_index_ivf(index).nprobe == fresh["nprobe"]
    assert index.ntotal == len(x)
    np.testing.assert_array_equal(np.sort(np.concatenate(
        [faiss.rev_swig_ptr(index.invlists.get_ids(i), index.invlists.list_size(i))
         for i in range(index.nlist)])), np.sort(ids))  # the held-out ones came back


def test_tuning_flat_is_exact() -> None:
    x = clustered(2000, 32)
    flat = built(x, None, "Flat")
    assert tune_search_params(flat, Split(ArraySource(x)), TuningSpec()) == {"recall@10": 1.0}


def test_too_few_vectors_stay_untuned_and_bad_specs_raise() -> None:
    x = clustered(8, 16)
    index, params = build_tuned_index(ArraySource(x), BuildSpec("HNSW8"), TuningSpec())
    assert index.ntotal == 8 and np.isnan(params["recall@10"])
    for bad in ({"target_recall": 0.0}, {"target_recall": 1.01}, {"k": 0}):
        with pytest.raises(ValueError):
            TuningSpec(**bad)


def test_recall_at_k() -> None:
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    approx = np.array([[3, 2, 9], [-1, -1, -1]])
    assert recall_at_k(approx, exact, 3) == pytest.approx((2 / 3 + 0) / 2)


def test_unknown_search_param_raises() -> None:
    index = built(clustered(200, 16), None, "Flat")
    with pytest.raises(ValueError, match="efSearch"):
        apply_search_params(index, {"efSearch": 32})


# ----------------------------------------------------------------------------- files


def test_params_survive_save_and_load(tmp_path) -> None:
    x = clustered(20_000, 32)
    ids = scrambled_ids(len(x))
    index = built(x, ids, factory="IVF128,Flat")
    params = tune_search_params(index, Split(ArraySource(x, ids)), TuningSpec(n_queries=200))
    path = tmp_path / "index.faiss"
    save_index(index, path)
    queries = clustered(50, 32, seed=3)
    expected = search(index, queries, 10)

    loaded = load_index(path, params)
    assert faiss.extract_index_ivf(loaded).nprobe == params["nprobe"]
    for got, want in zip(search(loaded, queries, 10), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    # a loaded index with other settings is brought back by the recorded params
    faiss.extract_index_ivf(loaded).nprobe = 1
    apply_search_params(loaded, params)
    assert faiss.extract_index_ivf(loaded).nprobe == params["nprobe"]


def test_hnsw_round_trip_keeps_ids_and_ef(tmp_path) -> None:
    x = clustered(3000, 16)
    ids = scrambled_ids(len(x))
    index = built(x, ids, factory="HNSW32")
    save_index(index, tmp_path / "h.faiss")
    loaded = load_index(tmp_path / "h.faiss", {"efSearch": 48, "recall@10": 0.99})
    assert unwrap(loaded).hnsw.efSearch == 48
    np.testing.assert_array_equal(loaded.reconstruct(int(ids[5])), x[5])


def test_atomic_save_leaves_no_temp_files(tmp_path, monkeypatch) -> None:
    x = clustered(500, 16)
    path = tmp_path / "index.faiss"
    save_index(built(x, None, "Flat"), path)
    save_index(built(x[:100], None, "Flat"), path)  # overwrite
    assert os.listdir(tmp_path) == ["index.faiss"]
    assert load_index(path).ntotal == 100

    def broken(index, target):  # write a partial file, then fail
        with open(target, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save_index(built(x, None, "Flat"), path)
    assert os.listdir(tmp_path) == ["index.faiss"]
    monkeypatch.undo()
    assert load_index(path).ntotal == 100


def test_load_missing_file_raises(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_index(tmp_path / "nope.faiss")


# ----------------------------------------------------------------------------- index dirs

FAST = {"batch_size": 32, "shard_size": 64, "workers": 1, "progress": False}
FORCED = "IVF32,Flat"  # an approximate index, so its nprobe is what tuning chose


@pytest.fixture(scope="module")
def tuned_dir(encoder_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """(images, index dir built with an IVF forced, images of the same classes that are
    not in it)."""
    base = tmp_path_factory.mktemp("tuned")
    images = make_collection(base / "images", classes=4, per_class=40)
    build_index_dir(images, encoder_file, base / "index", index_type=FORCED, **FAST)
    unseen = make_collection(base / "unseen", classes=4, per_class=8, seed=11)
    return images, base / "index", unseen


def recall_on_unseen(index_dir: Path, unseen: Path) -> float:
    """Mean recall@10 of groco's search (:class:`Searcher`) against exact search over the
    stored embeddings, for query images that are not in the index."""
    stored = embeddings_by_path(index_dir)
    paths = np.array(sorted(stored))
    matrix = np.stack([stored[p] for p in paths])
    recalls = []
    with Searcher(index_dir) as searcher:
        for query in sorted(unseen.rglob("*.png")):
            vector = searcher.embed_image(query)
            exact = set(paths[np.argsort(-(matrix @ vector), kind="stable")[:10]])
            found = {r.relpath for r in searcher.search_image(query, k=10)}
            recalls.append(len(found & exact) / 10)
    return float(np.mean(recalls))


def test_search_reaches_the_target_on_images_not_in_the_index(tuned_dir) -> None:
    """What a user relies on: the manifest's recall target holds for new images of the
    collection, and the tuned parameter is what a reloaded index searches with."""
    _, index_dir, unseen = tuned_dir
    manifest = read_manifest(index_dir)
    assert manifest["index_type"] == FORCED
    assert recall_on_unseen(index_dir, unseen) >= manifest["target_recall"]
    with Searcher(index_dir) as searcher:
        nprobe = faiss.extract_index_ivf(searcher.index).nprobe
    assert nprobe == manifest["search_params"]["nprobe"] < 32  # tuned, not exhaustive


def test_an_update_is_tuned_like_a_fresh_build(tuned_dir, encoder_file, tmp_path) -> None:
    """``groco index update`` re-tunes an index it edits in place by the fresh build's
    procedure: retuned to another target, it gets the parameters (and the measured recall)
    of a fresh build of the same collection to that target."""
    images, index_dir, unseen = tuned_dir
    updated = tmp_path / "updated"
    shutil.copytree(index_dir, updated)
    update_index_dir(updated, target_recall=0.9, **FAST)
    fresh = tmp_path / "fresh"
    build_index_dir(images, encoder_file, fresh, index_type=FORCED, target_recall=0.9,
                    **FAST)
    got, want = read_manifest(updated), read_manifest(fresh)
    assert got["index_file"] != read_manifest(index_dir)["index_file"]  # a new state
    assert (got["search_params"], got["recall_at_10"]) == (want["search_params"],
                                                           want["recall_at_10"])
    assert recall_on_unseen(updated, unseen) >= 0.9
