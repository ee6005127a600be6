"""FAISS core of the index: choice rules, build/search with ids, tuning, save/load."""

from __future__ import annotations

import os

import faiss
import numpy as np
import pytest

from groco.index import faiss_index as fi

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


# ----------------------------------------------------------------------------- choice


def test_small_collections_are_flat() -> None:
    assert fi.choose_index_type(1, 384, GIB) == "Flat"
    assert fi.choose_index_type(fi.FLAT_MAX_N - 1, 384, 1) == "Flat"


def test_mid_collections_with_room_are_hnsw() -> None:
    assert fi.choose_index_type(fi.FLAT_MAX_N, 384, GIB) == "HNSW32"
    # 1M x 384: ~1.8 GB of graph and vectors, fits in 4 GiB
    assert fi.choose_index_type(1_000_000, 384, 4 * GIB) == "HNSW32"


def test_tight_memory_gives_ivf_flat() -> None:
    n, dim = 500_000, 384
    # HNSW32 needs ~1.1e9 bytes here (estimate), IVF4096,Flat ~0.93e9
    assert fi.choose_index_type(n, dim, 1_000_000_000) == "IVF4096,Flat"
    k = fi.ivf_centroids(n)
    assert 4 * np.sqrt(n) <= k <= 16 * np.sqrt(n) and k & (k - 1) == 0
    assert n >= fi.IVF_MIN_POINTS_PER_CENTROID * k
    # from 1M on the coarse quantizer is an HNSW graph
    assert fi.choose_index_type(2_000_000, dim, int(2_000_000 * 4 * dim * 1.3)) == (
        "IVF8192_HNSW32,Flat"
    )


def test_huge_or_memory_bound_gives_opq_ivf_hnsw_pq() -> None:
    factory = fi.choose_index_type(1_000_000_000, 384, 64 * GIB)
    assert factory == "OPQ48,IVF131072_HNSW32,PQ48"
    # nothing fits: the most compact code, still a valid factory string
    assert fi.choose_index_type(1_000_000, 384, 1).endswith(",PQ4")
    # M not dividing dim: OPQ also projects to a multiple of M
    assert fi.choose_index_type(1_000_000, 100, 60_000_000).startswith("OPQ32_96,")


def test_ivf_centroids_respects_training_points() -> None:
    for n in (10_000, 20_000, 123_456, 10**6, 10**8):
        k = fi.ivf_centroids(n)
        assert n >= fi.IVF_MIN_POINTS_PER_CENTROID * k
        assert k <= 16 * np.sqrt(n)


@pytest.mark.parametrize("n", [20_000, 2_000_000])
@pytest.mark.parametrize("memory", [10**7, 10**8, 10**9, 10**11])
def test_every_choice_is_a_valid_factory(n: int, memory: int) -> None:
    factory = fi.choose_index_type(n, 64, memory)
    assert faiss.index_factory(64, factory, faiss.METRIC_INNER_PRODUCT).d == 64


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError):
        fi.choose_index_type(0, 384, GIB)
    with pytest.raises(ValueError):
        fi.choose_index_type(10, 0, GIB)


# ----------------------------------------------------------------------------- build


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF64,Flat"])
def test_each_vector_is_its_own_nearest_neighbour(factory: str) -> None:
    x = clustered(5000, 32)
    ids = scrambled_ids(len(x))
    index = fi.build_index(x, ids, factory=factory)
    assert index.ntotal == len(x)
    if factory == "HNSW32":
        fi.apply_search_params(index, {"efSearch": 64})
    scores, found = fi.search(index, x, k=5)
    np.testing.assert_array_equal(found[:, 0], ids)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)
    # one query (the single-thread path) gives the same answer
    s1, i1 = fi.search(index, x[123], k=5)
    assert i1.shape == (1, 5) and i1[0, 0] == ids[123]


def test_auto_picks_and_carries_ids() -> None:
    x = clustered(3000, 32)
    index = fi.build_index(x, None, factory="auto")
    assert isinstance(faiss.downcast_index(index), faiss.IndexIDMap2)
    assert isinstance(fi._unwrap(index), faiss.IndexFlat)
    np.testing.assert_array_equal(faiss.vector_to_array(index.id_map), np.arange(3000))


