"""Networks for self-supervised training: a timm backbone, the GroCo projector, and their pair.

- ``build_backbone``: any ``timm.create_model`` name (CNN or ViT) with ``num_classes=0``, so
  ``forward(x)`` returns pooled features ``(B, num_features)``. Weights: none (random
  init), timm's pretrained weights exactly as timm users get them (``pretrained=True``:
  the Hugging Face cache, ``HF_HUB_OFFLINE``, ``hf-hub:`` names, a local file through
  ``pretrained_cfg_overlay=dict(file=...)``), or a local weights file of groco's or timm's
  format (:mod:`groco.training.weights`). For small images an untrained CNN gets the
  small-image stem; a pretrained stem is never replaced silently; what was decided is
  recorded with every checkpoint (:func:`network_facts`).
- ``Projector``: the projection head of the released GroCo code.
- ``SSLModel``: ``backbone`` + ``projector``; its state dict holds ``backbone.*`` and
  ``projector.*`` keys, which is what the ONNX exporter reads back (it rebuilds the backbone
  from the recorded facts, :func:`groco.encoder.export.trained_network`).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import timm
from timm.layers import PatchEmbed
from torch import Tensor, nn

from groco.training.config import POOLS
from groco.training.weights import SMALL_STEM_KEY, load_backbone_weights, recorded_small_stem

if TYPE_CHECKING:
    from groco.training.config import TrainConfig

log = logging.getLogger(__name__)

SMALL_STEM_MAX_SIZE = 64
"""Auto mode (``small_stem=None``) gives CNNs the small-image stem at or below this size."""

# Stem pooling layer (replaced by Identity) per timm model class that has one; classes listed
# here or in _STRIDED_STEM_ONLY are the ones whose stem ``_apply_small_stem`` knows.
_STEM_POOL = {"ResNet": "maxpool", "DenseNet": "features.pool0"}
# Families whose stem is a single strided 3x3 conv and no pooling layer.
_STRIDED_STEM_ONLY = {"EfficientNet", "MobileNetV3", "GhostNet", "RegNet"}


def is_vit(model: nn.Module) -> bool:
    """True for patch-embedding models (ViT, DeiT, Swin, MLP-Mixer, ...), False for CNNs."""
    return hasattr(model, "patch_embed") or any(isinstance(m, PatchEmbed) for m in model.modules())


def feature_dim(model: nn.Module) -> int:
    """Width of ``model(x)`` for a timm model built with ``num_classes=0``.

    timm's ``head_hidden_size`` (the pre-logits width) where the head has layers of its own
    (MobileNetV3's 1x1 conv head, VGG's MLP), else ``num_features``.
    """
    dim = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    if dim is None:
        raise ValueError(f"{type(model).__name__} has no num_features: not a timm backbone?")
    return int(dim)


def _unknown_model_error(name: str) -> ValueError:
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Close names: {', '.join(close)}." if close else ""
    return ValueError(
        f"unknown timm model {name!r}.{hint} List names with "
        f"`python -c \"import timm; print(timm.list_models('*resnet*'))\"` "
        "(timm.list_models accepts a wildcard filter)."
    )


HUB_PREFIXES = ("hf-hub:", "local-dir:")
"""timm model names that name a weights source rather than a registered architecture."""


class PretrainedWeightsError(ValueError):
    """timm could not get the pretrained weights; ``str(err)`` says how to provide them."""


def _create(name: str, image_size: int, pretrained: bool = False,
            pretrained_file: str | Path | None = None) -> nn.Module:
    """``timm.create_model(name, pretrained=..., num_classes=0)``, passing ``img_size``
    where the model takes it and ``pretrained_cfg_overlay=dict(file=...)`` for a local file."""
    kwargs: dict[str, Any] = {"pretrained": pretrained or pretrained_file is not None,
                              "num_classes": 0}
    if pretrained_file is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_file)}
    try:
        try:
            return timm.create_model(name, img_size=image_size, **kwargs)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
        return timm.create_model(name, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        if not kwargs["pretrained"]:
            raise
        raise _pretrained_error(name, err) from err


def _pretrained_error(name: str, error: BaseException) -> PretrainedWeightsError:
    """One line: what failed, and the three ways to provide the weights without a download."""
    reason = " ".join(str(error).split())[:200] or type(error).__name__
    return PretrainedWeightsError(
        f"cannot load timm's pretrained weights for {name!r} ({type(error).__name__}: "
        f"{reason}); on a machine without internet, download them elsewhere with "
        f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` and copy "
        "the Hugging Face cache (~/.cache/huggingface, read offline with HF_HUB_OFFLINE=1), "
        "or pass the weights file with --pretrained-file FILE or --weights FILE")


def pretrained_normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The network's own input ``(mean, std)``: timm's ``pretrained_cfg`` for ``name``
    (0.5/0.5 for ``tf_`` models, ImageNet's for most others), ImageNet's when unknown."""
    from groco.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    cfg = None
    if not name.startswith(HUB_PREFIXES):
        try:
            cfg = timm.models.get_pretrained_cfg(name)
        except (RuntimeError, ValueError):  # a name with no pretrained config
            cfg = None
    mean = getattr(cfg, "mean", None) or IMAGENET_MEAN
    std = getattr(cfg, "std", None) or IMAGENET_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _small_conv(conv: nn.Module, where: str) -> nn.Conv2d:
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"small_stem: expected a Conv2d at {where!r}, found {type(conv).__name__}")
    return nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        kernel_size=3,
        stride=1,
        padding=1,
        bias=conv.bias is not None,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )


