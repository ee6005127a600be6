"""groco.images: discovery, safe decoding of every odd mode, preprocessing policy."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from groco import images
from groco.images import (
    ImageError,
    find_images,
    is_image_file,
    label_of,
    load_image,
    resize_center_crop,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def pixel(img: Image.Image, xy: tuple[int, int]) -> np.ndarray:
    return np.asarray(img, dtype=np.int32)[xy[1], xy[0]]


def assert_close(actual, expected, tol: int = 0) -> None:
    diff = np.abs(np.asarray(actual, dtype=np.int32) - np.asarray(expected, dtype=np.int32))
    assert diff.max() <= tol, f"{actual} != {expected} (tol {tol})"


# --------------------------------------------------------------------------- discovery


def test_find_images_nested_mixed_case_and_ignored(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for rel in ["z.Jpeg", "a/y.png", "a/b/x.JPG", "a/b/w.TiFf", "B/v.webp", "c.gif", "d.BMP"]:
        touch(root / rel)
    for rel in ["notes.txt", "a/readme.md", "a/b/noext", ".hidden.png", ".git/h.png", "e.jpg.bak"]:
        touch(root / rel)
    (root / "folder.png").mkdir()  # a directory with an image-like name is not a file

    found = find_images(root)
    rel = [p.relative_to(root).as_posix() for p in found]
    assert rel == sorted(rel)
    assert rel == ["B/v.webp", "a/b/w.TiFf", "a/b/x.JPG", "a/y.png", "c.gif", "d.BMP", "z.Jpeg"]
    assert all(p.is_file() and str(p).startswith(str(root)) for p in found)
    assert find_images(str(root)) == found  # str accepted, same result


def test_find_images_follows_symlinks_and_survives_loops(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    touch(root / "a" / "b" / "x.png")
    touch(outside / "o.jpg")
    os.symlink(root, root / "a" / "b" / "loop")  # loop back to the root
    os.symlink(root / "a", root / "a" / "self")  # loop to a parent
    os.symlink(outside, root / "ext")  # a linked folder outside the root is followed
    os.symlink(tmp_path / "missing", root / "broken")  # a dangling link is ignored

    rel = [p.relative_to(root).as_posix() for p in find_images(root)]
    assert rel == ["a/b/x.png", "ext/o.jpg"]


def test_find_images_deterministic_order(tmp_path: Path) -> None:
    names = [f"{d}/{i:03d}.png" for d in ("q", "a", "m") for i in (7, 1, 30)]
    for n in names:
        touch(tmp_path / n)
    first = find_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in first] == sorted(names)
    assert find_images(tmp_path) == first


def test_find_images_bad_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        find_images(tmp_path / "missing")
    f = touch(tmp_path / "file.png")
    with pytest.raises(NotADirectoryError, match="file.png"):
        find_images(f)


def test_is_image_file_and_label_of(tmp_path: Path) -> None:
    assert is_image_file("a/B.JPEG") and is_image_file("x.tif") and not is_image_file("x.txt")
    assert label_of(tmp_path / "cats" / "a" / "x.jpg", tmp_path) == "cats"
    assert label_of(tmp_path / "x.jpg", tmp_path) is None
    assert label_of("data/dogs/y.png", "data") == "dogs"
    with pytest.raises(ValueError, match="not under"):
        label_of(tmp_path / "x.jpg", tmp_path / "other")


# --------------------------------------------------------------------------- decoding


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def test_rgb_roundtrip_and_inputs(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (5, 3), GREEN), tmp_path / "g.png")
    for src in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes())):
        img = load_image(src)
        assert img.mode == "RGB" and img.size == (5, 3)
        assert_close(pixel(img, (0, 0)), GREEN)
    with open(path, "rb") as fh:
        assert load_image(fh).size == (5, 3)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=95)
    img = load_image(path)
    assert img.mode == "RGB"
    assert_close(pixel(img, (8, 8)), RED, tol=8)


def test_16bit_gray_gradient_is_scaled_not_white(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (4, 1))
    path = save(Image.fromarray(ramp), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    arr = np.asarray(load_image(path))
    assert arr.dtype == np.uint8 and arr.shape == (4, 64, 3)
    row = arr[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert abs(row[32] - 130) <= 2  # 32/63 of full scale, not clipped to 255
    assert (np.diff(row) >= 0).all()
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_float_image_is_scaled(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 1, 11, dtype=np.float32), (2, 1))
    path = save(Image.fromarray(ramp, "F"), tmp_path / "f.tif")
    row = np.asarray(load_image(path))[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and abs(row[5] - 128) <= 1


def test_rgba_transparent_becomes_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (4, 2), (*BLUE, 255))
    rgba.putpixel((0, 0), (*RED, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    img = load_image(save(rgba, tmp_path / "a.png"))
    assert_close(pixel(img, (0, 0)), WHITE)
    assert_close(pixel(img, (1, 0)), (127, 127, 127), tol=1)
    assert_close(pixel(img, (3, 1)), BLUE)


def test_la_and_palette_transparency(tmp_path: Path) -> None:
    la = Image.new("LA", (2, 1), (0, 255))
    la.putpixel((0, 0), (0, 0))
    img = load_image(save(la, tmp_path / "la.png"))
    assert_close(pixel(img, (0, 0)), WHITE)
    assert_close(pixel(img, (1, 0)), (0, 0, 0))

    pal = Image.new("P", (3, 1), 0)
    pal.putpalette([*GREEN, *BLUE] + [0] * (254 * 3))
    pal.putpixel((2, 0), 1)
    for ext in ("png", "gif"):
        img = load_image(save(pal, tmp_path / f"p.{ext}", transparency=0))
        assert img.mode == "RGB"
        assert_close(pixel(img, (0, 0)), WHITE)
        assert_close(pixel(img, (2, 0)), BLUE)


def test_bilevel_and_gray(tmp_path: Path) -> None:
    bw = Image.new("1", (2, 1), 0)
    bw.putpixel((1, 0), 1)
    img = load_image(save(bw, tmp_path / "bw.bmp"))
    assert_close(pixel(img, (0, 0)), (0, 0, 0))
    assert_close(pixel(img, (1, 0)), WHITE)
    img = load_image(save(Image.new("L", (2, 2), 77), tmp_path / "l.png"))
    assert_close(pixel(img, (1, 1)), (77, 77, 77))


def test_cielab_tiff_is_colour_converted(tmp_path: Path) -> None:
    path = save(Image.new("LAB", (2, 2), (136, 208, 195)), tmp_path / "lab.tif")
    assert Image.open(path).mode == "LAB"
    assert_close(pixel(load_image(path), (1, 1)), RED, tol=12)


def test_exif_orientation_6_rotates(tmp_path: Path) -> None:
    src = Image.new("RGB", (40, 20), BLUE)
    src.paste(RED, (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored as is, display rotated 90 degrees clockwise
    path = save(src, tmp_path / "o.jpg", exif=exif.tobytes(), quality=95)
    img = load_image(path)
    assert img.size == (20, 40)
    assert_close(pixel(img, (10, 5)), RED, tol=10)  # left half is now on top
    assert_close(pixel(img, (10, 35)), BLUE, tol=10)


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (6, 6), c) for c in (RED, GREEN, BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (6, 6)
    assert_close(pixel(img, (3, 3)), RED)


# --------------------------------------------------------------------------- failures


def noisy(size: int = 64) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_file_raises_image_error(tmp_path: Path, ext: str) -> None:
    full = tmp_path / f"full.{ext}"
    noisy().save(full)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=f"cut.{ext}") as info:
        load_image(cut)
    assert "\n" not in str(info.value)


def test_random_bytes_and_missing_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError, match="junk.jpg: not a recognised image format"):
        load_image(junk)
    with pytest.raises(ImageError, match="<bytes>"):
        load_image(b"not an image")
    with pytest.raises(ImageError, match="gone.png: file not found"):
        load_image(tmp_path / "gone.png")
    assert issubclass(ImageError, ValueError)


def png_with_header_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR claims ``width`` x ``height`` (CRC fixed)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_too_many_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Above MAX_PIXELS but below PIL's own error threshold: our check fires.
    above = tmp_path / "above.png"
    above.write_bytes(png_with_header_size(12_000, 12_000))
    with pytest.raises(ImageError, match="above.png: too many pixels"):
        load_image(above)
    # Far above PIL's threshold: its DecompressionBombError becomes an ImageError.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_with_header_size(60_000, 60_000))
    with pytest.raises(ImageError, match="bomb.png: too many pixels"):
        load_image(bomb)
    # The limit is the module constant, read at call time.
    small = save(Image.new("RGB", (20, 20)), tmp_path / "small.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 399)
    with pytest.raises(ImageError, match="small.png: too many pixels"):
        load_image(small)
    monkeypatch.setattr(images, "MAX_PIXELS", 400)
    assert load_image(small).size == (20, 20)


# --------------------------------------------------------------------------- preprocessing


def three_bands(width: int, height: int) -> Image.Image:
    """Blue | red | green vertical thirds."""
    img = Image.new("RGB", (width, height), BLUE)
    img.paste(RED, (width // 3, 0, 2 * width // 3, height))
    img.paste(GREEN, (2 * width // 3, 0, width, height))
    return img


def test_resize_center_crop_policy() -> None:
    # Shorter side already resize_to: no resize, the crop is the exact centre.
    out = resize_center_crop(three_bands(60, 30), 10, resize_to=30)
    assert out.size == (10, 10)
    assert (np.asarray(out) == RED).all()
    # Shorter side 60 -> 30 (longer 120 -> 60), centre 10x10 is red.
    out = resize_center_crop(three_bands(120, 60), 10, resize_to=30)
    assert_close(np.asarray(out).reshape(-1, 3).mean(0), RED, tol=2)
    # Default resize_to == size, portrait and landscape, up- and down-scaling.
    for w, h in [(37, 91), (91, 37), (5, 7), (300, 300)]:
        assert resize_center_crop(Image.new("RGB", (w, h)), 16).size == (16, 16)
    with pytest.raises(ValueError, match="resize_to"):
        resize_center_crop(Image.new("RGB", (8, 8)), 16, resize_to=8)
