"""A candidate demo collection: scikit-learn's handwritten digits "in the wild" (tried for
``groco demo``; BENCHMARKS.md, "groco demo: what training buys").

    python benchmarks/demo_collection.py --variants plain flat grey grey-light big \
        big-colour shift            # each: the demo's own path, its three k-NN figures
    python benchmarks/demo_collection.py --variants shift --epochs 12
    python benchmarks/demo_collection.py --variants shift \
        --settings '{"image_size": 32, "small_stem": false}'

Each of scikit-learn's 1,797 bundled 8×8 digit scans (``sklearn.datasets.load_digits``, no
download) is drawn once onto a ``SIZE``-pixel RGB picture:

- background: a linear gradient between two random colours, a soft blotchy texture, or a
  flat colour, with pixel noise;
- clutter: a few random lines, rectangles and rings in random colours, behind the digit;
- the digit: scaled to ``DIGIT_SCALE`` of the picture, rotated by up to ``MAX_ROTATION``
  degrees, in a random colour that stands out from the background under it, at a random
  position inside the picture.

The label (the folder) is the digit; everything else is nuisance a search should ignore.
Raw pixels compare backgrounds and positions, not digits; an encoder trained on the
collection with random crops and colour jitter learns to look past them. Drawing is
deterministic given ``seed``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 32
DIGIT_SCALE = (0.6, 0.95)
MAX_ROTATION = 20.0
CLUTTER = (0, 1)
SATURATION = 0.4
BACKGROUNDS = (0.5, 0.25, 0.25)  # gradient, texture, flat
NOISE = 8.0  # std of the pixel noise, in 0-255 units
DESCRIPTION = ("scikit-learn's 1,797 handwritten digits (10 classes) drawn at random "
               "positions, sizes, angles and colours on random gradients, textures and "
               f"clutter, {SIZE} px")
FOLDER = "digits-in-the-wild"  # the collection's folder under the demo's work folder


def _muted(rng: np.random.Generator, shape: tuple[int, ...] = ()) -> np.ndarray:
    """Random colours (``shape + (3,)``, 0-255) of random brightness and at most
    ``SATURATION`` of full saturation."""
    value = rng.uniform(0, 255, shape + (1,))
    tint = rng.uniform(-1, 1, shape + (3,)) * SATURATION
    return (value * (1 + tint)).clip(0, 255)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A ``(size, size, 3)`` float array in [0, 255]: gradient, texture or flat colour."""
    kind = rng.choice(3, p=BACKGROUNDS)
    if kind == 0:
        start, end = _muted(rng, (2,))
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
        t = (np.cos(angle) * xs + np.sin(angle) * ys) / np.sqrt(0.5) + 0.5
        return start + t[..., None].clip(0, 1) * (end - start)
    if kind == 1:
        cells = int(rng.integers(2, 6))
        grid = _muted(rng, (cells, cells)).astype(np.uint8)
        smooth = Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(smooth, dtype=np.float64)
    return np.broadcast_to(_muted(rng), (size, size, 3)).copy()


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in _muted(rng))


