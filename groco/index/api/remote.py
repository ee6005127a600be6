"""Shards of a union in Ray Serve replicas (``groco serve/search ... --ray ADDRESS``,
``groco[ray]``).

Each shard but the first is opened by an :class:`~groco.index.api.reader.IndexReader` in a
replica of its own Ray Serve deployment (one replica, on whatever node Ray places it: the
index directory must be readable there, as on one machine or a shared file system), and
answers through a :class:`RemoteShard`, which offers the reader's methods a union and the
page call (search by vector, rows, stored vectors, label counts, the state switch). The
first shard stays in this process: it embeds the query once and backs the page's
collection, duplicates and map, as it does without Ray.

A replica that dies or stops answering raises ``RuntimeError`` from the call (a shard
failure to the union, which leaves it out and names it); what the reader raises itself
(``KeyError`` for an unknown item, ``ValueError`` for a bad request) reaches the caller as
that exception.

``ADDRESS`` is ``local`` (a Ray started in this process) or anything ``ray.init(address=)``
takes (``auto``, ``ray://head:10001``).
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..manifest import IndexDirError
from .reader import IndexReader

CALL_TIMEOUT_S = 10.0
"""Seconds a replica has to answer one call before its shard counts as failed (a query's
user is waiting: a shard that slow is left out and named)."""


class RayServeMissingError(ValueError):
    """``--ray`` without Ray Serve installed (one line, with the install command)."""


class ShardServer:
    """What runs in a shard's replica: the shard's reader, its methods by name."""

    def __init__(self, index_dir: str) -> None:
        self.reader = IndexReader(index_dir, batch_queries=False)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "facts":
            return {"hash": self.reader.encoder.hash, "root": str(self.reader.root)}
        return getattr(self.reader, method)(*args, **kwargs)


def _serve(address: str) -> Any:
    try:
        import ray
        from ray import serve
    except ImportError as error:
        raise RayServeMissingError(f"--ray needs Ray Serve: pip install 'groco[ray]' ({error})"
                                   ) from None
    if not ray.is_initialized():
        options = {"include_dashboard": False, "log_to_driver": False}
        ray.init(**options) if address == "local" else ray.init(address=address, **options)
    serve.start(proxy_location="Disabled")  # no HTTP proxy: the page calls the handles
    return serve


class RemoteShard:
    """A shard served by a Ray Serve replica, with the reader methods a union uses."""

    def __init__(self, index_dir: str | Path, address: str) -> None:
        self.index_dir = Path(index_dir)
        if not (self.index_dir / "manifest.json").is_file():
            raise IndexDirError(f"{self.index_dir}: not an index directory (no manifest.json)")
        self._serve = _serve(address)
        self.app = f"groco-shard-{uuid.uuid4().hex[:8]}"
        deployment = self._serve.deployment(ShardServer, name="shard", num_replicas=1,
                                            ray_actor_options={"num_cpus": 0})
        try:
            self._handle = self._serve.run(deployment.bind(str(self.index_dir)),
                                           name=self.app, route_prefix=None)
        except Exception as error:  # the replica could not open the shard
            raise IndexDirError(f"{self.index_dir}: its replica did not start: "
                                f"{first_line(error)}") from None
        facts = self._call("facts")
        self.encoder = SimpleNamespace(hash=facts["hash"])
        self.root = Path(facts["root"])

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from ray.exceptions import RayTaskError

        try:
            return self._handle.call.remote(method, *args, **kwargs).result(
                timeout_s=CALL_TIMEOUT_S)
        except RayTaskError:  # raised by the reader: an instance of its own exception type
            raise
        except Exception as error:  # the replica died, timed out or is unreachable
            raise RuntimeError(f"the replica of {self.index_dir} failed: "
                               f"{first_line(error)}") from None

    def search_vector(self, vector: np.ndarray, k: int = 10, **options: Any) -> list:
        return self._call("search_vector", np.asarray(vector, dtype=np.float32), k, **options)

    def label_counts(self) -> dict[str, int]:
        return self._call("label_counts")

    def row(self, item: int | str | Path) -> Any:
        return self._call("row", item)

    def stored_vector(self, item_id: int) -> np.ndarray:
        return self._call("stored_vector", item_id)

    def refresh(self) -> bool:
        return self._call("refresh")

    def close(self) -> None:
        with contextlib.suppress(Exception):  # Ray already gone: nothing left to delete
            self._serve.delete(self.app)


def first_line(error: BaseException) -> str:
    """The first line of ``str(error)`` (its type's name when empty): how a shard's
    failure is named."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