def test_auto_with_tight_memory_builds_ivf() -> None:
    x = clustered(12_000, 32)
    index = fi.build_index(x, scrambled_ids(len(x)), memory_bytes=12_000 * 4 * 32 * 2)
    ivf = faiss.try_extract_index_ivf(index)
    assert ivf is not None and ivf.nlist == fi.ivf_centroids(len(x)) == 256


def test_explicit_factory_is_honoured() -> None:
    x = clustered(4000, 32)
    built = fi.build_index(x, None, factory="IVF32,Flat")
    ivf = faiss.extract_index_ivf(built)
    assert ivf.nlist == 32 and ivf.metric_type == faiss.METRIC_INNER_PRODUCT
    built = fi.build_index(x, None, factory="HNSW16")
    hnsw = fi._unwrap(built)
    assert isinstance(hnsw, faiss.IndexHNSW) and hnsw.hnsw.nb_neighbors(0) == 32
    built = fi.build_index(x, None, factory="IDMap2,Flat")
    own = faiss.downcast_index(built)
    assert isinstance(own, faiss.IndexIDMap2) and isinstance(fi._unwrap(own), faiss.IndexFlat)
    small = clustered(1000, 16)
    pq = fi.build_index(small, None, factory="OPQ4,IVF8_HNSW32,PQ4")
    assert isinstance(faiss.downcast_index(pq), faiss.IndexPreTransform)
    assert pq.ntotal == len(small) and faiss.extract_index_ivf(pq).nlist == 8


@pytest.mark.parametrize("factory", ["NotAnIndex", "PQ7", "", "IVF10,Flat,Flat"])
def test_invalid_factory_raises_value_error(factory: str) -> None:
    with pytest.raises(ValueError, match="factory"):
        fi.build_index(clustered(500, 32), None, factory=factory)


def test_bad_inputs_raise() -> None:
    x = clustered(100, 16)
    with pytest.raises(ValueError, match="distinct"):
        fi.build_index(x, np.zeros(100, dtype=np.int64), factory="Flat")
    with pytest.raises(ValueError, match="shape"):
        fi.build_index(x, np.arange(99), factory="Flat")
    with pytest.raises(ValueError, match="zeros"):
        fi.build_index(np.zeros((3, 16), np.float32), None, factory="Flat")
    with pytest.raises(ValueError, match="at least"):
        fi.build_index(x, None, factory="IVF256,Flat")
    index = fi.build_index(x, None, factory="Flat")
    with pytest.raises(ValueError, match="dim"):
        fi.search(index, np.ones((1, 8), np.float32), k=3)


def test_unnormalised_input_is_normalised() -> None:
    x = clustered(1000, 16)
    index = fi.build_index(x * 3.0, None, factory="Flat")
    scores, found = fi.search(index, x[:10] * 0.5, k=1)
    np.testing.assert_array_equal(found[:, 0], np.arange(10))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


# ----------------------------------------------------------------------------- tuning


@pytest.mark.parametrize("factory,knob", [("HNSW32", "efSearch"), ("IVF128,Flat", "nprobe")])
def test_tuning_reaches_target_and_is_applied(factory: str, knob: str) -> None:
    x = clustered(20_000, 32)
    ids = scrambled_ids(len(x))
    index = fi.build_index(x, ids, factory=factory)
    params = fi.tune_search_params(index, x, ids=ids, target_recall=0.95, n_queries=300)
    assert params["recall@10"] >= 0.95 and knob in params
    # the returned setting is the one left on the index
    if knob == "efSearch":
        assert fi._unwrap(index).hnsw.efSearch == params["efSearch"]
    else:
        assert faiss.extract_index_ivf(index).nprobe == params["nprobe"]
    # and it holds on genuinely new queries from the same distribution
    queries = clustered(300, 32, seed=7)
    exact = ids[faiss.knn(queries, x, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]]
    assert fi.recall_at_k(fi.search(index, queries, 10)[1], exact, 10) >= 0.93


