"""Several index directories searched as one (groco.index.api.ShardUnion, `groco search
--index`): the same top-k as one index over all their images, one encoder or a one-line
refusal, and a missing or failing shard left out and named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_collection
from typer.testing import CliRunner

from groco.cli import app
from groco.encoder.baselines import export_raw_pixels
from groco.index.api import ID_STRIDE, IndexMismatchError, IndexReader, ShardUnion
from groco.index.build import build_index_dir
from groco.index.manifest import IndexDirError


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two shards (class0+class1, class2) and one index over all three classes, raw
    pixels, no post-processing."""
    base = tmp_path_factory.mktemp("union")
    every = make_collection(base / "all", classes=3, per_class=12, size=16, seed=3)
    parts = {"a": ("class0", "class1"), "b": ("class2",)}
    export_raw_pixels(16, base / "raw.onnx", parity_images=1)
    out = {"encoder": base / "raw.onnx", "images": every}
    for name, folders in parts.items():
        for folder in folders:
            shutil.copytree(every / folder, base / name / folder)
        build_index_dir(base / name, base / "raw.onnx", base / f"index-{name}",
                        postprocess="none", progress=False)
        out[name] = base / f"index-{name}"
    build_index_dir(every, base / "raw.onnx", base / "index-all", postprocess="none",
                    progress=False)
    out["all"] = base / "index-all"
    return out


def same(union_results, single_results) -> None:
    assert [r.relpath for r in union_results] == [r.relpath for r in single_results]
    np.testing.assert_allclose([r.score for r in union_results],
                               [r.score for r in single_results], atol=1e-5)


def test_a_union_answers_as_one_index_over_all_its_images(shards) -> None:
    query = shards["images"] / "class2" / "img003.png"
    with ShardUnion([shards["a"], shards["b"]]) as union, IndexReader(shards["all"]) as one:
        for k in (1, 5, 30):
            same(union.search_image(query, k), one.search_image(query, k))
        found = union.search_image(query, 30)
        assert {union.shard_of(r.id) for r in found} == {shards["a"], shards["b"]}
        assert all(r.id >= ID_STRIDE for r in found if r.label == "class2")  # shard 1's
        # more like an item, by its union id or its path: itself left out
        first = found[0]
        like = union.more_like(first.id, 6)
        same(like, one.more_like(first.relpath, 6))
        assert first.id not in [r.id for r in like]
        same(union.more_like(first.relpath, 6), like)
        # a label held by one shard only
        same(union.search_image(query, 4, label="class0"),
             one.search_image(query, 4, label="class0"))
        with pytest.raises(ValueError, match="in no shard"):
            union.search_image(query, 4, label="class9")
        assert union.missing == {}


def test_shards_of_another_encoder_are_refused(shards, tmp_path: Path) -> None:
    other = tmp_path / "raw8.onnx"
    export_raw_pixels(8, other, parity_images=1)
    build_index_dir(shards["images"], other, tmp_path / "index8", postprocess="none",
                    progress=False)
    with pytest.raises(IndexMismatchError, match="different encoders") as error:
        ShardUnion([shards["a"], tmp_path / "index8"])
    assert "\n" not in str(error.value)


def test_a_missing_or_failing_shard_is_left_out_and_named(shards, tmp_path: Path,
                                                           monkeypatch) -> None:
    query = shards["images"] / "class0" / "img001.png"
    gone = tmp_path / "gone"
    with ShardUnion([shards["a"], gone]) as union:
        results = union.search_image(query, 5)
        assert results and union.missing.keys() == {gone}
        assert "\n" not in union.missing[gone]
    with ShardUnion([shards["a"], shards["b"]]) as union, IndexReader(shards["a"]) as alone:
        def dies(*args, **kwargs):
            raise OSError("disk went away")

        monkeypatch.setattr(union.readers[1], "search_vector", dies)
        same(union.search_image(query, 5), alone.search_image(query, 5))
        assert union.missing == {shards["b"]: "disk went away"}
        monkeypatch.setattr(union.readers[0], "search_vector", dies)
        with pytest.raises(IndexDirError, match="every shard failed"):
            union.search_image(query, 5)
    with pytest.raises(IndexDirError, match="no shard could be opened"):
        ShardUnion([gone, tmp_path / "also-gone"])


