"""Batched multi-view augmentation on the training device (the GroCo / DINO "global crop" recipe).

CPU workers only decode and resize images to a uint8 batch ``(B, 3, S, S)`` (S ≈ 1.14 ·
image_size); everything random happens here, on whatever device that batch lives on, with
independent parameters for every image of the batch (kornia's ``same_on_batch=False``).

Recipe, from the released GroCo code (ninatu/learning_by_sorting,
``dataloader/transforms.py::get_dino_aug_transforms``, itself DINO's global crops):

per view, in order (recipe A: views 1, 3, 5, ...; recipe B: views 2, 4, 6, ...):

1. RandomResizedCrop to ``image_size``: scale (0.14, 1), ratio (3/4, 4/3), bicubic;
2. horizontal flip, p 0.5;
3. ColorJitter(brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1), p 0.8;
4. grayscale, p 0.2;
5. Gaussian blur, sigma ~ U(0.1, 2.0): p 1.0 in recipe A, p 0.1 in recipe B;
6. recipe B only: solarize (invert pixels >= 0.5), p 0.2;
7. normalise: ``(x - mean) / std`` (ImageNet mean/std by default).

Views beyond two alternate the recipes exactly as the released code does for 3 and 4 views
(``[t1, t2, t1]`` and ``[t1, t2, t1, t2]``): view ``i`` (0-based) uses recipe A when ``i`` is
even and recipe B when it is odd.

Differences from the PIL pipeline of the released code, all forced by batching:

- The Gaussian blur uses a finite kernel of ``blur_kernel_size(image_size)`` taps (the size
  /10 made odd: 23 at 224 px, 7 at 64 px, the usual torchvision port of DINO's blur) instead
  of PIL's ``GaussianBlur(radius=sigma)``.
- The crop is a bicubic ``grid_sample`` of the crop box (kornia's ``cropping_mode="resample"``:
  one batched kernel instead of a crop-and-resize per image), clamped to [0, 1]; PIL's
  bicubic resize additionally antialiases when it shrinks.
- The ColorJitter order of brightness/contrast/saturation/hue is drawn once per call (per
  view) instead of once per image, as in kornia.

Randomness comes from torch's global generators only: kornia draws the per-image parameters
with ``torch.distributions`` on the input's device (``MultiViewAugment`` points its
generators at the input's device on every call) and a few small draws (ColorJitter's order)
from the CPU generator. Seeding with ``torch.manual_seed`` or restoring the CPU and device
RNG states (``torch.get_rng_state``/``torch.cuda.get_rng_state_all``) reproduces the
augmentations exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from groco.preprocessing import IMAGENET_MEAN, IMAGENET_STD

CROP_SCALE: tuple[float, float] = (0.14, 1.0)
CROP_RATIO: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
BLUR_SIGMA: tuple[float, float] = (0.1, 2.0)


def blur_kernel_size(image_size: int) -> int:
    """Gaussian-blur kernel size for an output of ``image_size`` pixels.

    ``k = int(image_size / 10)``, plus one when even, at least 3: 23 at 224 px (the
    torchvision ports of the DINO/BYOL recipe), 7 at 64 px, 3 at 32 px.
    """
    k = max(3, int(image_size * 0.1))
    return k if k % 2 == 1 else k + 1


def to_unit_float(images: Tensor) -> Tensor:
    """Convert a ``(B, 3, H, W)`` batch to float32 in [0, 1].

    uint8 input is divided by 255; floating input is taken to be in [0, 1] already.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) image batch, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if images.is_floating_point():
        return images.float()
    raise TypeError(f"expected a uint8 or floating image batch, got dtype {images.dtype}")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel on a float ``(B, 3, H, W)`` batch in [0, 1]."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need one value per RGB channel")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        mean = self.mean.to(device=x.device, dtype=x.dtype)
        std = self.std.to(device=x.device, dtype=x.dtype)
        return (x - mean) / std


