"""Small JPEG thumbnails of indexed images, made on first request and cached on disk.

The web app only ever serves files from this cache, never the originals: a result page of
50 images stays small however large the collection's images are.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from groco.fileio import atomic_path
from groco.images import ImageError, load_image

THUMBNAIL_SIZE = 256


class ThumbnailCache:
    """``path_for(original, content_hash) -> Path`` of a ``size``-pixel JPEG thumbnail.

    Thumbnails live in ``folder`` under a name derived from the content hash, so a changed
    file gets a new thumbnail. Returns ``None`` for an original that cannot be decoded.
    """

    def __init__(self, folder: str | Path, size: int = THUMBNAIL_SIZE) -> None:
        self.folder = Path(folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.size = size
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _name(self, original: Path, content_hash: str | None) -> str:
        key = content_hash or hashlib.blake2b(str(original).encode(), digest_size=8).hexdigest()
        return f"{key}-{self.size}.jpg"

    def path_for(self, original: str | Path, content_hash: str | None = None) -> Path | None:
        target = self.folder / self._name(Path(original), content_hash)
        if target.is_file():
            return target
        with self._guard:
            lock = self._locks.setdefault(target.name, threading.Lock())
        with lock:
            if target.is_file():
                return target
            try:
                image = load_image(original)
            except ImageError:
                return None
            image.thumbnail((self.size, self.size), Image.Resampling.BICUBIC)
            with atomic_path(target) as tmp:
                image.save(tmp, format="JPEG", quality=85)
        return target

    def prebuild(self, items: Iterable[tuple[str | Path, str | None]]) -> int:
        """Make the thumbnails of ``(original, content_hash)`` pairs ahead of any request;
        returns how many exist afterwards."""
        return sum(self.path_for(original, content_hash) is not None
                   for original, content_hash in items)

