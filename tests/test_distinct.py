"""Distinct results (`groco search --distinct`, the page's "Hide near copies", the JSON
route's ``distinct=1``): each group of near copies shows once, by its best-ranked member
with a count of the rest, and k is filled with distinct items."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
from typer.testing import CliRunner

from groco.cli import app
from groco.index.api import IndexReader
from groco.index.distinct import collapse_near_copies
from groco.index.dupes import DEFAULT_THRESHOLD
from groco.index.search import Result


def _results(n: int) -> list[Result]:
    return [Result(i, f"/r/{i}.png", f"{i}.png", 1.0 - i / 100, None) for i in range(n)]


def test_each_group_shows_once_by_its_best_ranked_member():
    rng = np.random.default_rng(0)
    bases = rng.normal(size=(4, 16))
    near = [0, 0, 1, 2, 1, 3, 0, 2]  # candidate -> the group it is a near copy of
    vectors = bases[near] + rng.normal(scale=1e-3, size=(8, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    kept = collapse_near_copies(_results(8), vectors.astype(np.float32), 3, DEFAULT_THRESHOLD)
    assert [r.id for r in kept] == [0, 2, 3]  # groups 0, 1, 2 by their first candidate
    assert [r.copies for r in kept] == [2, 1, 1]  # copies after the 3rd kept still count
    every = collapse_near_copies(_results(8), vectors.astype(np.float32), 10,
                                 DEFAULT_THRESHOLD)
    assert [r.id for r in every] == [0, 2, 3, 5] and sum(1 + r.copies for r in every) == 8


def test_an_index_search_hides_the_planted_copies(served):
    images, index, _ = served
    query = images / "class2" / "img009.png"
    with IndexReader(index) as reader:
        every = reader.search_image(query, k=100)  # the whole (small) index
        distinct = reader.search_image(query, k=len(every), distinct=True)
        assert {r.relpath for r in every[:2]} == {"class2/img009.png",
                                                  "class2/img009-copy.png"}
        assert distinct[0].relpath in {"class2/img009.png", "class2/img009-copy.png"}
        assert distinct[0].copies >= 1 and 1 < len(distinct) < len(every)
        assert sum(1 + r.copies for r in distinct) == len(every)  # each counted once
        assert [r.id for r in reader.search_image(query, k=2, distinct=True)] == \
            [r.id for r in distinct[:2]]  # k filled with distinct items
        paths = [r.relpath for r in distinct]
        assert not {"class2/img009.png", "class2/img009-copy.png"} <= set(paths)
        vectors = np.stack([reader._searcher.vector_of(r.id) for r in distinct])
        similarity = vectors @ vectors.T
        assert (similarity[~np.eye(len(distinct), dtype=bool)] < DEFAULT_THRESHOLD).all()
        more = reader.more_like("class2/img008.png", k=4, distinct=True)
        assert "class2/img008.png" not in [r.relpath for r in more]


def test_the_cli_json_route_and_page_api_collapse_alike(served):
    gradio_client = pytest.importorskip("gradio_client")
    images, index, url = served
    query = images / "class2" / "img009.png"
    result = CliRunner().invoke(app, ["search", str(index), str(query), "-k", "4",
                                      "--distinct", "--json"])
    assert result.exit_code == 0, result.output
    cli = [(r["relpath"], r["copies"]) for r in json.loads(result.stdout)["results"]]
    request = urllib.request.Request(f"{url}groco/api/search?k=4&distinct=1",
                                     data=query.read_bytes(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        route = [(r["relpath"], r["copies"]) for r in json.loads(response.read())["results"]]
    client = gradio_client.Client(url, verbose=False)
    _, _, raw = client.predict(gradio_client.handle_file(str(query)), 4, "all", -1.0, True,
                               api_name="/search")
    page = [(r["relpath"], r["copies"]) for r in raw]
    assert cli == route == page and cli[0][1] >= 1
    text = CliRunner().invoke(app, ["search", str(index), str(query), "-k", "2",
                                    "--distinct"]).output
    assert "near copies)" in text.splitlines()[0]
    counts = {}
    for near in ("0.97", "0.999"):
        found = CliRunner().invoke(app, ["search", str(index), str(query), "-k", "30",
                                         "--distinct", "--near-copy", near, "--json"])
        counts[near] = [r["copies"] for r in json.loads(found.stdout)["results"]]
    assert len(counts["0.999"]) >= len(counts["0.97"])  # a stricter rule hides fewer
    assert 1 <= counts["0.999"][0] <= counts["0.97"][0]  # the byte copy always
    bad = urllib.request.Request(f"{url}groco/api/search?distinct=maybe",
                                 data=query.read_bytes(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bad, timeout=60)
    assert refused.value.code == 400