def _clutter(picture: Image.Image, rng: np.random.Generator) -> None:
    """A few random lines, rectangles and rings, drawn onto ``picture`` in place."""
    draw = ImageDraw.Draw(picture)
    size = picture.width
    for _ in range(int(rng.integers(CLUTTER[0], CLUTTER[1] + 1))):
        x0, y0, x1, y1 = rng.uniform(-0.1 * size, 1.1 * size, 4)
        box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
        width = int(rng.integers(1, 3))
        shape = rng.integers(3)
        if shape == 0:
            draw.line([x0, y0, x1, y1], fill=_colour(rng), width=width)
        elif shape == 1:
            draw.rectangle(box, fill=_colour(rng) if rng.random() < 0.5 else None,
                           outline=_colour(rng), width=width)
        else:
            draw.ellipse(box, outline=_colour(rng), width=width)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def _digit_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour whose luminance is at least 90 (of 255) from the mean luminance of
    ``under`` (the background pixels the digit covers)."""
    target = float(_luminance(under).mean())
    for _ in range(100):
        colour = _muted(rng)
        if abs(float(_luminance(colour)) - target) >= 90:
            return colour
    return np.full(3, 0.0 if target > 127 else 255.0)


def render_digit(scan: np.ndarray, rng: np.random.Generator, size: int = SIZE) -> Image.Image:
    """One 8×8 digit scan (values 0-16, sklearn's ``load_digits().images[i]``) drawn as a
    ``size``-pixel RGB picture with a random background, clutter, scale, angle, colour and
    position (the module docstring's recipe), all drawn from ``rng``."""
    picture = Image.fromarray(_background(rng, size).clip(0, 255).astype(np.uint8))
    _clutter(picture, rng)
    side = max(8, round(size * rng.uniform(*DIGIT_SCALE)))
    grey = Image.fromarray((scan * (255.0 / 16.0)).clip(0, 255).astype(np.uint8))
    mask = grey.resize((side, side), Image.Resampling.BICUBIC)
    mask = mask.rotate(rng.uniform(-MAX_ROTATION, MAX_ROTATION), Image.Resampling.BICUBIC,
                       expand=True)
    mask = mask.crop(mask.getbbox() or (0, 0, mask.width, mask.height))
    if mask.width > size or mask.height > size:
        mask.thumbnail((size, size), Image.Resampling.BICUBIC)
    x = int(rng.integers(0, size - mask.width + 1))
    y = int(rng.integers(0, size - mask.height + 1))
    base = np.asarray(picture, dtype=np.float64)
    alpha = np.asarray(mask, dtype=np.float64)[..., None] / 255.0
    under = base[y:y + mask.height, x:x + mask.width]
    colour = _digit_colour(rng, under[alpha[..., 0] > 0.5] if (alpha > 0.5).any() else under)
    base[y:y + mask.height, x:x + mask.width] = under * (1 - alpha) + colour * alpha
    base += rng.normal(0.0, NOISE, base.shape)
    picture = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    return picture.filter(ImageFilter.GaussianBlur(0.3))


def write_digits_in_the_wild(folder: Path, seed: int = 0, size: int = SIZE,
                             count: int | None = None) -> Path:
    """The collection as ``folder/<digit>/<n>.png`` (``n`` the scan's index in
    ``load_digits``, 4 digits), ``size``-pixel RGB, written once: a ``.complete`` marker
    makes a second call return at once. ``count`` keeps the first ``count`` scans (all
    1,797 by default). The same ``seed`` writes the same pixels."""
    from sklearn.datasets import load_digits

    done = folder / ".complete"
    if done.exists():
        return folder
    digits = load_digits()
    rng = np.random.default_rng(seed)
    scans = list(zip(digits.images, digits.target, strict=True))[:count]
    for n, (scan, target) in enumerate(scans):
        (folder / str(target)).mkdir(parents=True, exist_ok=True)
        render_digit(scan, rng, size).save(folder / str(target) / f"{n:04d}.png")
    done.write_text("ok\n")
    return folder


VARIANTS: dict[str, dict] = {
    "plain": {},  # groco demo's own collection: the scans, white on black, 32 px
    "wild": {},  # the module's constants as they stand
    "flat": {"CLUTTER": (0, 0), "BACKGROUNDS": (0, 0, 1), "NOISE": 4.0, "MAX_ROTATION": 10.0,
             "DIGIT_SCALE": (0.5, 0.8)},
    "grey": {"SATURATION": 0.0, "CLUTTER": (0, 0), "BACKGROUNDS": (0, 0, 1), "NOISE": 4.0,
             "MAX_ROTATION": 10.0, "DIGIT_SCALE": (0.5, 0.8)},
    "grey-light": {"SATURATION": 0.0, "CLUTTER": (0, 0), "BACKGROUNDS": (0, 0, 1),
                   "NOISE": 4.0, "MAX_ROTATION": 10.0, "DIGIT_SCALE": (0.5, 0.8),
                   "light": True},
    "big": {"SATURATION": 0.0, "CLUTTER": (0, 0), "BACKGROUNDS": (0, 0, 1), "NOISE": 4.0,
            "MAX_ROTATION": 0.0, "DIGIT_SCALE": (0.85, 1.0), "light": True},
    "big-colour": {"SATURATION": 0.5, "CLUTTER": (0, 0), "BACKGROUNDS": (0, 0, 1),
                   "NOISE": 4.0, "MAX_ROTATION": 0.0, "DIGIT_SCALE": (0.85, 1.0)},
    "shift": {"SATURATION": 0.0, "CLUTTER": (0, 0), "NOISE": 0.0, "MAX_ROTATION": 0.0,
              "DIGIT_SCALE": (0.55, 0.75), "light": True, "black": True},
    "roam": {"SATURATION": 0.0, "CLUTTER": (0, 0), "NOISE": 0.0, "MAX_ROTATION": 0.0,
             "DIGIT_SCALE": (0.4, 0.5), "light": True, "black": True},
    "roam48": {"SIZE": 48, "SATURATION": 0.0, "CLUTTER": (0, 0), "NOISE": 0.0,
               "MAX_ROTATION": 0.0, "DIGIT_SCALE": (0.3, 0.4), "light": True, "black": True},
}
"""Rendering overrides tried: module constants, plus ``light`` (the digit always lighter
than the background, grey) and ``black`` (a black background)."""


def _light_digit(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A grey at least 90 (of 255) lighter than ``under``'s mean luminance."""
    low = min(255.0, float(_luminance(under).mean()) + 90.0)
    return np.full(3, rng.uniform(low, 255.0))


def use_variant(name: str) -> None:
    """Set this module's rendering to variant ``name`` of :data:`VARIANTS`."""
    global _digit_colour, _background
    overrides = dict(VARIANTS[name])
    if overrides.pop("light", False):
        _digit_colour = _light_digit
    if overrides.pop("black", False):
        _background = lambda rng, size: np.zeros((size, size, 3))  # noqa: E731
    for key, value in overrides.items():
        globals()[key] = value


def measure(name: str, work: Path, epochs: int | None, settings: dict | None = None) -> dict:
    """The demo's path on variant ``name`` (:func:`groco.demo.run_demo`, without the map,
    ``settings`` over its ``DEMO_SETTINGS``): trained, untrained and raw-pixel k-NN top-1
    and the seconds it took."""
    import groco.demo as demo

    demo.DEMO_SETTINGS.update(settings or {})
    work = work / name
    shutil.rmtree(work, ignore_errors=True)
    data = None
    if name != "plain":
        use_variant(name)
        data = write_digits_in_the_wild(work / "images", size=SIZE)
    demo._draw_map = lambda index, log: False
    started = time.perf_counter()
    result = demo.run_demo(work, data=data, epochs=epochs, log=lambda message: None)
    return {"variant": name, "trained": result.knn_top1, "untrained": result.random_knn_top1,
            "raw": result.raw_knn_top1, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["plain"])
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs [default: the demo's]")
    parser.add_argument("--settings", type=json.loads, default={},
                        help="JSON object of TrainConfig fields over the demo's settings")
    parser.add_argument("--work", type=Path, default=Path(".bench/demo-collection"))
    args = parser.parse_args()
    from groco.demo import DEMO_SETTINGS

    rows = []
    for name in args.variants:  # each in a fresh process: variants change module state
        done = subprocess_measure(name, args)
        rows.append(done)
        print(json.dumps(done), file=sys.stderr, flush=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import header

    print(header())
    settings = {**DEMO_SETTINGS, **args.settings}
    epochs = args.epochs or settings["epochs"]
    print(f"groco demo's path ({settings['backbone']} at {settings['image_size']} px, small "
          f"stem {settings['small_stem']}, {epochs} epochs; raw pixels at 32 px; k-NN top-1 "
          "leave-one-out over 1,797 images).\n")
    print("| variant | trained k-NN | untrained k-NN | raw pixels k-NN | trained - best "
          "baseline | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        gap = r["trained"] - max(r["untrained"], r["raw"])
        print(f"| {r['variant']} | {100 * r['trained']:.1f} | {100 * r['untrained']:.1f} | "
              f"{100 * r['raw']:.1f} | {100 * gap:+.1f} | {r['seconds']:.0f} |")


def subprocess_measure(name: str, args: argparse.Namespace) -> dict:
    import subprocess

    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import demo_collection as d; from pathlib import Path; "
            f"print(json.dumps(d.measure({name!r}, Path({str(args.work)!r}), {args.epochs!r}, "
            f"{args.settings!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
