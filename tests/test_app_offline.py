"""`groco serve` makes no outbound connection: every non-loopback connect or name lookup in
its process is refused and recorded, the environment asks for Gradio's telemetry, and the
page, the Gradio API and the JSON routes are all exercised (`groco demo`: test_demo.py)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, make_collection
from outbound import exercise, guarded_env

pytest.importorskip("gradio_client")


def test_the_server_makes_no_outbound_connection(encoder_file: Path, tmp_path: Path):
    from groco.index.build import build_index_dir

    images = make_collection(tmp_path / "images", classes=2, per_class=6, size=32)
    index = tmp_path / "index"
    build_index_dir(images, encoder_file, index, batch_size=8, progress=False)
    log = tmp_path / "outbound.log"
    env = guarded_env(tmp_path / "guard", log)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "groco.cli", "serve", str(index),
                               "--port", str(port)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(url, timeout=60) as page:
                    assert page.status == 200
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
