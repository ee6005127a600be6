"""Find images under a folder and decode them safely (the ground floor: stdlib, NumPy, PIL).

Shared by training, the index and the web app, so it must never import torch.

- :func:`find_images` lists image files recursively, in a deterministic order.
- :func:`load_image` decodes one file (or an upload) to an 8-bit RGB ``PIL.Image``, or
  raises :class:`ImageError` with a one-line message naming the file and the reason.
- :func:`resize_center_crop` is THE evaluation/indexing preprocessing policy:
  shorter side to ``resize_to``, then centre crop ``size`` x ``size``.
"""

from __future__ import annotations

import io
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from PIL.ImageCms import ImageCmsTransform

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
)
"""Lower-case suffixes of files treated as images (matched case-insensitively)."""

MAX_PIXELS: int = 128_000_000
"""Largest accepted image (width x height); bigger ones raise :class:`ImageError`."""

_WHITE = (255, 255, 255)


class ImageError(ValueError):
    """An image that cannot be used; ``str(err)`` is ``"<file>: <reason>"`` on one line."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = " ".join(str(reason).split()) or "unknown error"
        super().__init__(f"{name}: {self.reason}")


def is_image_file(path: str | Path) -> bool:
    """True when the file name has one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def find_images(root: str | Path) -> list[Path]:
    """All image files under ``root``, recursively, as ``root / relative_path``.

    Directory symlinks are followed, but each real directory is visited once, so symlink
    loops terminate. Names starting with ``.`` (files or folders) are skipped. The result
    is sorted by the path relative to ``root`` as a POSIX string, so it does not depend on
    the file system's listing order.

    Raises ``FileNotFoundError`` if ``root`` does not exist and ``NotADirectoryError`` if
    it is not a directory.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")

    found: list[tuple[str, Path]] = []
    visited: set[str] = set()

    def walk(directory: Path, rel: tuple[str, ...]) -> None:
        real = os.path.realpath(directory)
        if real in visited:
            return
        visited.add(real)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:  # unreadable folder (permissions, vanished): nothing to list
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks; a broken link is neither
                is_file = not is_dir and entry.is_file()
            except OSError:
                continue
            if is_dir:
                walk(directory / entry.name, (*rel, entry.name))
            elif is_file and is_image_file(entry.name):
                parts = (*rel, entry.name)
                found.append(("/".join(parts), root.joinpath(*parts)))

    walk(root, ())
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def label_of(path: str | Path, root: str | Path) -> str | None:
    """The first-level subfolder of ``root`` that holds ``path`` (``None`` directly in root).

    ``label_of("data/cats/a/x.jpg", "data") == "cats"``. Raises ``ValueError`` if ``path``
    is not under ``root``.
    """
    path, root = Path(path), Path(root)
    try:
        rel = path.relative_to(root)
    except ValueError:
        try:
            rel = path.resolve().relative_to(root.resolve())
        except ValueError:
            raise ValueError(f"{path} is not under {root}") from None
    return label_of_relpath(rel.as_posix())


def label_of_relpath(relpath: str) -> str | None:
    """THE folder-label rule: the first folder of a POSIX path relative to the images root.

    ``label_of_relpath("cats/a/x.jpg") == "cats"``; ``None`` for a file directly in the
    root (``"x.jpg"``). :func:`label_of` and the index's metadata both use it.
    """
    head, sep, _ = relpath.partition("/")
    return head if sep else None


def _source(path_or_file: str | Path | bytes | bytearray | memoryview | BinaryIO):
    """(what to give ``Image.open``, name for messages)."""
    if isinstance(path_or_file, (str, os.PathLike)):
        return path_or_file, os.fspath(path_or_file)
    if isinstance(path_or_file, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(path_or_file)), "<bytes>"
    if hasattr(path_or_file, "read"):
        name = getattr(path_or_file, "name", None)
        return path_or_file, str(name) if isinstance(name, (str, os.PathLike)) else "<upload>"
    raise TypeError(f"load_image expects a path, bytes or a file object, got {type(path_or_file)}")


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Map a single-channel 16/32-bit integer or float image to 0..255.

    ``I;16*``: ``v / 257`` (65535 -> 255). ``I``: the same when all values fit in
    0..65535 (16-bit files decoded as ``I``), else min-max. ``F``: ``v * 255`` when all
    values are in [0, 1], else min-max. NaN becomes 0.
    """
    a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        a = a / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255.0
    elif hi > lo:
        a = (a - lo) * (255.0 / (hi - lo))
    else:
        a = np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


@lru_cache(maxsize=1)
def _lab_to_srgb() -> ImageCmsTransform:
    from PIL import ImageCms  # only CIELab files (rare TIFFs) need littlecms

    lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
    return ImageCms.buildTransform(lab, srgb, "LAB", "RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB (``im`` itself when already RGB); alpha composited on white."""
    if im.mode.startswith("I") or im.mode == "F":
        return Image.fromarray(_scale_to_uint8(np.asarray(im), im.mode), "L").convert("RGB")
    if im.mode == "LAB":  # convert("RGB") would copy the channels, not transform colours
        return _lab_to_srgb().apply(im)
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


_REDUCIBLE = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB",
                        "HSV", "I", "F"})
"""Modes ``Image.reduce`` averages correctly (not palette indices, not 1-bit, not I;16)."""