def test_a_failing_shard_does_not_stop_the_watch_for_newer_states(shards, monkeypatch,
                                                                   caplog) -> None:
    """The server's watch refreshes every shard on its own: one that fails (a replica
    that died) is said once, and the others are still refreshed."""
    import logging
    import time

    from groco.app.settings import AppSettings
    from groco.app.state import AppState

    state = AppState.open([shards["a"], shards["b"]],
                          settings=AppSettings(refresh_seconds=0.05))
    refreshed = []

    def dies() -> bool:
        raise RuntimeError("the replica of index-b failed: Timed out")

    monkeypatch.setattr(state.union.readers[0], "refresh",
                        lambda: refreshed.append(time.monotonic()) or False)
    monkeypatch.setattr(state.union.readers[1], "refresh", dies)
    try:
        with caplog.at_level(logging.WARNING, logger="groco.app"):
            watch = state.start_index_watch()
            deadline = time.monotonic() + 10
            while len(refreshed) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert watch.is_alive() and len(refreshed) >= 4
        failures = [r for r in caplog.records if "Timed out" in r.getMessage()]
        assert len(failures) == 1 and "index-b" in failures[0].getMessage()
    finally:
        state.close()


def test_groco_search_with_several_indexes(shards, tmp_path: Path) -> None:
    runner = CliRunner()
    query = str(shards["images"] / "class2" / "img003.png")
    args = ["search", str(shards["a"]), query, "--index", str(shards["b"]), "-k", "20",
            "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    single = json.loads(runner.invoke(app, ["search", str(shards["all"]), query, "-k", "20",
                                            "--json"]).stdout)
    assert [r["relpath"] for r in answer["results"]] == \
        [r["relpath"] for r in single["results"]]
    assert {r["index"] for r in answer["results"]} == {str(shards["a"]), str(shards["b"])}
    assert answer["missing"] == {}
    missing = runner.invoke(app, [*args[:4], str(tmp_path / "nope"), *args[5:]])
    assert missing.exit_code == 0, missing.output
    assert f"warning: shard {tmp_path / 'nope'} left out" in missing.stderr


# ------------------------------------------------------------------ the server


