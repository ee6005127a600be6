"""Outbound connections made to fail loudly in a process groco starts: a
``sitecustomize.py`` that refuses, and records in ``GROCO_OUTBOUND_LOG``, every connect or
name lookup that is not this machine's loopback."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

GUARD = '''
import ipaddress, os, socket

_LOG = os.environ["GROCO_OUTBOUND_LOG"]


def _local(host):
    host = str(host).strip("[]")
    if host in ("localhost", "", "0.0.0.0", "::"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse(what):
    with open(_LOG, "a") as log:
        log.write(what + "\\n")
    raise OSError("outbound connection refused by the test: " + what)


_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex
_getaddrinfo = socket.getaddrinfo


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        _refuse("connect %r" % (address,))
    return _connect(self, address)


def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        _refuse("connect_ex %r" % (address,))
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    if host is not None and not _local(host if isinstance(host, str) else host.decode()):
        _refuse("getaddrinfo %r" % (host,))
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
socket.getaddrinfo = getaddrinfo
'''


def guarded_env(folder: Path, log: Path) -> dict[str, str]:
    """An environment whose Python processes refuse outbound connections (recorded in
    ``log``), with Gradio's and the hub's telemetry asked for, so only groco's own settings
    keep them off."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(GUARD)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get(
        "PYTHONPATH", "")]), "GROCO_OUTBOUND_LOG": str(log),
        "GRADIO_ANALYTICS_ENABLED": "True", "HF_HUB_DISABLE_TELEMETRY": "0"}


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
    import gradio_client

    client = gradio_client.Client(url, verbose=False)
    client.predict(gradio_client.handle_file(str(images / "class0/img000.png")), 3,
                   "all", api_name="/search")
    client.view_api(print_info=False)