def reduction_factor(width: int, height: int, min_side: int | None) -> int:
    """The largest integer ``f >= 1`` with ``min(width, height) // f >= min_side``
    (1 when ``min_side`` is ``None``): how far an image may shrink and keep its shorter
    side at least ``min_side``."""
    if not min_side:
        return 1
    return max(1, min(width, height) // int(min_side))


def _reduced(im: Image.Image, min_side: int | None) -> Image.Image:
    """``im`` shrunk by :func:`reduction_factor` with ``Image.reduce`` (box filter); modes
    it cannot average are brought to one it can first (I;16 to I, palette/1-bit to RGB)."""
    factor = reduction_factor(*im.size, min_side)
    if factor < 2:
        return im
    if im.mode.startswith("I;16"):
        im = im.convert("I")
    elif im.mode not in _REDUCIBLE:
        im = to_rgb(im)
    return im.reduce(factor)


_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
"""EXIF orientation -> the transpose that shows the image upright (as ``exif_transpose``)."""


def _upright(im: Image.Image, source: Image.Image) -> Image.Image:
    """``im`` (``source`` itself, or ``source`` reduced) turned upright by ``source``'s EXIF
    orientation; ``source`` itself goes through ``ImageOps.exif_transpose`` (a copy), a
    reduced one is transposed in place of a full-size copy."""
    try:
        if im is source:
            return ImageOps.exif_transpose(im)
        method = _TRANSPOSE.get(source.getexif().get(_ORIENTATION, 1))
        return im.transpose(method) if method is not None else im
    except Exception:  # a corrupt EXIF block does not make the pixels unusable
        return im.copy() if im is source else im


def load_image(
    path_or_file: str | Path | bytes | bytearray | memoryview | BinaryIO,
    *,
    max_pixels: int | None = None,
    min_side: int | None = None,
) -> Image.Image:
    """Decode an image file, bytes or file object to an 8-bit RGB ``PIL.Image``.

    - EXIF orientation is applied (``ImageOps.exif_transpose``).
    - Any mode becomes RGB: CMYK, L, 1, P, ... converted; alpha (RGBA, LA, palette or
      colour-key transparency) composited on white; 16-bit and float images scaled to
      8 bits (see :func:`_scale_to_uint8`), not clipped.
    - Animated images (GIF, WebP, multi-page TIFF): the first frame.
    - More than ``max_pixels`` (default :data:`MAX_PIXELS`, read at call time; checked
      from the header, before any pixel is decoded), PIL's decompression-bomb check, a
      missing, truncated or corrupt file: :class:`ImageError` ``"<file>: <reason>"``.
      The pixels are fully decoded here, so a broken file fails now, not later.
    - ``min_side`` (for a consumer that shrinks the image anyway, such as an encoder
      whose preprocessing resizes the shorter side): decode *reduced*, by the largest
      integer factor that keeps the shorter side >= ``min_side``
      (:func:`reduction_factor`): JPEG through ``Image.draft`` (DCT scaling while
      decoding, 1/2, 1/4 or 1/8), then, for any format, ``Image.reduce`` by what is left
      (box filter). An image whose shorter side is under ``2 * min_side`` is unchanged.
    """
    source, name = _source(path_or_file)
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            # MAX_PIXELS is our limit; PIL's warning threshold (~89 MP) is lower than it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageError(
                        name, f"too many pixels ({width}x{height} > {max_pixels:,} allowed)"
                    )
                factor = reduction_factor(width, height, min_side)
                if factor > 1 and im.format == "JPEG":
                    im.draft(im.mode, (width // factor, height // factor))
                im.load()  # full decode: truncated data raises here
                # reduced before turning upright: no full-size copy; a new image either way,
                # so the file is closed on return
                return to_rgb(_upright(_reduced(im, min_side), im))
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(name, f"too many pixels ({err})") from err
    except Image.UnidentifiedImageError as err:
        raise ImageError(name, "not a recognised image format") from err
    except FileNotFoundError as err:
        raise ImageError(name, "file not found") from err
    except Exception as err:  # PIL decoders raise OSError, SyntaxError, struct.error, ...
        raise ImageError(name, f"cannot decode ({type(err).__name__}: {err})") from err


def resize_center_crop(img: Image.Image, size: int, resize_to: int | None = None) -> Image.Image:
    """The evaluation/indexing preprocessing: shorter side to ``resize_to``, centre crop ``size``.

    The shorter side is resized to ``resize_to`` (default ``size``) with bicubic
    resampling (PIL's resize is antialiased when it shrinks), keeping the aspect ratio
    (longer side ``int(resize_to * long / short)``, as torchvision's ``Resize``), then the
    central ``size`` x ``size`` square is cut (offsets rounded as torchvision's
    ``CenterCrop``). Returns a new image of exactly ``size`` x ``size``.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    resize_to = size if resize_to is None else resize_to
    if resize_to < size:
        raise ValueError(f"resize_to ({resize_to}) must be >= size ({size})")
    w, h = img.size
    if min(w, h) < 1:
        raise ValueError(f"cannot resize an empty image ({w}x{h})")
    if w <= h:
        new_w, new_h = resize_to, int(resize_to * h / w)
    else:
        new_w, new_h = int(resize_to * w / h), resize_to
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))