def test_build_tuned_index_holds_out_then_adds_back() -> None:
    x = clustered(20_000, 32)
    ids = scrambled_ids(len(x))
    index, params = fi.build_tuned_index(x, ids, factory="HNSW32", n_queries=300)
    assert index.ntotal == len(x) and params["recall@10"] >= 0.95
    assert fi._unwrap(index).hnsw.efSearch == params["efSearch"]
    assert sorted(faiss.vector_to_array(index.id_map)) == sorted(ids)
    stored = np.stack([index.reconstruct(int(i)) for i in ids])
    np.testing.assert_array_equal(stored, x)  # held-out vectors came back under their ids
    queries = clustered(300, 32, seed=7)
    exact = ids[faiss.knn(queries, x, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]]
    assert fi.recall_at_k(fi.search(index, queries, 10)[1], exact, 10) >= 0.93


def test_build_tuned_index_auto_flat_and_explicit_queries() -> None:
    x = clustered(2000, 16)
    index, params = fi.build_tuned_index(x, None)
    assert params == {"recall@10": 1.0} and index.ntotal == 2000
    ivf_index = fi.build_index(x, None, "IVF16,Flat")
    queries = clustered(100, 16, seed=9)
    params = fi.tune_search_params(ivf_index, x, queries=queries, target_recall=0.99)
    exact = faiss.knn(queries, x, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    got = fi.recall_at_k(fi.search(ivf_index, queries, 10)[1], exact, 10)
    assert got == pytest.approx(params["recall@10"], abs=1e-4) and got >= 0.99
    with pytest.raises(ValueError, match="holds"):
        fi.tune_search_params(ivf_index, x[:100])


def test_tuning_flat_is_exact() -> None:
    x = clustered(2000, 32)
    assert fi.tune_search_params(fi.build_index(x, None, "Flat"), x) == {"recall@10": 1.0}


def test_recall_at_k() -> None:
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    approx = np.array([[3, 2, 9], [-1, -1, -1]])
    assert fi.recall_at_k(approx, exact, 3) == pytest.approx((2 / 3 + 0) / 2)


def test_unknown_search_param_raises() -> None:
    index = fi.build_index(clustered(200, 16), None, "Flat")
    with pytest.raises(ValueError, match="efSearch"):
        fi.apply_search_params(index, {"efSearch": 32})


# ----------------------------------------------------------------------------- files


def test_params_survive_save_and_load(tmp_path) -> None:
    x = clustered(20_000, 32)
    ids = scrambled_ids(len(x))
    index = fi.build_index(x, ids, factory="IVF128,Flat")
    params = fi.tune_search_params(index, x, ids=ids, n_queries=200)
    path = tmp_path / "index.faiss"
    fi.save_index(index, path)
    queries = clustered(50, 32, seed=3)
    expected = fi.search(index, queries, 10)

    loaded = fi.load_index(path, params)
    assert faiss.extract_index_ivf(loaded).nprobe == params["nprobe"]
    for got, want in zip(fi.search(loaded, queries, 10), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    # a loaded index with other settings is brought back by the recorded params
    faiss.extract_index_ivf(loaded).nprobe = 1
    fi.apply_search_params(loaded, params)
    assert faiss.extract_index_ivf(loaded).nprobe == params["nprobe"]


def test_hnsw_round_trip_keeps_ids_and_ef(tmp_path) -> None:
    x = clustered(3000, 16)
    ids = scrambled_ids(len(x))
    index = fi.build_index(x, ids, factory="HNSW32")
    fi.save_index(index, tmp_path / "h.faiss")
    loaded = fi.load_index(tmp_path / "h.faiss", {"efSearch": 48, "recall@10": 0.99})
    assert fi._unwrap(loaded).hnsw.efSearch == 48
    np.testing.assert_array_equal(loaded.reconstruct(int(ids[5])), x[5])


def test_atomic_save_leaves_no_temp_files(tmp_path, monkeypatch) -> None:
    x = clustered(500, 16)
    path = tmp_path / "index.faiss"
    fi.save_index(fi.build_index(x, None, "Flat"), path)
    fi.save_index(fi.build_index(x[:100], None, "Flat"), path)  # overwrite
    assert os.listdir(tmp_path) == ["index.faiss"]
    assert fi.load_index(path).ntotal == 100

    def broken(index, target):  # write a partial file, then fail
        with open(target, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(fi.faiss, "write_index", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        fi.save_index(fi.build_index(x, None, "Flat"), path)
    assert os.listdir(tmp_path) == ["index.faiss"]
    monkeypatch.undo()
    assert fi.load_index(path).ntotal == 100


def test_load_missing_file_raises(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        fi.load_index(tmp_path / "nope.faiss")
