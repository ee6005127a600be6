"""The web app beyond one upload: browsing the collection, "more like this" from an indexed
item (by id or path), the minimum-score cut-off, the plain JSON route and the Duplicates
tab, through the APIs a client uses (``gradio_client`` and HTTP)."""

from __future__ import annotations

import csv
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

gradio_client = pytest.importorskip("gradio_client")


def _client(url: str):
    return gradio_client.Client(url, verbose=False)


def _relpaths(rows) -> list[str]:
    return [r["relpath"] if isinstance(r, dict) else r.relpath for r in rows]


def _files(images: Path) -> list[str]:
    return sorted(p.relative_to(images).as_posix() for p in images.rglob("*")
                  if p.suffix in (".png", ".jpg"))


# ------------------------------------------------------------------ the collection


def test_collection_pages_cover_it_once_in_a_seeded_order():
    from groco.index.api import Collection

    labels = ["b", "a", None, "a", "b", None, "a"] * 7
    collection = Collection(np.arange(100, 149), labels)
    assert collection.folders == ["a", "b"]

    def every(folder=None, order="random", seed=0):
        first = collection.page(1, 8, folder, order, seed)
        pages = [collection.page(n, 8, folder, order, seed) for n in range(1, first.pages + 1)]
        return [i for p in pages for i in p.ids], first

    ids, first = every(seed=3)
    assert sorted(ids) == list(range(100, 149)) and first.pages == 7 and first.total == 49
    assert every(seed=3)[0] == ids and every(seed=4)[0] != ids  # the seed fixes the order
    in_a, first = every("a")
    assert first.total == 21 and all(labels[i - 100] == "a" for i in in_a)
    by_folder, _ = every(order="folder")
    assert [labels[i - 100] for i in by_folder] == sorted(labels, key=lambda x: x or "")
    last = collection.page(99, 8)  # clamped to the last page
    assert last.number == 7 and len(last.ids) == 1
    with pytest.raises(ValueError, match="Unknown folder"):
        collection.page(1, 8, "c")
    with pytest.raises(ValueError, match="order must be"):
        collection.page(1, 8, None, "sideways")


def test_browse_endpoint_pages_the_collection(served):
    images, _, url = served
    client = _client(url)
    per_page = 24
    gallery, status, page, items = client.predict(1, "all", "folder", 0, api_name="/browse")
    assert page == 1 and len(gallery) == len(items) == per_page
    assert "page 1 of 2" in status and "32 images" in status
    _, _, page2, rest = client.predict(2, "all", "folder", 0, api_name="/browse")
    assert page2 == 2 and sorted(_relpaths(items + rest)) == _files(images)
    _, status, _, shuffled = client.predict(1, "all", "random", 5, api_name="/browse")
    assert _relpaths(shuffled) != _relpaths(items)
    _, status, _, folder = client.predict(1, "class1", "random", 5, api_name="/browse")
    assert len(folder) == 10 and {r["label"] for r in folder} == {"class1"}
    assert "folder `class1`" in status


def test_more_like_an_indexed_item_by_path_or_id(served):
    from groco.index.search import Searcher

    _, index, url = served
    client = _client(url)
    with Searcher(index) as searcher:
        expected = searcher.more_like("class1/img002.png", 5)
        item = searcher.row("class1/img002.png").id
    for given in ("class1/img002.png", str(item)):
        _, status, raw = client.predict(given, 5, "all", -1, api_name="/more_like_this")
        assert _relpaths(raw) == _relpaths(expected)
        assert "class1/img002.png" not in _relpaths(raw) and "class1/img002.png" in status
    with pytest.raises(Exception, match="Not in the index"):
        client.predict("class1/nope.png", 5, "all", -1, api_name="/more_like_this")
    with pytest.raises(Exception, match="Not in the index"):
        client.predict("/etc/passwd", 5, "all", -1, api_name="/more_like_this")


def test_min_score_cuts_as_groco_search_does(served):
    from groco.index.search import Searcher

    images, index, url = served
    query = images / "class0" / "img005.png"
    with Searcher(index) as searcher:
        scores = [r.score for r in searcher.search_image(query, 20)]
        floor = float(np.median(scores))
        expected = searcher.search_image(query, 20, min_score=floor)
    _, _, raw = _client(url).predict(gradio_client.handle_file(str(query)), 20, "all", floor,
                                     api_name="/search")
    assert 0 < len(raw) < 20 and all(r["score"] >= floor for r in raw)
    assert _relpaths(raw) == _relpaths(expected)


