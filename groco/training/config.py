"""``TrainConfig``: every setting of a training run, saved as the run's ``config.yaml``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from groco.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

METHODS = ("groco", "simclr", "nnclr", "all4one", "snclr", "simsiam", "byol", "simsiam_gsg",
           "byol_gsg")
OPTIMIZERS = ("sgd", "lars", "adamw")

# Base learning rate per 256 images (linear scaling: lr = base_lr * global_batch / 256).
# GroCo: lr = 0.75 * 32 * bs / 1024 with plain SGD (released code), i.e. 6.0 per 256.
# LARS values are solo-learn's (same per-256 scaling and eta 0.02 as groco's LARS):
# NNCLR 0.4, All4One 1.0 (its released config), BYOL 1.0 (CIFAR config); SNCLR 0.6 is
# MoCo v3's ResNet-50 LARS rate (SNCLR builds on MoCo v3) and SimSiam takes BYOL's.
# SGD: SimSiam 0.05 (paper; bych-lee/gsg uses it for all four siamese methods, so BYOL and
# the GSG variants too); the contrastive ones publish no SGD recipe and take SimCLR's 0.5.
# AdamW: 1e-3 as for the other methods; SNCLR 1.5e-5 from its released ViT script.
DEFAULT_BASE_LR = {
    ("groco", "sgd"): 6.0, ("groco", "lars"): 6.0, ("groco", "adamw"): 1e-3,
    ("simclr", "sgd"): 0.5, ("simclr", "lars"): 0.3, ("simclr", "adamw"): 1e-3,
    ("nnclr", "sgd"): 0.5, ("nnclr", "lars"): 0.4, ("nnclr", "adamw"): 1e-3,
    ("all4one", "sgd"): 0.5, ("all4one", "lars"): 1.0, ("all4one", "adamw"): 1e-3,
    ("snclr", "sgd"): 0.5, ("snclr", "lars"): 0.6, ("snclr", "adamw"): 1.5e-5,
    ("simsiam", "sgd"): 0.05, ("simsiam", "lars"): 1.0, ("simsiam", "adamw"): 1e-3,
    ("byol", "sgd"): 0.05, ("byol", "lars"): 1.0, ("byol", "adamw"): 1e-3,
    ("simsiam_gsg", "sgd"): 0.05, ("simsiam_gsg", "lars"): 1.0, ("simsiam_gsg", "adamw"): 1e-3,
    ("byol_gsg", "sgd"): 0.05, ("byol_gsg", "lars"): 1.0, ("byol_gsg", "adamw"): 1e-3,
}
DEFAULT_WEIGHT_DECAY = {"sgd": 1e-6, "lars": 1e-6, "adamw": 0.05}
# Per-method weight decay where the recipe above names one: SimSiam/GSG SGD 1e-4 (paper,
# bych-lee/gsg), solo-learn's LARS 1e-5 (NNCLR, All4One, BYOL), SNCLR's AdamW 0.1.
METHOD_WEIGHT_DECAY = {
    **{(m, "sgd"): 1e-4 for m in ("simsiam", "byol", "simsiam_gsg", "byol_gsg")},
    **{(m, "lars"): 1e-5 for m in ("nnclr", "all4one", "byol", "byol_gsg")},
    ("snclr", "adamw"): 0.1,
}

# Method-specific defaults of settings left as None (the papers' / released code's values).
# Projection width: 256 for the queue and momentum methods (NNCLR, All4One, SNCLR, BYOL),
# 2048 for GroCo, SimCLR, SimSiam and the GSG code (which builds BYOL-GSG like SimSiam).
PROJECTOR_DIM = {"nnclr": 256, "all4one": 256, "snclr": 256, "byol": 256}
# Predictor hidden width: 4096 (NNCLR, All4One, SNCLR, BYOL), SimSiam's 512 bottleneck.
PREDICTOR_HIDDEN = {"nnclr": 4096, "all4one": 4096, "snclr": 4096, "byol": 4096,
                    "simsiam": 512, "simsiam_gsg": 512, "byol_gsg": 512}
# Softmax temperature: SimCLR 0.1, NNCLR 0.1 (paper; solo-learn uses 0.2), All4One's
# neighbour term 0.2 (released config), SNCLR 0.2 (released script).
TEMPERATURE = {"simclr": 0.1, "nnclr": 0.1, "all4one": 0.2, "snclr": 0.2}
QUEUE_METHODS = ("nnclr", "all4one", "snclr")
MAX_QUEUE_SIZE = 98304  # the papers' support set / memory bank size
# Views per image a method takes; GSG may take 4 (two for the partner, as its released code).
METHOD_VIEWS = {"nnclr": (2,), "all4one": (2,), "snclr": (2,), "simsiam": (2,), "byol": (2,),
                "simsiam_gsg": (2, 4), "byol_gsg": (2, 4)}


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
    epochs: int = 100
    batch_size: int = 256
    views: int = 2
    optimizer: str = "sgd"
    lr: float | None = None  # base learning rate per 256 images
    weight_decay: float | None = None
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    projector_hidden: int = 2048
    projector_dim: int | None = None  # 2048, or PROJECTOR_DIM[method]
    projector_layers: int = 3
    topk_neg: int = 10
    steepness: float = 1.0
    network: str = "odd_even"
    relaxation: str = "cauchy"
    stop_grad: bool = True
    temperature: float | None = None  # TEMPERATURE[method]
    predictor_hidden: int | None = None  # PREDICTOR_HIDDEN[method]
    queue_size: int | None = None  # default_queue_size(data) for QUEUE_METHODS
    num_neighbors: int = 5  # All4One, SNCLR: k nearest queue rows per sample
    momentum_base: float = 0.99  # EMA momentum at the start (BYOL, All4One, SNCLR)
    momentum_final: float = 1.0  # ... and at the end of training (cosine in between)
    device: str = "auto"
    workers: int = 4
    seed: int = 0
    eval_every: int = 1
    eval_data: str | None = None
    knn_k: int = 20
    knn_temperature: float = 0.07
    base_size: int | None = None  # side of the uint8 images the workers decode
    eval_resize: int | None = None  # shorter side before the centre crop at evaluation
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    max_steps_per_epoch: int | None = None
    crop_min_scale: float = 0.14  # RandomResizedCrop scale (crop_min_scale, 1)
    flip: bool = True

    def resolved(self) -> TrainConfig:
        """A copy with defaults that depend on other fields filled in, values checked."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.views < 2:
            raise ValueError(f"--views must be at least 2, got {self.views}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("--epochs must be >= 1 and --batch-size >= 2")
        changes: dict[str, Any] = {
            "data": str(Path(self.data).expanduser().resolve()),
            "out": str(Path(self.out).expanduser().resolve()),
        }
        if self.eval_data is not None:
            changes["eval_data"] = str(Path(self.eval_data).expanduser().resolve())
        if self.lr is None:
            changes["lr"] = DEFAULT_BASE_LR[(self.method, self.optimizer)]
        if self.weight_decay is None:
            changes["weight_decay"] = METHOD_WEIGHT_DECAY.get(
                (self.method, self.optimizer), DEFAULT_WEIGHT_DECAY[self.optimizer])
        changes.update(self._method_defaults(changes["data"]))
        if self.base_size is None:
            changes["base_size"] = round(self.image_size * 1.14)
        if self.eval_resize is None:
            changes["eval_resize"] = self.image_size
        return dataclasses.replace(self, **changes)

    def _method_defaults(self, data: str) -> dict[str, Any]:
        """Method-specific defaults for fields left as None, and their checks."""
        method, changes = self.method, {}
        views = METHOD_VIEWS.get(method)
        if views is not None and self.views not in views:
            raise ValueError(f"--method {method} takes --views "
                             f"{' or '.join(map(str, views))}, got {self.views}")
        if self.projector_dim is None:
            changes["projector_dim"] = PROJECTOR_DIM.get(method, 2048)
        if self.predictor_hidden is None:
            changes["predictor_hidden"] = PREDICTOR_HIDDEN.get(method, 4096)
        if self.temperature is None:
            changes["temperature"] = TEMPERATURE.get(method, 0.1)
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.momentum_base <= self.momentum_final <= 1.0:
            raise ValueError("--momentum-base and --momentum-final need 0 <= base <= final "
                             f"<= 1, got {self.momentum_base} and {self.momentum_final}")
        if self.num_neighbors < 1:
            raise ValueError(f"--num-neighbors must be >= 1, got {self.num_neighbors}")
        if method in QUEUE_METHODS:
            needed = self.num_neighbors if method != "nnclr" else 1
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
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)
