"""MultiViewAugment: shapes, normalisation, per-image randomness, seeding, autocast."""

from __future__ import annotations

import kornia.augmentation as K
import pytest
import torch

from groco.training.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiViewAugment,
    blur_kernel_size,
    normalize_batch,
)

SIZE = 32
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(n: int = 8, side: int = 37, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, side, side): colour gradients plus a bright square and some noise."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, side)
    img = torch.stack(
        [
            ramp[None, :].expand(side, side),
            ramp[:, None].expand(side, side),
            1 - ramp[None, :].expand(side, side),
        ]
    )
    img = img[None].repeat(n, 1, 1, 1)
    img[:, :, side // 4 : side // 2, side // 4 : side // 2] = 1.0
    img = (img + 0.05 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    return (img * 255).round().to(torch.uint8)


def test_blur_kernel_size_scales_with_image_size():
    assert [blur_kernel_size(s) for s in (224, 96, 64, 32, 16)] == [23, 9, 7, 3, 3]


def test_output_shapes_dtype_and_normalisation():
    aug = MultiViewAugment(SIZE, views=2)
    torch.manual_seed(0)
    views = aug(_batch())
    assert len(views) == 2
    for v in views:
        assert v.shape == (8, 3, SIZE, SIZE) and v.dtype == torch.float32
        unit = v * STD + MEAN  # undo the normalisation: back in [0, 1]
        assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5
        assert unit.std() > 0.05


def test_views_differ_and_images_get_their_own_parameters():
    aug = MultiViewAugment(SIZE, views=2)
    same = _batch(n=8)[:1].repeat(8, 1, 1, 1)  # eight identical images
    torch.manual_seed(1)
    a, b = aug(same)
    assert not torch.allclose(a, b)
    flat = a.flatten(1)
    distinct = {i for i in range(8) if not torch.allclose(flat[i], flat[0])}
    assert len(distinct) == 7  # every image got its own crop/colour parameters


def test_same_seed_same_output_and_rng_state_restore():
    aug = MultiViewAugment(SIZE, views=2)
    x = _batch()
    torch.manual_seed(123)
    first = aug(x)
    torch.manual_seed(123)
    second = aug(x)
    state = torch.get_rng_state()
    third = aug(x)
    torch.set_rng_state(state)
    fourth = aug(x)
    for p, q in zip(first, second, strict=True):
        assert torch.equal(p, q)
    for p, q in zip(third, fourth, strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(first[0], third[0])
    # a fresh module draws from the same global RNG: same numbers too
    torch.manual_seed(123)
    assert torch.equal(MultiViewAugment(SIZE, views=2)(x)[0], first[0])
    # casting the module (kornia then samples in float64) does not change the draws: forward
    # points the generators back at the input's device in float32
    cast = MultiViewAugment(SIZE, views=2).to(torch.float64)
    torch.manual_seed(123)
    assert torch.equal(cast(x)[0], first[0])


def test_float32_under_autocast():
    aug = MultiViewAugment(SIZE, views=2)
    x = _batch()
    torch.manual_seed(5)
    ref = aug(x)
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = aug(x)
    for p, q in zip(ref, out, strict=True):
        assert q.dtype == torch.float32
        assert torch.equal(p, q)


def test_recipes_alternate_over_views():
    aug = MultiViewAugment(SIZE, views=4)

    def steps(i, kind):
        return [m for m in aug.pipelines[i] if isinstance(m, kind)]

    assert [len(steps(i, K.RandomSolarize)) for i in range(4)] == [0, 1, 0, 1]
    assert [steps(i, K.RandomGaussianBlur)[0].p for i in range(4)] == [1.0, 0.1, 1.0, 0.1]
    crop = steps(0, K.RandomResizedCrop)[0]
    assert crop.flags["resample"].name == "BICUBIC"
    assert len(aug(_batch(n=2))) == 4


def test_float_input_and_bad_input():
    aug = MultiViewAugment(SIZE, views=1)
    x = _batch(n=2)
    torch.manual_seed(7)
    from_uint8 = aug(x)[0]
    torch.manual_seed(7)
    from_float = aug(x.float() / 255)[0]
    torch.testing.assert_close(from_uint8, from_float)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        aug(x[:, :1])
    with pytest.raises(TypeError):
        aug(x.to(torch.int32))


def test_normalize_batch():
    x = _batch(n=2)
    out = normalize_batch(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, (x.float() / 255 - MEAN) / STD)
    custom = normalize_batch(x, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    torch.testing.assert_close(custom, x.float() / 127.5 - 1)