# ------------------------------------------------------------------ the JSON route


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(url: str, body: bytes):
    request = urllib.request.Request(url, data=body,
                                     headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_json_route_answers_as_groco_search(served):
    from groco.index.search import Searcher

    images, index, url = served
    query = images / "class2" / "img001.png"
    status, answer = _post(f"{url}groco/api/search?k=6", query.read_bytes())
    assert status == 200 and answer["ms"] > 0
    with Searcher(index) as searcher:
        expected = searcher.search_image(query, 6)
        similar = searcher.more_like("class2/img001.png", 4, min_score=0.0)
    assert _relpaths(answer["results"]) == _relpaths(expected)
    assert [r["score"] for r in answer["results"]] == pytest.approx(
        [r.score for r in expected], abs=1e-5)
    with urllib.request.urlopen(url.rstrip("/") + answer["results"][0]["thumbnail"],
                                timeout=30) as response:
        assert response.read(3) == b"\xff\xd8\xff"  # a JPEG thumbnail
    more = _get(f"{url}groco/api/more_like_this?item=class2/img001.png&k=4&min_score=0")
    assert _relpaths(more["results"]) == _relpaths(similar)
    page = _get(f"{url}groco/api/browse?page=2&order=folder")
    assert page["page"] == 2 and page["pages"] == 2 and len(page["items"]) == 8
    for bad, message in ((b"not an image", "Not a readable image"), (b"", "Send an image")):
        status, answer = _post(f"{url}groco/api/search", bad)
        assert status == 400 and message in answer["error"] and "\n" not in answer["error"]
    status, answer = _post(f"{url}groco/api/search?k=0", query.read_bytes())
    assert status == 400 and "k must be" in answer["error"]


# ------------------------------------------------------------------ duplicates


def test_duplicates_tab_groups_and_exports_as_groco_index_dupes(served):
    from groco.index.dupes import find_duplicate_groups

    _, index, url = served
    client = _client(url)
    for threshold, keep in ((1.0, "pixels"), (0.95, "path")):
        summary, gallery, table, json_file, csv_file, review_file = client.predict(
            threshold, keep, api_name="/duplicates")
        expected = find_duplicate_groups(index, threshold)
        groups = json.loads(Path(json_file).read_text())
        assert [g["files"] and [f["relpath"] for f in g["files"]] for g in groups] == \
            [g.relpaths for g in expected]
        assert all("path" not in f for g in groups for f in g["files"])
        with open(csv_file, newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == sum(g.size for g in expected)
        assert f"{len(expected)} groups" in summary and gallery
        with open(review_file, newline="") as f:
            review = list(csv.DictReader(f))
        assert len(review) == len(rows) and "path" not in review[0]
        kept = sorted(r["relpath"] for r in review if r["action"] == "keep")
        if keep == "path":  # each group keeps its first path in sort order
            assert kept == sorted(min(g.relpaths) for g in expected)
        assert sum(r["action"] == "remove?" for r in review) == len(rows) - len(expected)
        assert [row[4] for row in table["data"]] == [r["relpath"] for r in review]
    exact = find_duplicate_groups(index, 1.0)
    assert ["class2/img009-copy.png", "class2/img009.png"] in [sorted(g.relpaths)
                                                                for g in exact]
    with pytest.raises(Exception, match="minimum value 0.8"):  # the slider refuses it
        client.predict(0.1, "pixels", api_name="/duplicates")


# ------------------------------------------------------------------ curate


def test_curate_tab_outliers_need_the_graph_and_the_sample_covers(served):
    """Outliers say which command makes the graph when there is none, then match `groco
    index curate`; the sample covers every folder and reports its radius."""
    from groco.index.curate import find_outliers
    from groco.index.neighbours import DEFAULT_K, ensure_graph

    _, index, url = served
    client = _client(url)
    if not (index / "neighbours" / "graph.json").exists():
        with pytest.raises(Exception, match="groco index graph"):
            client.predict(5, "lof", api_name="/outliers")
    ensure_graph(index, DEFAULT_K)
    gallery, status = client.predict(5, "knn", api_name="/outliers")
    expected = find_outliers(index, 5, "knn", store_graph=False)
    assert [item["caption"].split(" · ")[1] for item in gallery] == [f.relpath for f in expected]
    assert "5 most unusual items (knn score" in status
    gallery, status = client.predict(6, 0, api_name="/sample")
    assert len(gallery) == 6 and "items, each the farthest" in status
    assert {item["caption"].split("/")[0] for item in gallery} == {"class0", "class1", "class2"}
    with pytest.raises(Exception, match="greater than maximum value 200"):
        client.predict(500, 0, api_name="/sample")
