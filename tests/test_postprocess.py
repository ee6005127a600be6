"""Label-free post-processing: the formulas, and an index that applies them under build,
update, search and eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_collection
from typer.testing import CliRunner

from groco.cli import app
from groco.index import shards
from groco.index.build import build_index_dir, update_index_dir
from groco.index.dupes import DEFAULT_THRESHOLD
from groco.index.evaluate import evaluate_index
from groco.index.expansion import Expansion
from groco.index.manifest import read_manifest
from groco.index.postprocess import DEFAULT_POSTPROCESS, Postprocess, unit
from groco.index.search import Searcher
from groco.index.store import DB_NAME, Store

FAST = {"batch_size": 4, "shard_size": 8, "workers": 2, "progress": False}


# ----------------------------------------------------------------------------- formulas


def test_parse_reads_the_short_form_and_names_what_it_cannot():
    assert Postprocess.parse("centre+dba3+qe2") == Postprocess(centre=True, dba_k=3, qe_k=2)
    assert Postprocess.parse("none") == Postprocess()
    assert Postprocess.parse(DEFAULT_POSTPROCESS.name) == DEFAULT_POSTPROCESS
    assert Postprocess.from_dict(DEFAULT_POSTPROCESS.to_dict()) == DEFAULT_POSTPROCESS
    with pytest.raises(ValueError, match="'whiten'"):
        Postprocess.parse("centre+whiten")


def test_dba_averages_each_vector_with_its_nearest_weighted_by_similarity():
    x = unit(np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    fitted = Postprocess(dba_k=1, alpha=1.0).fit(x)
    d = fitted.stored(x)
    # row 0's nearest other row is row 1 (cosine s): d_0 = normalise(x_0 + s x_1)
    s = float(x[0] @ x[1])
    np.testing.assert_allclose(d[0], unit((x[0] + s * x[1])[None])[0], atol=1e-6)
    # row 3 is orthogonal to all: weight 0, it stays itself
    np.testing.assert_allclose(d[3], x[3], atol=1e-6)


def test_centring_removes_the_direction_the_collection_shares():
    rng = np.random.default_rng(0)
    shared = np.array([5.0, 0.0, 0.0, 0.0])
    x = unit(shared + rng.normal(size=(200, 4)))
    centred = Postprocess(centre=True).fit(x).centred(x)
    assert abs(centred.mean(axis=0)[0]) < 0.1 < abs(x.mean(axis=0)[0])
    np.testing.assert_allclose(np.linalg.norm(centred, axis=1), 1.0, atol=1e-5)


def test_query_expansion_never_expands_with_the_excluded_row():
    x = unit(np.eye(3) + 0.1)
    fitted = Postprocess(qe_k=1, alpha=1.0).fit(x)
    q = fitted.queries(x[:1], x, exclude=np.array([0]))
    best_other = 1 + int(np.argmax(x[1:] @ x[0]))
    s = float(x[0] @ x[best_other])
    np.testing.assert_allclose(q[0], unit((x[0] + s * x[best_other])[None])[0], atol=1e-6)


# ----------------------------------------------------------------------------- an index


@pytest.fixture(scope="module")
def built(encoder_file: Path, tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("post")
    images = make_collection(base / "images", classes=3, per_class=8)
    build_index_dir(images, encoder_file, base / "index", **FAST)
    return images, base / "index"


def expansion_files(index_dir: Path) -> list[str]:
    return sorted(p.name for p in index_dir.glob("index-*.expand*.npy"))


def test_build_post_processes_by_default_and_search_ranks_by_it(built):
    images, index_dir = built
    manifest = read_manifest(index_dir)
    assert Postprocess.from_dict(manifest["postprocess"]) == DEFAULT_POSTPROCESS
    assert expansion_files(index_dir) == ["index-000001.expand-ids.npy",
                                          "index-000001.expand.npy"]
    with Searcher(index_dir) as searcher:
        results = searcher.search_image(images / "class1/img003.png", k=6)
        assert searcher.facts()["postprocess"] == DEFAULT_POSTPROCESS.describe()
    assert results[0].relpath == "class1/img003.png"  # a copy of the query comes first
    others = [r.rank_score for r in results if r.score < DEFAULT_THRESHOLD]
    assert None not in others and others == sorted(others, reverse=True)
    # the stored search vectors are the formula applied to the encoder's vectors
    with Store(index_dir / DB_NAME, readonly=True) as store:
        ids, shard_numbers, rows = store.embedded_locations()
    order = np.argsort(ids)
    vectors = shards.gather(index_dir, shard_numbers[order], rows[order])
    expansion = Expansion.open(index_dir, manifest)
    assert expansion is not None and list(expansion.ids) == sorted(ids)
    fitted = DEFAULT_POSTPROCESS.fit(vectors)
    np.testing.assert_allclose(expansion.fitted.mean, fitted.mean, atol=1e-5)
    np.testing.assert_allclose(expansion.vectors, fitted.stored(vectors), atol=1e-4)


def test_none_keeps_the_encoders_own_ranking(encoder_file: Path, tmp_path: Path):
    images = make_collection(tmp_path / "images", classes=2, per_class=6)
    build_index_dir(images, encoder_file, tmp_path / "index", postprocess="none", **FAST)
    assert expansion_files(tmp_path / "index") == []
    with Searcher(tmp_path / "index") as searcher:
        results = searcher.search_image(images / "class0/img001.png", k=5)
    assert all(r.rank_score is None for r in results)
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    report = evaluate_index(tmp_path / "index")
    assert report.postprocess == "none" and report.post_knn_top1 is None


def build_apart(encoder_file: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A collection and its index of its own (an update records where its images are)."""
    images = make_collection(tmp_path / "images", classes=3, per_class=8)
    build_index_dir(images, encoder_file, tmp_path / "index", **FAST)
    return images, tmp_path / "index"


