"""The web UI over HTTP: neighbours for an upload, clear errors, no file outside the
thumbnails served, concurrent clients."""

from __future__ import annotations

import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")


def _search(url: str, image: Path, k: int = 5, label: str = "all"):
    client = gradio_client.Client(url, verbose=False)
    return client.predict(gradio_client.handle_file(str(image)), k, label, api_name="/search")


def _relpaths(raw) -> list[str]:
    return [r["relpath"] for r in raw]


def test_upload_gets_its_neighbours_itself_first(served):
    images, _, url = served
    query = images / "class1" / "img003.png"
    gallery, status, raw = _search(url, query, k=5)
    assert _relpaths(raw)[0] == "class1/img003.png"
    assert raw[0]["score"] > 0.999
    assert len(gallery) == 5 and "ms" in status
    # Thumbnails, not originals, come back: small JPEGs.
    assert all(Path(item["image"]).suffix in (".jpg", ".jpeg", ".webp") for item in gallery)


def test_label_filter_keeps_only_that_label(served):
    images, _, url = served
    _, _, raw = _search(url, images / "class0" / "img000.png", k=4, label="class2")
    assert raw and all(r["label"] == "class2" for r in raw)


def test_corrupt_upload_gets_a_clear_error(served, tmp_path):
    _, _, url = served
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(Exception) as error:
        _search(url, corrupt)
    message = str(error.value)
    assert "image" in message.lower()
    assert "Traceback" not in message


def test_files_outside_the_thumbnails_are_refused(served):
    images, index, url = served
    for path in ("/etc/passwd", str(images / "class0" / "img000.png"),
                 str(index / "meta.sqlite")):
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10)
        assert error.value.code in (403, 404)


def test_twenty_concurrent_clients_get_correct_answers(served):
    images, _, url = served
    queries = sorted(images.rglob("*.png"))[:20]
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda q: _search(url, q, k=3), queries))
    for query, (_, _, raw) in zip(queries, answers, strict=True):
        assert _relpaths(raw)[0] == query.relative_to(images).as_posix()


def test_thumbnails_of_the_collection_are_made_ahead_of_queries(served):
    import time

    images, index, _ = served
    expected = len(list(images.rglob("*.png")))
    deadline = time.time() + 60
    while time.time() < deadline and len(list((index / "thumbnails").glob("*.jpg"))) < expected:
        time.sleep(0.2)
    thumbs = list((index / "thumbnails").glob("*.jpg"))
    assert len(thumbs) == expected
    from PIL import Image

    assert all(max(Image.open(t).size) <= 256 for t in thumbs)
