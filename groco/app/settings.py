"""The web app's limits and defaults, in one value (no Gradio, no index here)."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class AppSettings:
    """What the server allows and shows. Every limit holds on every input path.

    - ``max_upload_bytes``: the largest query file, whether uploaded, sent as a base64
      ``data:`` URL or inside an API payload (10 MiB).
    - ``max_query_pixels``: the largest query image (width x height), checked from the
      file's header before any pixel is decoded (50 MP).
    - ``decode_concurrency``: how many large query images (over ``large_query_pixels``)
      are decoded at once; more wait, smaller ones do not.
    - ``concurrency``: how many searches run at once (Gradio's queue).
    - ``queue_size``: how many more may wait, on the page and on the JSON routes each;
      past it a query is refused at once ("busy", HTTP 429 on the JSON routes) instead of
      waiting without bound.
    - ``default_k``: neighbours shown by default; ``max_k``: the slider's end.
    - ``browse_page``: thumbnails per page of the collection grid.
    - ``reduce_queries``: decode queries reduced to what the encoder needs (on; off only
      to measure what it saves).
    - ``refresh_seconds``: how often the server looks for a newer index state written by
      ``groco index update`` and switches to it (1 s).
    - ``batch_queries``: embed the queries that wait together in one call (on; off only
      to measure what it saves: :mod:`groco.index.api.batcher`).
    - ``encoder_spinning``: let ONNX Runtime's threads spin between queries
      (:class:`groco.encoder.runtime.Encoder`; off: that CPU goes to answering requests;
      on only to measure what it costs).
    - ``ray_address``: with several index directories, serve every shard but the first in
      a Ray Serve replica (``local`` or a cluster's address; :mod:`groco.index.api.remote`);
      ``None``: threads of this process.
    """

    max_upload_bytes: int = 10 * MIB
    max_query_pixels: int = 50_000_000
    decode_concurrency: int = 2
    large_query_pixels: int = 4_000_000
    concurrency: int = 4
    queue_size: int = 32
    default_k: int = 12
    max_k: int = 50
    browse_page: int = 24
    reduce_queries: bool = True
    refresh_seconds: float = 1.0
    batch_queries: bool = True
    ray_address: str | None = None
    encoder_spinning: bool = False

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_query_pixels", "decode_concurrency",
                     "large_query_pixels",
                     "concurrency", "queue_size", "default_k", "max_k", "browse_page"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.refresh_seconds > 0:
            raise ValueError(f"refresh_seconds must be > 0, got {self.refresh_seconds}")
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must be <= max_k ({self.max_k})")

    @property
    def max_request_bytes(self) -> int:
        """The largest HTTP request body: a ``data:`` URL of ``max_upload_bytes`` (base64,
        4/3 as long) plus 64 KiB for the rest of the request."""
        return -(-self.max_upload_bytes * 4 // 3) + 64 * 1024