def _apply_small_stem(model: nn.Module, keep_weights: bool = False) -> bool:
    """Swap the stem for the small-image one; False when the model's stem is not recognised.

    The first conv (timm's ``pretrained_cfg["first_conv"]``; the first conv of a deep stem,
    e.g. ResNet-D's ``conv1.0``) becomes a 3x3 stride-1 conv with padding 1 and the same
    channels and bias; the stem pooling layer (ResNet ``maxpool``, DenseNet ``pool0``), if
    any, becomes ``Identity``. This is the CIFAR-style stem of SimCLR (Chen et al., 2020,
    appendix B.9) and solo-learn: at 32 px a ResNet then ends on a 4x4 map instead of 1x1.

    ``keep_weights`` (a pretrained network): a 3x3 first conv keeps its weights and only
    its stride becomes 1 (EfficientNet, MobileNetV3, RegNet, ResNet-D deep stems); any
    other kernel raises ``ValueError``, since replacing it would discard pretrained weights.
    """
    family = type(model).__name__
    if family not in _STEM_POOL and family not in _STRIDED_STEM_ONLY:
        return False
    first_conv = getattr(model, "pretrained_cfg", {}).get("first_conv")
    if not isinstance(first_conv, str):
        return False
    conv = model.get_submodule(first_conv)
    if keep_weights:
        if not isinstance(conv, nn.Conv2d) or tuple(conv.kernel_size) != (3, 3):
            kernel = getattr(conv, "kernel_size", "?")
            raise ValueError(f"small_stem would replace the pretrained {kernel} stem conv "
                             f"{first_conv!r} of {type(model).__name__}; use "
                             "--no-small-stem (and a larger --image-size) with these weights")
        conv.stride = (1, 1)
    else:
        model.set_submodule(first_conv, _small_conv(conv, first_conv))
    if family in _STEM_POOL:
        model.set_submodule(_STEM_POOL[family], nn.Identity())
    return True


IMAGE_SIZE_KEY = "image_size"
ARCHITECTURE_KEY = "architecture"
POOL_KEY = "pool"


def network_facts(backbone: nn.Module, image_size: int) -> dict[str, str]:
    """Every fact :func:`build_backbone` decided for ``backbone``, as a checkpoint's string
    metadata: the stem (:data:`SMALL_STEM_KEY`), the input size, the global pooling
    (:data:`POOL_KEY`) and timm's architecture name (what an ``hf-hub:`` name resolved
    to)."""
    facts = {SMALL_STEM_KEY: "true" if getattr(backbone, "groco_small_stem", False) else "false",
             IMAGE_SIZE_KEY: str(int(image_size)),
             POOL_KEY: getattr(backbone, "groco_pool", "avg")}
    architecture = (getattr(backbone, "pretrained_cfg", None) or {}).get("architecture")
    if architecture:
        facts[ARCHITECTURE_KEY] = str(architecture)
    return facts