def _post(url: str, body: bytes):
    import urllib.request

    request = urllib.request.Request(url, data=body,
                                     headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_the_server_searches_the_union_through_every_route(shards, tmp_path: Path) -> None:
    gradio_client = pytest.importorskip("gradio_client")
    from conftest import free_port

    from groco.app.web import launch_app

    query = shards["images"] / "class2" / "img003.png"
    with IndexReader(shards["all"]) as one:
        expected = one.search_image(query, 8)
    app, url = launch_app([shards["a"], shards["b"], tmp_path / "gone"], port=free_port(),
                          block=False)
    try:
        full = _post(f"{url}groco/api/search?k=8", query.read_bytes())
        assert list(full["missing"]) == [str(tmp_path / "gone")]  # named, not a failure
        answer = full["results"]
        assert [r["relpath"] for r in answer] == [r.relpath for r in expected]
        np.testing.assert_allclose([r["score"] for r in answer],
                                   [r.score for r in expected], atol=1e-5)
        assert all(r["thumbnail"] for r in answer)  # each shard's own images root
        client = gradio_client.Client(url, verbose=False)
        _, status, raw = client.predict(gradio_client.handle_file(str(query)), 8, "all",
                                        api_name="/search")
        assert [r["relpath"] for r in raw] == [r.relpath for r in expected]
        assert f"shard left out: `{tmp_path / 'gone'}`" in status
        # more like a result of the second shard, by its union id
        other = next(r for r in raw if r["id"] >= ID_STRIDE)
        with ShardUnion([shards["a"], shards["b"]]) as union:
            like = union.more_like(other["id"], 5)
        _, _, raw_like = client.predict(str(other["id"]), 5, "all",
                                        api_name="/more_like_this")
        assert [r["relpath"] for r in raw_like] == [r.relpath for r in like]
    finally:
        app.close()


def test_the_page_names_a_shard_left_out(shards, tmp_path: Path) -> None:
    from groco.app.state import AppState

    state = AppState.open([shards["a"], tmp_path / "gone", shards["b"]])
    try:
        facts = state.facts_markdown()
        assert "in 2 of 3 shards" in facts and "shard left out" in facts
        assert str(tmp_path / "gone") in facts
        assert set(state.labels) == {"class0", "class1", "class2"}
        query = shards["images"] / "class2" / "img003.png"
        from PIL import Image

        results = state.search_image(Image.open(query), 5)
        assert results[0].relpath == "class2/img003.png" and results[0].id >= 2 * ID_STRIDE
        assert state.thumbnail(results[0].id)[0] is not None
        page = state.browse(1)
        _, ids = state.tiles(page)
        assert ids and all(i < ID_STRIDE for i in ids)  # the first shard's items
    finally:
        state.close()


@pytest.mark.slow
def test_shards_in_ray_serve_replicas_answer_as_threads_do(shards, tmp_path: Path,
                                                           monkeypatch) -> None:
    """`--ray local`: the second shard searched in a Ray Serve replica gives the same top-k
    as one index over all the images, through the union, `groco search`, the JSON route
    and `gradio_client`; a replica that goes away is left out and named."""
    pytest.importorskip("ray.serve")
    import ray
    from ray import serve

    from groco.app.settings import AppSettings
    from groco.app.web import launch_app
    from groco.index.api import remote
    from groco.index.api.remote import RemoteShard

    query = shards["images"] / "class2" / "img003.png"
    try:
        with ShardUnion([shards["a"], shards["b"]], ray_address="local") as union, \
                IndexReader(shards["all"]) as one:
            assert isinstance(union.readers[1], RemoteShard)
            for k in (1, 30):
                same(union.search_image(query, k), one.search_image(query, k))
            other = next(r for r in union.search_image(query, 30) if r.id >= ID_STRIDE)
            same(union.more_like(other.id, 5), one.more_like(other.relpath, 5))
            same(union.search_image(query, 4, label="class2"),
                 one.search_image(query, 4, label="class2"))
            assert union.label_counts() == one.label_counts()
            with pytest.raises(KeyError):
                union.row(ID_STRIDE + 10_000)
            monkeypatch.setattr(remote, "CALL_TIMEOUT_S", 3.0)  # a gone app may not answer
            union.readers[1].close()  # the replica goes away: left out, named
            alone = union.search_image(query, 5)
            assert list(union.missing) == [shards["b"]] and "failed" in union.missing[
                shards["b"]]
            assert all(r.id < ID_STRIDE for r in alone)

        result = CliRunner().invoke(app, ["search", str(shards["a"]), str(query), "--index",
                                          str(shards["b"]), "--ray", "local", "-k", "8",
                                          "--json"])
        assert result.exit_code == 0, result.output
        with IndexReader(shards["all"]) as single:
            expected = single.search_image(query, 8)
        assert [r["relpath"] for r in json.loads(result.stdout)["results"]] == \
            [r.relpath for r in expected]

        from conftest import free_port

        server, url = launch_app([shards["a"], shards["b"]], port=free_port(), block=False,
                                 settings=AppSettings(ray_address="local"))
        try:
            answer = _post(f"{url}groco/api/search?k=8", query.read_bytes())
            assert [r["relpath"] for r in answer["results"]] == [r.relpath for r in expected]
            assert not answer.get("missing")
            gradio_client = pytest.importorskip("gradio_client")
            client = gradio_client.Client(url, verbose=False)
            _, _, raw = client.predict(gradio_client.handle_file(str(query)), 8, "all",
                                       api_name="/search")
            assert [r["relpath"] for r in raw] == [r.relpath for r in expected]
        finally:
            server.close()
    finally:
        serve.shutdown()
        ray.shutdown()
