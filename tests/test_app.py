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


# --------------------------------------------------------------------- one decoder


def _odd_queries(folder: Path) -> dict[str, Path]:
    """Query files whose decoding differs between a plain ``convert("RGB")`` and groco's
    (alpha on white, 16-bit scaled, EXIF applied), made from a collection-like picture."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    rgb = np.clip(np.array([30, 200, 40]) + rng.normal(0, 35, (40, 40, 3)), 0, 255)
    rgb = rgb.astype(np.uint8)
    files = {}
    alpha = np.full((40, 40), 255, np.uint8)
    alpha[:, :20] = 0  # left half transparent, over hidden non-white pixels
    files["rgba"] = folder / "rgba.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(files["rgba"])
    quantized = Image.fromarray(rgb).quantize(14)  # entries 0..13
    indices = np.asarray(quantized).copy()
    indices[:, :20] = 15  # entry 15 (black) is transparent ...
    indices[30:, 20:] = 14  # ... entry 14 is black too, and opaque
    palette = Image.fromarray(indices, "P")
    palette.putpalette(quantized.getpalette()[: 14 * 3] + [0, 0, 0, 0, 0, 0])
    files["palette"] = folder / "palette.png"
    palette.save(files["palette"], transparency=15)
    files["cmyk"] = folder / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(files["cmyk"], quality=95)
    files["16bit"] = folder / "16bit.png"
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(files["16bit"])  # I;16
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees
    files["exif"] = folder / "exif.jpg"
    Image.fromarray(rgb[:, :30]).save(files["exif"], exif=exif.tobytes(), quality=95)
    files["gray"] = folder / "gray.png"
    Image.fromarray(rgb).convert("L").save(files["gray"])
    return files


def _ranked(results) -> list[tuple[int, str]]:
    return [(r["id"], r["relpath"]) if isinstance(r, dict) else (r.id, r.relpath)
            for r in results]


def _scores(results) -> list[float]:
    return [r["score"] if isinstance(r, dict) else r.score for r in results]


def test_every_kind_of_upload_ranks_as_groco_search_does(served, tmp_path):
    from groco.index.search import Searcher

    _, index, url = served
    queries = _odd_queries(tmp_path / "queries")
    with Searcher(index) as searcher:
        for kind, query in queries.items():
            _, _, raw = _search(url, query, k=8)
            expected = searcher.search_image(query, k=8)
            assert _ranked(raw) == _ranked(expected), kind
            assert _scores(raw) == pytest.approx(_scores(expected), abs=1e-5), kind


def test_transparent_upload_matches_the_search_command(served, tmp_path):
    import json

    _, index, url = served
    query = _odd_queries(tmp_path / "queries")["rgba"]
    _, _, raw = _search(url, query, k=6)
    from typer.testing import CliRunner

    from groco.cli import app

    out = CliRunner().invoke(app, ["search", str(index), str(query), "-k", "6", "--json"])
    assert out.exit_code == 0, out.output
    expected = json.loads(out.stdout)["results"]
    assert _ranked(raw) == _ranked(expected)
    assert _scores(raw) == pytest.approx(_scores(expected), abs=1e-5)


def _post_search(url: str, payload: dict | str, k: int = 5, label: str = "all",
                 min_score: float = -1.0):
    """The raw HTTP API (what a non-Python client sends): POST, then read the event stream.

    Returns (last event name, its data): ``("complete", outputs)``, ``("error", message)``,
    or ``("http", (status, body))`` when the POST itself is refused.
    """
    import json

    body = (payload if isinstance(payload, str)
            else json.dumps({"data": [payload, k, label, min_score, False]}))
    request = urllib.request.Request(f"{url}gradio_api/call/search", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            event_id = json.loads(response.read())["event_id"]
    except urllib.error.HTTPError as error:
        return "http", (error.code, error.read().decode())
    with urllib.request.urlopen(f"{url}gradio_api/call/search/{event_id}",
                                timeout=60) as response:
        lines = response.read().decode().splitlines()
    events = [line.split(":", 1)[1].strip() for line in lines if line.startswith("event:")]
    datas = [line.split(":", 1)[1].strip() for line in lines if line.startswith("data:")]
    last = json.loads(datas[-1]) if datas and datas[-1] not in ("", "null") else None
    return events[-1], last


def test_data_url_query_is_decoded_by_groco(served, tmp_path):
    import base64

    from groco.index.search import Searcher

    _, index, url = served
    query = _odd_queries(tmp_path / "queries")["rgba"]
    data_url = "data:image/png;base64," + base64.b64encode(query.read_bytes()).decode()
    event, data = _post_search(url, {"url": data_url}, k=4)
    assert event == "complete", data
    with Searcher(index) as searcher:
        expected = searcher.search_image(query, k=4)
    raw = data[2]
    assert _ranked(raw) == _ranked(expected)
    assert _scores(raw) == pytest.approx(_scores(expected), abs=1e-5)


# ------------------------------------------------------------------ bounded uploads


def test_data_url_over_the_byte_cap_is_refused_in_one_line(served):
    import base64

    from groco.app.settings import AppSettings

    _, _, url = served
    cap = AppSettings().max_upload_bytes
    data = base64.b64encode(b"\0" * (cap + 1000)).decode()
    event, message = _post_search(url, {"url": f"data:image/png;base64,{data}"})
    assert event == "error"
    assert "Image too large" in str(message) and "\n" not in str(message)
    # 30 MB announced: refused from the headers, before a byte of the body is read.
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    connection.putrequest("POST", "/gradio_api/call/search")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(30_000_000))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "Request too large" in response.read().decode()
    connection.close()


def test_upload_over_the_byte_cap_is_refused(served, tmp_path):
    _, _, url = served
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (11 * 1024 * 1024))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        _search(url, big)  # gradio_client reads the cap from the server's config
    # The server refuses it too, for a client that does not check.
    boundary = "groco-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"big.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
    body += big.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"{url}gradio_api/upload", data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    assert error.value.code == 413


def test_an_image_of_too_many_pixels_is_refused_before_decoding(served, tmp_path):
    import time

    from PIL import Image

    _, _, url = served
    huge = tmp_path / "huge.png"
    Image.new("RGB", (8000, 8000), (200, 30, 30)).save(huge)  # 64 MP, 190 kB on disk
    started = time.perf_counter()
    with pytest.raises(Exception) as error:
        _search(url, huge)
    assert "too large" in str(error.value).lower() and "8000x8000" in str(error.value)
    assert time.perf_counter() - started < 5
    # and the server keeps answering
    images, _, _ = served
    assert _search(url, images / "class0" / "img001.png", k=1)[2][0]["score"] > 0.999


def _decoder(tmp_path, **settings):
    from groco.app.settings import AppSettings
    from groco.app.uploads import QueryDecoder

    return QueryDecoder(AppSettings(**settings), min_side=64, upload_folder=tmp_path)


def test_a_normal_size_query_decodes_exactly_as_load_image(tmp_path):
    import numpy as np
    from PIL import Image

    from groco.images import load_image

    rng = np.random.default_rng(3)
    for size, fmt in (((127, 90), "PNG"), ((200, 127), "JPEG")):  # shorter side < 2 x 64
        path = tmp_path / f"q{size[0]}.{fmt.lower()}"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(path, fmt)
        decoded = _decoder(tmp_path).decode({"path": str(path)})
        assert decoded.size == size
        assert np.array_equal(np.asarray(decoded), np.asarray(load_image(path)))


def test_a_large_query_is_decoded_reduced_but_keeps_its_neighbours(served, tmp_path):
    import numpy as np
    from PIL import Image

    from groco.index.search import Searcher

    images, index, _ = served
    with Searcher(index) as searcher:
        min_side = 2 * searcher.encoder.preprocessing.resize_to
        from groco.app.settings import AppSettings
        from groco.app.uploads import QueryDecoder

        decoder = QueryDecoder(AppSettings(), min_side=min_side, upload_folder=tmp_path)
        for fmt in ("PNG", "JPEG"):
            source = Image.open(images / "class1" / "img004.png").convert("RGB")
            big = source.resize((40 * 37, 40 * 29), Image.Resampling.BICUBIC)
            path = tmp_path / f"big.{fmt.lower()}"
            big.save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
            decoded = decoder.decode({"path": str(path)})
            assert min_side <= min(decoded.size) < 2 * min_side, (fmt, decoded.size)
            full, reduced = searcher.embed_image(path), searcher.embed_image(decoded)
            assert float(np.dot(full, reduced)) > 0.99, fmt
            assert (searcher.search_image(decoded, 1)[0].id
                    == searcher.search_image(path, 1)[0].id), fmt


def test_concurrent_decodes_are_bounded(tmp_path, monkeypatch):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    import groco.app.uploads as uploads

    path = tmp_path / "q.png"
    Image.new("RGB", (16, 16)).save(path)
    running, peak, guard = 0, 0, threading.Lock()
    real = uploads.load_image

    def slow_load(*args, **kwargs):
        nonlocal running, peak
        with guard:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with guard:
            running -= 1
        return real(*args, **kwargs)

    monkeypatch.setattr(uploads, "load_image", slow_load)
    # 256 pixels: "large" above 100, so at most 2 decode at once ...
    decoder = _decoder(tmp_path, decode_concurrency=2, large_query_pixels=100)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: decoder.decode({"path": str(path)}), range(16)))
    assert peak == 2
    # ... small below 1000: they never wait behind the large ones.
    peak = 0
    decoder = _decoder(tmp_path, decode_concurrency=2, large_query_pixels=1000)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: decoder.decode({"path": str(path)}), range(16)))
    assert peak > 2


def test_only_uploaded_files_are_read(tmp_path):
    from groco.app.uploads import UploadError

    outside = tmp_path.parent / "outside.png"
    outside.write_bytes(b"x")
    with pytest.raises(UploadError, match="not an uploaded file"):
        _decoder(tmp_path).decode({"path": str(outside), "orig_name": "outside.png"})


def test_a_large_exif_rotated_query_is_reduced_and_upright(tmp_path):
    import numpy as np
    from PIL import Image

    from groco.images import load_image

    pixels = np.zeros((400, 600, 3), np.uint8)
    pixels[:, :300] = (255, 0, 0)  # left half red, right half blue, as stored
    pixels[:, 300:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: red on top
    for fmt in ("JPEG", "PNG"):
        path = tmp_path / f"rotated.{fmt.lower()}"
        Image.fromarray(pixels).save(path, fmt, exif=exif.tobytes())
        full = load_image(path)
        decoded = _decoder(tmp_path).decode({"path": str(path)})
        assert full.size == (400, 600)
        assert decoded.size[0] < decoded.size[1] and 64 <= decoded.size[0] < 128, fmt
        top, bottom = np.asarray(decoded)[5, 30], np.asarray(decoded)[-5, 30]
        assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0], fmt


_BURST = """
import sys, threading
from concurrent.futures import ThreadPoolExecutor
from groco.app.memory import return_large_blocks
from groco.images import load_image
assert return_large_blocks()
status = lambda key: int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) // 1024
slots = threading.BoundedSemaphore(2)
def one(_):
    with slots:
        load_image(sys.argv[1], min_side=64)