def build_backbone(
    name: str,
    image_size: int,
    small_stem: bool | None = None,
    weights: str | Path | None = None,
    pretrained: bool = False,
    pretrained_file: str | Path | None = None,
    pool: str = "avg",
) -> tuple[nn.Module, int]:
    """A timm backbone returning pooled features ``(B, D)``, and ``D`` (see ``feature_dim``).

    ``timm.create_model(name, pretrained=pretrained, num_classes=0)``, with
    ``img_size=image_size`` for models whose constructor takes it (ViTs and others).

    - ``pretrained``: timm's weights for ``name`` as timm users get them (hub, cache,
      ``HF_HUB_OFFLINE``, ``hf-hub:`` names); ``pretrained_file``: a local file given to
      timm as ``pretrained_cfg_overlay=dict(file=...)`` (implies ``pretrained``). A failed
      download raises :class:`PretrainedWeightsError` saying how to provide the file.
    - ``weights``: a local file loaded strictly after building, see
      ``load_backbone_weights``.
    - ``small_stem``: ``None`` = auto: on for untrained CNNs at ``image_size <= 64`` (left
      off, with a logged warning, where the stem is not recognised), as a groco checkpoint
      given as ``weights`` records it, and off for any other start (a pretrained stem is
      never replaced silently; it costs 4x less at the same size); ``True`` forces it
      (keeping a pretrained 3x3 stem's weights, see ``_apply_small_stem``) and raises
      ``ValueError`` for a ViT or an unrecognised CNN stem; recognised: the ResNet family
      (deep stems included), DenseNet, EfficientNet, MobileNetV3, GhostNet, RegNet.
    - ``pool``: one of :data:`POOLS` for the CNN's global pooling (``ValueError`` for
      ``max`` on a ViT, whose tokens are pooled by its own rule); recorded as
      ``model.groco_pool``.
    """
    hub_name = name.startswith(HUB_PREFIXES)
    if hub_name and not (pretrained or pretrained_file):
        raise ValueError(f"{name!r} names a weights source: pass --pretrained with it")
    if not hub_name and not timm.is_model(name):
        raise _unknown_model_error(name)
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    started = pretrained or pretrained_file is not None or weights is not None
    model = _create(name, image_size, pretrained, pretrained_file)
    vit = is_vit(model)
    if small_stem and vit:
        raise ValueError(
            f"small_stem applies to CNNs; {name!r} is a patch-embedding model "
            "(pick a smaller patch size, e.g. a *_patch8_* model, for small images)"
        )
    recorded = recorded_small_stem(weights) if weights is not None else None
    auto = not vit and not started and image_size <= SMALL_STEM_MAX_SIZE
    want = (recorded if recorded is not None else auto) if small_stem is None else small_stem
    if (small_stem is None and recorded is None and started and not vit
            and image_size <= SMALL_STEM_MAX_SIZE):
        log.info("%s: keeping the pretrained stem at %d px (pass --small-stem for a stride-1 "
                 "stem that keeps its 3x3 weights, at 4x the compute)", name, image_size)
    _apply_pool(model, name, pool, vit)
    keep = pretrained or pretrained_file is not None
    model.groco_small_stem = False
    if want and _apply_small_stem(model, keep_weights=keep):
        model.groco_small_stem = True
    elif want:
        if small_stem:
            raise ValueError(
                f"small_stem=True: don't know the stem of {name!r} ({type(model).__name__}); "
                f"supported families: {', '.join(sorted({*_STEM_POOL, *_STRIDED_STEM_ONLY}))}. "
                "Use small_stem=False or a larger image_size."
            )
        log.warning("%s: stem not recognised, keeping the ImageNet stem at %d px", name, image_size)
    if weights is not None:
        try:
            load_backbone_weights(model, weights)
        except ValueError:
            if not (small_stem is None and recorded is None and not vit
                    and not model.groco_small_stem and image_size <= SMALL_STEM_MAX_SIZE):
                raise
            try:  # a file saved from a small-stem network without groco's metadata
                small = build_backbone(name, image_size, True, weights, pretrained,
                                       pretrained_file, pool)
            except ValueError:
                pass
            else:
                log.info("%s: the weights file fits the small-image stem; using it", name)
                return small
            raise
    return model, feature_dim(model)


