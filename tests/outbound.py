"""Outbound connections made to fail loudly in a process groco starts: a
``sitecustomize.py`` that refuses, and records in ``GROCO_OUTBOUND_LOG``, every connect or
name lookup that is not this machine's loopback."""

from __future__ import annotations

import os
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
