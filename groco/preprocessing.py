"""``Preprocessing``: how an image becomes an encoder's input, decided once (ground floor).

One value carries every preprocessing fact of an encoder: the square input side
``image_size``, the shorter side ``resize_to`` it is resized to before the centre crop,
and the network's own ``mean``/``std``. It is made from a run's ``TrainConfig``
(:meth:`groco.training.config.TrainConfig.preprocessing`), read by the training k-NN
monitor, written into the ONNX file's metadata (:meth:`Preprocessing.metadata`), read
back by :class:`groco.encoder.runtime.Encoder` (:meth:`Preprocessing.from_metadata`) and
so by the index and the web app. The figure a user watches while training is therefore
measured on the same inputs the exported encoder sees.

The pixel policy (:meth:`Preprocessing.array`), for an image from
:func:`groco.images.load_image`::

    crop  = resize_center_crop(image, image_size, resize_to)   # bicubic, shorter side
    x     = uint8(crop) / 255, channels first                  # (3, S, S) float32 in [0, 1]

and inside the network ``(x - mean) / std``. NumPy and PIL only: no torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from groco.images import resize_center_crop, to_rgb

META_PREFIX = "groco."
"""Prefix of every groco key in an ONNX model's ``metadata_props``."""

RESIZE_POLICY = "shorter-side-bicubic-then-center-crop"
"""The name of :func:`groco.images.resize_center_crop`'s policy, recorded in encoders."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _channels(values: Sequence[float], name: str, positive: bool) -> tuple[float, float, float]:
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        floats = ()
    if len(floats) != 3 or not all(math.isfinite(v) for v in floats) or (
            positive and min(floats) <= 0):
        raise ValueError(f"{name} must be 3 finite numbers{' > 0' if positive else ''}, "
                         f"got {values!r}")
    return floats  # type: ignore[return-value]


@dataclass(frozen=True)
class Preprocessing:
    """An encoder's input policy (module docstring). ``resize_to >= image_size >= 1``."""

    image_size: int
    resize_to: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        size, resize_to = int(self.image_size), int(self.resize_to)
        if size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if resize_to < size:
            raise ValueError(f"resize_to ({resize_to}) must be >= image_size ({size})")
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "resize_to", resize_to)
        object.__setattr__(self, "mean", _channels(self.mean, "mean", positive=False))
        object.__setattr__(self, "std", _channels(self.std, "std", positive=True))

    def crop(self, image: Image.Image) -> Image.Image:
        """The RGB ``image_size`` square the encoder sees (any mode converted as
        :func:`groco.images.to_rgb` does: alpha composited on white)."""
        return resize_center_crop(to_rgb(image), self.image_size, self.resize_to)

    def array(self, image: Image.Image) -> np.ndarray:
        """The encoder's input for one image: ``(3, image_size, image_size)`` float32 in [0, 1]."""
        pixels = np.asarray(self.crop(image), dtype=np.float32) / np.float32(255.0)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def uint8(self, image: Image.Image) -> np.ndarray:
        """The same crop as ``(image_size, image_size, 3)`` uint8 (what training loaders carry)."""
        return np.array(self.crop(image), dtype=np.uint8)

    def metadata(self) -> dict[str, str]:
        """The ``groco.*`` metadata entries that describe this preprocessing."""
        values = {"input_size": self.image_size, "resize_to": self.resize_to,
                  "mean": json.dumps(list(self.mean)), "std": json.dumps(list(self.std)),
                  "resize_policy": RESIZE_POLICY}
        return {META_PREFIX + key: str(value) for key, value in values.items()}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> Preprocessing:
        """Read back :meth:`metadata` (keys with or without the ``groco.`` prefix).

        ``mean``/``std`` default to ImageNet's when absent (they only document the graph,
        which applies them itself). ``ValueError`` for missing or malformed sizes, or a
        resize policy other than :data:`RESIZE_POLICY`.
        """
        plain = {k[len(META_PREFIX):] if k.startswith(META_PREFIX) else k: v
                 for k, v in meta.items()}
        policy = plain.get("resize_policy", RESIZE_POLICY)
        if policy != RESIZE_POLICY:
            raise ValueError(f"unknown groco.resize_policy {policy!r}")
        sizes = {}
        for key in ("input_size", "resize_to"):
            if key not in plain:
                raise ValueError(f"metadata lacks groco.{key}")
            try:
                sizes[key] = int(plain[key])
            except ValueError:
                raise ValueError(f"metadata groco.{key} is not an integer: "
                                 f"{plain[key]!r}") from None
        try:
            mean = json.loads(plain["mean"]) if "mean" in plain else IMAGENET_MEAN
            std = json.loads(plain["std"]) if "std" in plain else IMAGENET_STD
        except json.JSONDecodeError as error:
            raise ValueError(f"metadata groco.mean/std is not a JSON list: {error}") from None
        return cls(sizes["input_size"], sizes["resize_to"], tuple(mean), tuple(std))