load_image(sys.argv[1], min_side=64)
before = status("VmRSS")
with ThreadPoolExecutor(8) as pool:
    list(pool.map(one, range(16)))
print(status("VmHWM") - before, status("VmRSS") - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_a_burst_of_large_decodes_is_given_back(tmp_path):
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    path = tmp_path / "big.png"  # 4000 x 4000: 64 MB decoded (4 bytes a pixel)
    ramp = np.linspace(0, 255, 4000).astype(np.uint8)
    Image.fromarray(np.ascontiguousarray(np.broadcast_to(ramp[:, None], (4000, 4000)))
                    ).convert("RGB").save(path)
    out = subprocess.run([sys.executable, "-c", _BURST, str(path)], capture_output=True,
                         text=True, check=True).stdout.split()
    peak, kept = int(out[0]), int(out[1])
    assert peak < 3 * 64  # 2 decodes in flight (8 threads took turns)
    assert kept < 20


def test_answered_queries_do_not_rebuild_gradios_monitoring_table(served, monkeypatch):
    """Gradio's monitoring summary (a pandas table of up to 10,000 past events) is rebuilt
    once per ``ANALYTICS_EVERY`` events, not after every query."""
    from gradio.queueing import Queue

    from groco.app.web import ANALYTICS_EVERY

    images, _, url = served
    built = []
    original = Queue._get_df
    monkeypatch.setattr(Queue, "_get_df", staticmethod(
        lambda records: built.append(len(records)) or original(records)))
    client = gradio_client.Client(url, verbose=False)
    queries = 5
    for n in range(queries):
        client.predict(gradio_client.handle_file(str(images / "class0" / f"img00{n}.png")),
                       3, "all", api_name="/search")
    assert queries < ANALYTICS_EVERY
    assert len(built) <= 1


def test_a_thumbnail_is_found_static_at_the_first_static_path(served, monkeypatch):
    """Gradio checks each answer's files against its static paths in order, resolving both
    paths for each one tried: a thumbnail is found at the first (two ``realpath`` calls),
    and serving again adds no second entry."""
    import os

    from gradio.data_classes import FileData, _StaticFiles
    from gradio.utils import is_static_file

    from groco.app.web import static_first

    images, _, url = served
    client = gradio_client.Client(url, verbose=False, download_files=False)
    answer = client.predict(gradio_client.handle_file(str(images / "class0" / "img000.png")),
                            3, "all", api_name="/search")
    thumbnail = Path(answer[0][0]["image"]["path"])
    folder = thumbnail.parent
    assert folder.name == "thumbnails" and thumbnail.is_file()
    static_first(folder)
    assert _StaticFiles.all_paths.count(folder.resolve()) == 1
    calls = []
    realpath = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda *a, **kw: calls.append(a) or realpath(*a, **kw))
    assert is_static_file(FileData(path=str(thumbnail)))
    assert len(calls) == 2
    calls.clear()
    assert not is_static_file(FileData(path=str(images / "class0" / "img000.png")))