def normalize_batch(
    images: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Un-augmented evaluation batch: uint8 ``(B, 3, H, W)`` -> float32 ``(x/255 - mean) / std``.

    Resizing and centre-cropping are the CPU workers' job; this only converts and normalises,
    on the batch's own device, outside any autocast region (the result is float32).
    """
    with torch.autocast(device_type=images.device.type, enabled=False):
        return Normalize(mean, std)(to_unit_float(images))


class _Clamp(nn.Module):
    """Clamp to [0, 1]; bicubic resampling overshoots the input range."""

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(0.0, 1.0)


def view_pipeline(image_size: int, recipe: str, interpolation: str = "bicubic",
                  crop_scale: tuple[float, float] = CROP_SCALE,
                  flip: bool = True) -> nn.Sequential:
    """One view's random transform (recipe ``"A"`` or ``"B"``, see the module docstring).

    Takes and returns float ``(B, 3, H, W)`` batches in [0, 1]; the output is
    ``(B, 3, image_size, image_size)``. Not normalised. ``crop_scale`` and ``flip`` let
    collections whose content does not survive the recipe's small crops or mirroring
    (digits, text, icons) keep it; the defaults are the paper's.
    """
    if recipe not in ("A", "B"):
        raise ValueError(f"recipe must be 'A' or 'B', got {recipe!r}")
    if interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
    kernel = blur_kernel_size(image_size)
    steps: list[nn.Module] = [
        K.RandomResizedCrop(
            (image_size, image_size),
            scale=crop_scale,
            ratio=CROP_RATIO,
            resample=interpolation,
            align_corners=False,
            cropping_mode="resample",
        ),
        _Clamp(),
        K.RandomHorizontalFlip(p=0.5 if flip else 0.0),
        K.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=0.8),
        K.RandomGrayscale(p=0.2),
        K.RandomGaussianBlur(kernel, BLUR_SIGMA, p=1.0 if recipe == "A" else 0.1),
    ]
    if recipe == "B":
        # Fixed threshold 0.5 and no addition: PIL's ImageOps.solarize(img) (threshold 128).
        steps.append(K.RandomSolarize(thresholds=(0.5, 0.5), additions=(0.0, 0.0), p=0.2))
    return nn.Sequential(*steps)


class MultiViewAugment(nn.Module):
    """``views`` independently augmented, normalised copies of a uint8 batch, on its device.

    ``forward(images)``: uint8 ``(B, 3, S, S)`` (or float in [0, 1]) on the training device ->
    list of ``views`` float32 tensors ``(B, 3, image_size, image_size)``, each
    ``(aug(x) - mean) / std``. Recipes A/B alternate over the views (module docstring).

    Runs without autograd and outside any autocast region (augmentation is done in float32
    even when the caller trains under ``torch.autocast``).
    """

    def __init__(
        self,
        image_size: int,
        views: int = 2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bicubic",
        crop_scale: tuple[float, float] = CROP_SCALE,
        flip: bool = True,
    ) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {image_size}")
        if views < 1:
            raise ValueError(f"views must be at least 1, got {views}")
        self.image_size = int(image_size)
        self.views = int(views)
        self.pipelines = nn.ModuleList(
            view_pipeline(image_size, "A" if i % 2 == 0 else "B", interpolation, crop_scale, flip)
            for i in range(views)
        )
        self.normalize = Normalize(mean, std)

    def _set_rng_device(self, device: torch.device) -> None:
        """Make kornia draw its random parameters on ``device`` (its global generator)."""
        kornia_modules = (
            m for m in self.modules() if m is not self and hasattr(m, "set_rng_device_and_dtype")
        )
        for module in kornia_modules:
            if (
                getattr(module, "device", None) != device
                or getattr(module, "dtype", None) != torch.float32
            ):
                module.set_rng_device_and_dtype(device, torch.float32)

    @torch.no_grad()
    def forward(self, images: Tensor) -> list[Tensor]:
        self._set_rng_device(images.device)
        with torch.autocast(device_type=images.device.type, enabled=False):
            x = to_unit_float(images)
            return [self.normalize(pipeline(x)) for pipeline in self.pipelines]

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, views={self.views}"
