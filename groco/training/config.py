"""``TrainConfig``: every setting of a training run, saved as the run's ``config.yaml``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from groco.knn import KNN_K, KNN_TEMPERATURE
from groco.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from groco.training.methods import OPTIMIZERS, get_method

MAX_QUEUE_SIZE = 98304  # the papers' support set / memory bank size
SCRATCH_EPOCHS = 100

# Fine-tuning a pretrained start (``--pretrained`` or ``--weights``): BN statistics frozen,
# the last three stages (timm's coarse groups; EfficientNet: the head conv and the last two
# block stages) and a new projector trainable, the backbone at a third of the head's
# learning rate, one projector warm-up epoch with the backbone frozen, a short cosine
# schedule. Measured with GroCo on EfficientNet-Lite0 (BENCHMARKS.md, "Quality: trained
# encoders"): one stage at a tenth of the learning rate left the start as it was; three
# at the full rate gained on both collections; five with the backbone at the head's rate
# gained most on the digits and lost on Fashion-MNIST.
FINETUNE_EPOCHS = 5
FINETUNE_TRAINABLE_STAGES = 3
FINETUNE_BACKBONE_LR_SCALE = 1 / 3
FINETUNE_HEAD_WARMUP_EPOCHS = 1


def default_queue_size(data: str | Path) -> int:
    """``min(98304, images in data)``: the papers' queue, capped at one key per image.

    A queue longer than the collection holds several stale keys of the same images (and its
    random initial rows for more than an epoch), so on small collections it is cut to the
    collection's size: after the first epoch it holds about one recent key per image.
    """
    from groco.images import find_images

    return max(1, min(MAX_QUEUE_SIZE, len(find_images(data))))


@dataclass
class TrainConfig:
    """A training run. ``None`` fields are resolved by ``resolved()`` from the others."""

    data: str
    out: str
    method: str = "groco"
    backbone: str = "resnet18"
    image_size: int = 224
    small_stem: bool | None = None
    weights: str | None = None
    pretrained: bool = False  # timm's pretrained weights for backbone (hub, cache, offline)
    pretrained_file: str | None = None  # a local file timm loads as those weights
    finetune: bool | None = None  # None: on when starting from weights
    trainable_stages: int | None = None  # last backbone stages trained (0 = all)
    backbone_lr_scale: float | None = None  # backbone LR / head LR
    head_warmup_epochs: int | None = None  # epochs with the backbone frozen
    freeze_bn: bool | None = None  # keep the backbone's BatchNorm statistics
    epochs: int | None = None  # 100, or 5 when fine-tuning
    batch_size: int = 256
    views: int = 2
    optimizer: str = "sgd"
    lr: float | None = None  # base learning rate per 256 images
    weight_decay: float | None = None
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    projector_hidden: int = 2048
    projector_dim: int | None = None  # the method's (groco.training.methods)
    projector_layers: int = 3
    topk_neg: int = 10
    steepness: float = 1.0
    network: str = "odd_even"
    relaxation: str = "cauchy"
    stop_grad: bool = True
    temperature: float | None = None  # the method's
    predictor_hidden: int | None = None  # the method's
    queue_size: int | None = None  # default_queue_size(data) for queue methods
    num_neighbors: int = 5  # All4One, SNCLR: k nearest queue rows per sample
    momentum_base: float = 0.99  # EMA momentum at the start (BYOL, All4One, SNCLR)
    momentum_final: float = 1.0  # ... and at the end of training (cosine in between)
    device: str = "auto"
    workers: int = 4
    seed: int = 0
    eval_every: int = 1
    eval_data: str | None = None
    knn_k: int = KNN_K
    knn_temperature: float = KNN_TEMPERATURE
    base_size: int | None = None  # side of the uint8 images the workers decode
    eval_resize: int | None = None  # shorter side before the centre crop at evaluation
    mean: list[float] | None = None  # the backbone's own (timm pretrained_cfg)
    std: list[float] | None = None
    max_steps_per_epoch: int | None = None
    crop_min_scale: float = 0.14  # RandomResizedCrop scale (crop_min_scale, 1)
    flip: bool = True

    def resolved(self) -> TrainConfig:
        """A copy with defaults that depend on other fields filled in, values checked (the
        network's own facts come with it: :meth:`with_network`)."""
        spec = get_method(self.method)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.views < 2:
            raise ValueError(f"--views must be at least 2, got {self.views}")
        changes: dict[str, Any] = {
            "data": str(Path(self.data).expanduser().resolve()),
            "out": str(Path(self.out).expanduser().resolve()),
        }
        changes.update(self._start_defaults())
        if changes.get("epochs", self.epochs) < 1 or self.batch_size < 2:
            raise ValueError("--epochs must be >= 1 and --batch-size >= 2")
        if self.eval_data is not None:
            changes["eval_data"] = str(Path(self.eval_data).expanduser().resolve())
        if self.lr is None:
            factor = spec.finetune_lr_factor if changes["finetune"] else 1.0
            changes["lr"] = spec.base_lr[self.optimizer] * factor
        if self.weight_decay is None:
            changes["weight_decay"] = spec.default_weight_decay(self.optimizer)
        changes.update(self._method_defaults(changes["data"]))
        if self.base_size is None:
            changes["base_size"] = round(self.image_size * 1.14)
        if self.eval_resize is None:
            changes["eval_resize"] = self.image_size
        return dataclasses.replace(self, **changes)

    def with_network(self, backbone: Any) -> TrainConfig:
        """A copy recording what building ``backbone`` (a timm model from
        :func:`groco.training.models.build_backbone`) decided: its stem (``small_stem``) and,
        where unset, its own input normalisation (``mean``/``std`` of its timm
        ``pretrained_cfg``, ImageNet's when it has none). Resolving a config needs no timm;
        the network it builds brings these facts."""
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        return dataclasses.replace(
            self, small_stem=bool(getattr(backbone, "groco_small_stem", False)),
            mean=list(self.mean or [float(v) for v in cfg.get("mean") or IMAGENET_MEAN]),
            std=list(self.std or [float(v) for v in cfg.get("std") or IMAGENET_STD]))

    @property
    def starts_from_weights(self) -> bool:
        """True when the backbone starts from pretrained or local weights."""
        return bool(self.pretrained or self.pretrained_file or self.weights)

    def _start_defaults(self) -> dict[str, Any]:
        """Epochs, normalisation and the fine-tuning recipe, by where the run starts."""
        finetune = self.starts_from_weights if self.finetune is None else self.finetune
        changes: dict[str, Any] = {"finetune": finetune}
        if self.pretrained_file is not None:
            changes["pretrained_file"] = str(Path(self.pretrained_file).expanduser().resolve())
            changes["pretrained"] = True
        if self.weights is not None:
            changes["weights"] = str(Path(self.weights).expanduser().resolve())
        recipe = {"epochs": (FINETUNE_EPOCHS, SCRATCH_EPOCHS),
                  "trainable_stages": (FINETUNE_TRAINABLE_STAGES, 0),
                  "backbone_lr_scale": (FINETUNE_BACKBONE_LR_SCALE, 1.0),
                  "head_warmup_epochs": (FINETUNE_HEAD_WARMUP_EPOCHS, 0),
                  "freeze_bn": (True, False)}
        for key, (tuned, scratch) in recipe.items():
            if getattr(self, key) is None:
                changes[key] = tuned if finetune else scratch
        if (self.trainable_stages or 0) < 0 or (self.head_warmup_epochs or 0) < 0:
            raise ValueError("--trainable-stages and --head-warmup-epochs must be >= 0")
        if self.backbone_lr_scale is not None and self.backbone_lr_scale < 0:
            raise ValueError(f"--backbone-lr-scale must be >= 0, got {self.backbone_lr_scale}")
        return changes

    def _method_defaults(self, data: str) -> dict[str, Any]:
        """Defaults of the method's spec for fields left as None, and their checks."""
        spec, changes = get_method(self.method), {}
        if spec.views is not None and self.views not in spec.views:
            raise ValueError(f"--method {spec.name} takes --views "
                             f"{' or '.join(map(str, spec.views))}, got {self.views}")
        if self.projector_dim is None:
            changes["projector_dim"] = spec.projector_dim
        if self.predictor_hidden is None:
            changes["predictor_hidden"] = spec.predictor_hidden
        if self.temperature is None:
            changes["temperature"] = spec.temperature
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.momentum_base <= self.momentum_final <= 1.0:
            raise ValueError("--momentum-base and --momentum-final need 0 <= base <= final "
                             f"<= 1, got {self.momentum_base} and {self.momentum_final}")
        if self.num_neighbors < 1:
            raise ValueError(f"--num-neighbors must be >= 1, got {self.num_neighbors}")
        if spec.queue:
            needed = spec.queue_rows(self)
            size = self.queue_size
            if size is None:
                size = max(needed, default_queue_size(data))
            if size < needed:
                raise ValueError(f"--queue-size {size} is smaller than --num-neighbors "
                                 f"{needed}")
            changes["queue_size"] = size
        return changes

    @property
    def preprocessing(self) -> Preprocessing:
        """How the run's encoder sees an image: ``image_size``, ``eval_resize`` (or
        ``image_size``) and ``mean``/``std``. The k-NN monitor, the export and the index
        all use this one value."""
        if self.mean is None or self.std is None:
            raise ValueError("preprocessing needs the network's mean/std (with_network)")
        return Preprocessing(self.image_size, self.eval_resize or self.image_size,
                             tuple(self.mean), tuple(self.std))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)
