"""`groco serve` and `groco demo` make no outbound connection: every non-loopback connect
or name lookup in their process is refused and recorded, the environment asks for
Gradio's telemetry, and the page, the Gradio API and the JSON routes are all exercised."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import make_collection
from outbound import guarded_env

gradio_client = pytest.importorskip("gradio_client")



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.status, response.read()


def exercise(url: str, images: Path) -> None:
    """The page, the JSON routes and the Gradio API of the server at ``url`` over
    ``images`` (a collection with class0/img000.png, class0/img001.png and
    class1/img002.png)."""
    assert _get(url)[0] == 200
    query = (images / "class1" / "img002.png").read_bytes()
    request = urllib.request.Request(f"{url}groco/api/search?k=3", data=query,
                                     method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        found = json.loads(response.read())
    assert found["results"][0]["relpath"] == "class1/img002.png"
    assert _get(f"{url}groco/api/more_like_this?item=class0/img001.png&k=2")[0] == 200
    assert _get(f"{url}groco/api/browse?page=0")[0] == 200
    client = gradio_client.Client(url, verbose=False)
    client.predict(gradio_client.handle_file(str(images / "class0/img000.png")), 3,
                   "all", api_name="/search")
    client.view_api(print_info=False)


def test_the_demo_makes_no_outbound_connection(demo_run):
    """`groco demo`, as a user runs it (train, export, index, serve), with outbound
    connections refused from its first line."""
    images, _, output, url, log = demo_run
    assert "k-NN top-1" in output
    exercise(url, images)
    time.sleep(3)
    assert not log.exists(), log.read_text()


def test_the_server_makes_no_outbound_connection(encoder_file: Path, tmp_path: Path):
    from groco.index.build import build_index_dir

    images = make_collection(tmp_path / "images", classes=2, per_class=6, size=32)
    index = tmp_path / "index"
    build_index_dir(images, encoder_file, index, batch_size=8, progress=False)
    log = tmp_path / "outbound.log"
    env = guarded_env(tmp_path / "guard", log)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "groco.cli", "serve", str(index),
                               "--port", str(port)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                assert _get(url)[0] == 200
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(server.stdout.read().decode()) from None
                time.sleep(1)
        exercise(url, images)
        time.sleep(3)  # background threads (Gradio's version check) have had their chance
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert not log.exists(), log.read_text()


def test_a_port_out_of_range_is_refused_without_a_traceback(tmp_path: Path):
    from typer.testing import CliRunner

    from groco.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--port", "70000"])
    assert result.exit_code == 2 and "65535" in result.output
    assert "Traceback" not in result.output