def test_update_recomputes_the_expansion_and_drops_the_old_files(encoder_file: Path,
                                                                 tmp_path: Path):
    images, index_dir = build_apart(encoder_file, tmp_path)
    (images / "class0/img000.png").unlink()
    make_collection(tmp_path / "more", classes=2, per_class=2, seed=5)
    for f in (tmp_path / "more").rglob("*.png"):
        f.rename(images / f.parent.name / f"new-{f.name}")
    report = update_index_dir(index_dir, **FAST)
    assert (report.embedded, report.deleted) == (4, 1)
    manifest = read_manifest(index_dir)
    assert manifest["expansion_file"] == "index-000002.expand.npy"
    expansion = Expansion.open(index_dir, manifest)
    assert len(expansion.ids) == manifest["count"] == 27
    with Searcher(index_dir) as searcher:
        new = searcher.search_image(images / "class1/new-img001.png", k=3)
        assert new[0].relpath == "class1/new-img001.png"
        everything = searcher.search_image(images / "class0/img001.png", k=27)
    assert "class0/img000.png" not in {r.relpath for r in everything}
    assert len(everything) == 27


def test_update_can_change_the_post_processing(encoder_file: Path, tmp_path: Path):
    images, index_dir = build_apart(encoder_file, tmp_path)
    update_index_dir(index_dir, postprocess="centre+dba2+qe2", **FAST)
    assert read_manifest(index_dir)["postprocess"]["qe_k"] == 2
    update_index_dir(index_dir, postprocess="none", **FAST)
    # the state before is kept for readers that opened it, the one before that goes
    assert expansion_files(index_dir) == ["index-000002.expand-ids.npy",
                                          "index-000002.expand.npy"]
    assert "expansion_file" not in read_manifest(index_dir)
    with Searcher(index_dir) as searcher:
        assert searcher.search_image(images / "class2/img000.png", k=2)[0].rank_score is None


def test_eval_reports_the_encoders_figures_beside_the_post_processed_ones(built):
    _, index_dir = built
    result = CliRunner().invoke(app, ["index", "eval", str(index_dir)])
    assert result.exit_code == 0, result.output
    post_row = next(line for line in result.output.splitlines()
                    if line.startswith(f"  + {DEFAULT_POSTPROCESS.name}"))
    assert len(post_row.split()) == 5  # "+", its name, k-NN, P@10, mAP@R
    result = CliRunner().invoke(app, ["index", "eval", str(index_dir), "--json"])
    (row,) = json.loads(result.output)
    assert row["postprocess"] == DEFAULT_POSTPROCESS.name
    for figure in ("knn_top1", "precision_at_10", "map_at_r"):
        assert 0.0 <= row[f"post_{figure}"] <= 1.0


def test_a_bad_postprocess_is_one_line(built, tmp_path: Path):
    images, _ = built
    result = CliRunner().invoke(app, ["index", "build", str(images), "--encoder", "x.onnx",
                                      "--out", str(tmp_path / "i"), "--postprocess", "blur"])
    assert result.exit_code != 0
    assert "cannot read 'blur'" in result.output


def test_a_label_filter_keeps_the_post_processed_order(encoder_file: Path, tmp_path: Path):
    from groco.index.api import IndexReader

    images = make_collection(tmp_path / "images", classes=3, per_class=6)
    for setting in ("centre+dba3", "centre+dba2+qe2"):
        index_dir = tmp_path / setting
        build_index_dir(images, encoder_file, index_dir, postprocess=setting, **FAST)
        with IndexReader(index_dir) as reader:
            query = reader.embed_image(images / "class0/img002.png")
            every = reader.search_vector(query, 18)
            only = reader.search_vector(query, 6, label="class1")
        assert [r.id for r in only] == [r.id for r in every if r.label == "class1"]
