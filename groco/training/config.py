"""``TrainConfig``: every setting of a training run, saved as the run's ``config.yaml``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from groco.training.augment import IMAGENET_MEAN, IMAGENET_STD

METHODS = ("groco", "simclr")
OPTIMIZERS = ("sgd", "lars", "adamw")

# Base learning rate per 256 images (linear scaling: lr = base_lr * global_batch / 256).
# GroCo: lr = 0.75 * 32 * bs / 1024 with plain SGD (released code), i.e. 6.0 per 256.
DEFAULT_BASE_LR = {
    ("groco", "sgd"): 6.0, ("groco", "lars"): 6.0, ("groco", "adamw"): 1e-3,
    ("simclr", "sgd"): 0.5, ("simclr", "lars"): 0.3, ("simclr", "adamw"): 1e-3,
}
DEFAULT_WEIGHT_DECAY = {"sgd": 1e-6, "lars": 1e-6, "adamw": 0.05}


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
    projector_dim: int = 2048
    projector_layers: int = 3
    topk_neg: int = 10
    steepness: float = 1.0
    network: str = "odd_even"
    relaxation: str = "cauchy"
    stop_grad: bool = True
    temperature: float = 0.1
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
            changes["weight_decay"] = DEFAULT_WEIGHT_DECAY[self.optimizer]
        if self.base_size is None:
            changes["base_size"] = round(self.image_size * 1.14)
        if self.eval_resize is None:
            changes["eval_resize"] = self.image_size
        return dataclasses.replace(self, **changes)

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