def _apply_pool(model: nn.Module, name: str, pool: str, vit: bool) -> None:
    """Set the global pooling of the CNN ``model`` to ``pool`` (timm's
    ``SelectAdaptivePool2d``, replaced in place; no weights involved)."""
    from timm.layers import SelectAdaptivePool2d

    if pool not in POOLS:
        raise ValueError(f"pool {pool!r}: choose one of {', '.join(POOLS)}")
    model.groco_pool = pool
    if pool == "avg":
        return
    pools = [(n, m) for n, m in model.named_modules() if isinstance(m, SelectAdaptivePool2d)]
    if vit or len(pools) != 1:
        raise ValueError(f"pool {pool!r} applies to a CNN with one global pooling layer; "
                         f"{name!r} has {'patch tokens' if vit else f'{len(pools)}'}")
    where, old = pools[0]
    parent = model.get_submodule(where.rpartition(".")[0]) if "." in where else model
    setattr(parent, where.rpartition(".")[2],
            SelectAdaptivePool2d(pool_type=pool, flatten=isinstance(old.flatten, nn.Flatten)))


class Projector(nn.Sequential):
    """GroCo projection head: ``[Linear(no bias)-BN-ReLU] x (num_layers-1) -> Linear -> BN``.

    The last BatchNorm1d has ``affine=False``. Released GroCo code
    (ninatu/learning_by_sorting, ``models/projection/regular_projection.py``), 3 layers of 2048
    for ResNet-50. There the last Linear has a frozen bias, which the following BatchNorm
    subtracts again; here it simply has none (same function, one fewer tensor).
    ``forward``: ``(B, in_dim) -> (B, out_dim)``.
    """

    def __init__(
        self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 2048, num_layers: int = 3
    ) -> None:
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [
                nn.Linear(dim, hidden_dim, bias=False),
                nn.BatchNorm1d(hidden_dim),
                nn.ReLU(inplace=True),
            ]
            dim = hidden_dim
        layers += [nn.Linear(dim, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False)]
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim


class SSLModel(nn.Module):
    """``backbone`` + ``projector``; ``forward(x) -> (features (B, D), projection (B, P))``.

    ``features`` are the pooled backbone features (what search embeds); ``projection`` is what
    the self-supervised loss sees. Works with channels-last inputs and weights
    (``model.to(memory_format=torch.channels_last)``): nothing here reshapes feature maps.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.feature_dim = feature_dim(backbone)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.backbone(x)
        return features, self.projector(features)


def build_model(config: TrainConfig) -> SSLModel:
    """``SSLModel`` of a resolved ``TrainConfig``: ``build_backbone(config.backbone,
    config.image_size, config.small_stem, config.weights, config.pretrained,
    config.pretrained_file, config.pool)`` and a ``Projector`` of ``projector_hidden``/
    ``projector_dim``/``projector_layers``."""
    if isinstance(config, Mapping):  # a plain settings mapping, as in config.yaml
        from types import SimpleNamespace

        defaults = {"small_stem": None, "weights": None, "pretrained": False,
                    "pretrained_file": None, "projector_hidden": 2048, "projector_dim": 2048,
                    "projector_layers": 3, "pool": "avg"}
        config = SimpleNamespace(**{**defaults, **config})
    backbone, dim = build_backbone(config.backbone, config.image_size, config.small_stem,
                                   config.weights, config.pretrained, config.pretrained_file,
                                   config.pool)
    projector = Projector(dim, hidden_dim=config.projector_hidden,
                          out_dim=config.projector_dim, num_layers=config.projector_layers)
    return SSLModel(backbone, projector)
