"""Bounded work under load: with every search slot busy and the queue full, a query is
refused at once (HTTP 429 on the JSON route, "Queue is full" through the Gradio API)
instead of waiting without bound; the admitted ones are all answered."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import free_port, make_collection

from groco.app.settings import AppSettings
from groco.app.state import AppState

RUNNING, WAITING, CLIENTS = 1, 2, 8


@pytest.fixture(scope="module")
def stalled_server(encoder_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server with 1 search slot and a queue of 2 whose searches wait for ``release``."""
    from groco.app.web import serve
    from groco.index.build import build_index_dir

    base = tmp_path_factory.mktemp("queue")
    images = make_collection(base / "images", classes=2, per_class=4, size=32)
    build_index_dir(images, encoder_file, base / "index", batch_size=8, progress=False)
    state = AppState.open(base / "index", settings=AppSettings(concurrency=RUNNING,
                                                                queue_size=WAITING))
    release = threading.Event()
    search = state.search_image

    def stalled(*args, **kwargs):
        release.wait(60)
        return search(*args, **kwargs)

    state.search_image = stalled
    app, url = serve(state, port=free_port(), block=False)
    yield url, images, release
    release.set()
    app.close()
    state.close()


def _post(url: str, data: bytes) -> tuple[int, float, str]:
    started = time.monotonic()
    request = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return response.status, time.monotonic() - started, ""
    except urllib.error.HTTPError as error:
        return error.code, time.monotonic() - started, error.headers.get("Retry-After", "")


def test_the_json_route_refuses_past_the_queue_at_once(stalled_server):
    url, images, release = stalled_server
    release.clear()
    query = (images / "class0" / "img001.png").read_bytes()
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(_post, f"{url}groco/api/search?k=2", query)
                   for _ in range(CLIENTS)]
        time.sleep(3)  # every request has arrived: the admitted ones wait on `release`
        early = [f.result() for f in futures if f.done()]
        release.set()
        every = [f.result() for f in futures]
    assert len(early) == CLIENTS - RUNNING - WAITING
    assert all(status == 429 and seconds < 2 and retry == "1"
               for status, seconds, retry in early)
    assert sorted(status for status, _, _ in every) == \
        [200] * (RUNNING + WAITING) + [429] * (CLIENTS - RUNNING - WAITING)


def test_the_gradio_queue_refuses_past_its_size(stalled_server):
    gradio_client = pytest.importorskip("gradio_client")
    url, images, release = stalled_server
    release.clear()
    client = gradio_client.Client(url, verbose=False)
    query = gradio_client.handle_file(str(images / "class1" / "img000.png"))
    jobs = []
    for _ in range(CLIENTS):
        jobs.append(client.submit(query, 2, "all", api_name="/search"))
        time.sleep(0.3)  # in order, so the first ones hold the slot and the queue
    time.sleep(2)
    release.set()
    outcomes = []
    for job in jobs:
        try:
            job.result(timeout=60)
            outcomes.append("answered")
        except Exception as error:  # noqa: BLE001 - the client's own error type varies
            assert "queue is full" in str(error).lower(), error
            outcomes.append("refused")
    assert outcomes.count("answered") == RUNNING + WAITING
    assert outcomes.count("refused") == CLIENTS - RUNNING - WAITING
