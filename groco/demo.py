"""`groco demo`: the whole flow on a collection that needs no download, ending in the UI.

images (``--data`` or scikit-learn's bundled handwritten digits written out as a folder)
→ ``groco train`` (a small GroCo encoder) → ``groco export`` → ``groco index build`` →
k-NN accuracy from the folder labels, next to what a user has without training (raw pixels,
the untrained network), each through the same export and index path, and the map of the
collection (``groco index map``, with the map extra) → ``groco serve``: every tab filled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Digits do not survive the paper's 14% crops or mirroring: the demo crops at >= 50% and
# does not flip. A small ResNet at 16 px keeps the whole flow within a few CPU minutes.
DEMO_SETTINGS = dict(backbone="resnet10t", image_size=16, small_stem=True, epochs=6,
                     batch_size=64, lr=1.0, crop_min_scale=0.5, flip=False,
                     projector_hidden=512, projector_dim=512, eval_every=0, workers=0)


@dataclass
class DemoResult:
    images: Path
    run: Path
    encoder: Path
    index: Path
    knn_top1: float
    random_knn_top1: float
    raw_knn_top1: float
    seconds: float
    mapped: bool = False

    @property
    def beats_baselines(self) -> bool:
        return self.knn_top1 > max(self.raw_knn_top1, self.random_knn_top1)


RAW_PIXELS_SIZE = 32  # the digits' own size: raw pixels lose nothing of them


def write_digits(folder: Path, upscale: int = 4) -> Path:
    """scikit-learn's 1,797 8×8 handwritten digits as ``folder/<digit>/<n>.png`` (upscaled
    ``upscale`` times, white on black), written once."""
    from sklearn.datasets import load_digits

    done = folder / ".complete"
    if done.exists():
        return folder
    digits = load_digits()
    for n, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        grey = (pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(grey).resize((8 * upscale, 8 * upscale), Image.Resampling.BICUBIC)
        (folder / str(target)).mkdir(parents=True, exist_ok=True)
        image.save(folder / str(target) / f"{n:04d}.png")
    done.write_text("ok\n")
    return folder


def _knn_of_index(index: Path) -> float:
    from groco.index.evaluate import evaluate_index

    return float(evaluate_index(index, max_queries=2000).knn_top1)


def run_demo(work: Path, data: Path | None = None, epochs: int | None = None,
             log=print) -> DemoResult:
    """Train, export and index ``data`` (default: the digits) under ``work``."""
    from groco.encoder.export import export_encoder, export_untrained
    from groco.index.build import build_index_dir
    from groco.training import checkpoint
    from groco.training.config import TrainConfig
    from groco.training.trainer import Trainer

    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    images = data if data is not None else write_digits(work / "digits")
    settings = {**DEMO_SETTINGS, **({"epochs": epochs} if epochs else {})}
    run = work / "run"
    log(f"[1/5] training a GroCo encoder on {images} ({settings['backbone']}, "
        f"{settings['image_size']} px, {settings['epochs']} epochs)")
    Trainer(TrainConfig(data=str(images), out=str(run), **settings),
            resume=(run / checkpoint.STATE).exists()).fit()

    log("[2/5] exporting it to ONNX")
    encoder = work / "encoder.onnx"
    export_encoder(run, encoder)

    log("[3/5] building the index")
    index = work / "index"
    build_index_dir(images, encoder, index, progress=True)

    log("[4/5] drawing the map of the collection")
    mapped = _draw_map(index, log)

    log("[5/5] measuring k-NN accuracy from the folder labels")
    knn = _knn_of_index(index)
    # The floor: the same network, untrained, through the same export and index path.
    floor_run = work / "untrained"
    config = TrainConfig(data=str(images), out=str(floor_run), **settings)
    export_untrained(config, floor_run, floor_run / "encoder.onnx")
    build_index_dir(images, floor_run / "encoder.onnx", floor_run / "index", progress=False)
    floor = _knn_of_index(floor_run / "index")
    raw = _raw_pixels_knn(images, work / "raw-pixels")
    return DemoResult(images, run, encoder, index, knn, floor, raw,
                      time.perf_counter() - started, mapped)


def _draw_map(index: Path, log) -> bool:
    """The Map tab's layout of ``index`` (``groco index map``); False, said in a line, when
    the map extra is not installed."""
    from groco.index.map import MapExtraMissing, compute_map

    try:
        compute_map(index, seed=0, progress=True)
    except MapExtraMissing as error:
        log(f"no map: {error}")
        return False
    return True


def _raw_pixels_knn(images: Path, work: Path) -> float:
    """k-NN top-1 of the raw-pixel encoder (``groco export --raw-pixels``) on ``images``."""
    from groco.encoder.baselines import export_raw_pixels
    from groco.index.build import build_index_dir

    work.mkdir(parents=True, exist_ok=True)
    export_raw_pixels(RAW_PIXELS_SIZE, work / "encoder.onnx", data=images)
    build_index_dir(images, work / "encoder.onnx", work / "index", progress=False)
    return _knn_of_index(work / "index")
