"""Query images from the web UI and its API: one bounded way in, groco's own decoder.

Whatever brings the query (an upload, a paste, the webcam, a ``gradio_client`` call, a raw
API payload with a base64 ``data:`` URL), the server gets the file's *bytes* and decodes
them with :func:`groco.images.load_image`, exactly as ``groco index build`` and
``groco search`` do (EXIF rotation applied, transparency composited on white, 16-bit
scaled, CMYK converted). Gradio never decodes or re-encodes a query.

Bounds, on every path: at most ``max_upload_bytes`` of file (checked before reading a
file or decoding base64), at most ``max_query_pixels`` (checked from the header, before
any pixel is decoded), decoded reduced to what the encoder needs (see
:func:`groco.images.load_image`'s ``min_side``), and at most ``decode_concurrency``
decodes at once.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import threading
from pathlib import Path
from typing import Any

from PIL import Image

from groco.app.settings import AppSettings
from groco.images import ImageError, load_image


class UploadError(ValueError):
    """A query that cannot be used; ``str(err)`` is one line for the user."""


def _too_large(size: int, what: str, cap: int) -> UploadError:
    return UploadError(f"Image too large: {size:,} bytes {what}, at most {cap:,} "
                       f"({cap / (1024 * 1024):.1f} MB) allowed.")


def decode_data_url(url: str, max_bytes: int) -> bytes:
    """The bytes of a ``data:[<mime>][;base64],<data>`` URL, refusing more than
    ``max_bytes`` *before* decoding (the base64 text's length gives the size)."""
    header, sep, data = url.partition(",")
    if not sep or not header.startswith("data:"):
        raise UploadError("Not a data: URL (expected data:<type>;base64,<data>).")
    if not header.endswith(";base64"):
        raise UploadError("A data: URL query must be base64 encoded (data:<type>;base64,...).")
    size = len(data) * 3 // 4 - data[-2:].count("=")
    if size > max_bytes:
        raise _too_large(size, "in a data: URL", max_bytes)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise UploadError("The data: URL is not valid base64.") from None


class QueryDecoder:
    """``decode(payload) -> RGB PIL image`` for an image component's raw payload (thread-safe).

    ``payload``: the component's value as Gradio sends it with ``preprocess=False`` (a
    dict with ``path``, ``url``, ``orig_name``), or a path. A ``path`` must lie in
    ``upload_folder`` (Gradio's upload cache): the server reads only what was uploaded.
    ``min_side``: decode reduced while the shorter side stays >= ``min_side``.
    """

    def __init__(self, settings: AppSettings, min_side: int | None = None,
                 upload_folder: str | Path | None = None) -> None:
        self.settings = settings
        self.min_side = min_side
        if upload_folder is None:
            from gradio.utils import get_upload_folder

            upload_folder = get_upload_folder()
        self.upload_folder = Path(upload_folder).resolve()
        self._slots = threading.BoundedSemaphore(settings.decode_concurrency)

    def source(self, payload: Any) -> tuple[str | bytes, str]:
        """(path or bytes to decode, name for messages), within the byte cap."""
        cap = self.settings.max_upload_bytes
        if payload is None:
            raise UploadError("Drop an image first.")
        if isinstance(payload, (str, Path)):
            payload = {"path": str(payload)}
        if not isinstance(payload, dict):
            raise UploadError(f"Expected an image file, got {type(payload).__name__}.")
        name = str(payload.get("orig_name") or "the upload")
        url = payload.get("url") or ""
        if isinstance(url, str) and url.startswith("data:"):
            return decode_data_url(url, cap), name
        path = payload.get("path")
        if not path:
            raise UploadError("Drop an image first.")
        real = Path(path).resolve()
        if not real.is_relative_to(self.upload_folder):
            raise UploadError(f"{name}: not an uploaded file.")
        try:
            size = os.stat(real).st_size
        except OSError:
            raise UploadError(f"{name}: the upload is gone, upload it again.") from None
        if size > cap:
            raise _too_large(size, f"in {name}", cap)
        return str(real), name

    @staticmethod
    def pixels(source: str | bytes) -> int:
        """Width x height from the file's header (0 when PIL cannot read one: the decode
        then reports why)."""
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                return im.size[0] * im.size[1]
        except Exception:  # noqa: BLE001 - any header failure is the decoder's to report
            return 0

    def decode(self, payload: Any) -> Image.Image:
        """The query as 8-bit RGB; :class:`UploadError` (one line) for anything unusable.

        Images over ``large_query_pixels`` take one of ``decode_concurrency`` slots (their
        decode holds up to 4 bytes a pixel); smaller ones never wait behind them.
        """
        source, name = self.source(payload)
        return self._decode(source, name)

    def decode_bytes(self, data: bytes, name: str = "the upload") -> Image.Image:
        """The query sent as a file's bytes (the JSON route's request body), with the same
        caps and decoding as :meth:`decode`."""
        cap = self.settings.max_upload_bytes
        if not data:
            raise UploadError("Send an image file as the request body.")
        if len(data) > cap:
            raise _too_large(len(data), f"in {name}", cap)
        return self._decode(bytes(data), name)

    def _decode(self, source: str | bytes, name: str) -> Image.Image:
        large = self.pixels(source) > self.settings.large_query_pixels
        with self._slots if large else contextlib.nullcontext():
            try:
                return load_image(source, max_pixels=self.settings.max_query_pixels,
                                  min_side=self.min_side)
            except ImageError as error:
                if error.reason.startswith("too many pixels"):
                    raise UploadError(f"Image too large: {name} has {error.reason}.") from None
                raise UploadError(f"Not a readable image: {name} ({error.reason})") from None
