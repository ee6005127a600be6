"""The method registry: what each ``--method`` is, as plain data (timm's registry manner).

A :class:`MethodSpec` holds everything that differs between methods: the defaults of the
settings ``TrainConfig.resolved()`` fills in (learning rate and weight decay per optimiser,
projection and predictor widths, temperature), the views it accepts, whether it keeps a
queue, and its objective class (whose ``from_config`` builds it and whose ``min_batch`` /
``queue_rows`` state what a config must allow). Each method's file in this package defines
its objective and registers its spec; adding a method is one file.

Sources of the defaults (per 256 images, linear scaling ``lr = base_lr * batch / 256``):

- GroCo: ``lr = 0.75 * 32 * bs / 1024`` with plain SGD (released code), i.e. 6.0 per 256.
- LARS values are solo-learn's (same per-256 scaling and eta 0.02 as groco's LARS): NNCLR
  0.4, All4One 1.0 (its released config), BYOL 1.0 (CIFAR config); SNCLR 0.6 is MoCo v3's
  ResNet-50 LARS rate (SNCLR builds on MoCo v3) and SimSiam takes BYOL's.
- SGD: SimSiam 0.05 (paper; bych-lee/gsg uses it for all four siamese methods, so BYOL
  and the GSG variants too); the contrastive ones publish no SGD recipe and take SimCLR's
  0.5. AdamW: 1e-3; SNCLR 1.5e-5 from its released ViT script.
- Weight decay: SimSiam/GSG SGD 1e-4 (paper, bych-lee/gsg), solo-learn's LARS 1e-5
  (NNCLR, All4One, BYOL), SNCLR's AdamW 0.1; else :data:`DEFAULT_WEIGHT_DECAY`.
- Projection width 256 for the queue and momentum methods (NNCLR, All4One, SNCLR, BYOL),
  2048 for GroCo, SimCLR, SimSiam and the GSG code (which builds BYOL-GSG like SimSiam).
  Predictor hidden width 4096 (NNCLR, All4One, SNCLR, BYOL), SimSiam's 512 bottleneck.
- Temperature: SimCLR 0.1, NNCLR 0.1 (paper; solo-learn uses 0.2), All4One's neighbour
  term 0.2 (released config), SNCLR 0.2 (released script).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

OPTIMIZERS = ("sgd", "lars", "adamw")
DEFAULT_WEIGHT_DECAY = {"sgd": 1e-6, "lars": 1e-6, "adamw": 0.05}
DEFAULT_PROJECTOR_DIM = 2048
DEFAULT_PREDICTOR_HIDDEN = 4096
DEFAULT_TEMPERATURE = 0.1


def learning_rates(sgd: float, lars: float, adamw: float = 1e-3) -> dict[str, float]:
    """``base_lr`` of a :class:`MethodSpec`: per optimiser, per 256 images."""
    return {"sgd": sgd, "lars": lars, "adamw": adamw}


@dataclass(frozen=True)
class MethodSpec:
    """One training method: its defaults, constraints and objective class.

    ``objective``: an :class:`~groco.training.methods.base.Objective` subclass; its
    ``from_config(config, model, spec)`` builds the method's objective. ``base_lr``: per
    optimiser (``sgd``, ``lars``, ``adamw``), per 256 images. ``weight_decay``:
    per-optimiser overrides of :data:`DEFAULT_WEIGHT_DECAY`. ``views``: accepted views per
    image (``None``: any ``>= 2``). ``queue``: keeps a support queue / memory bank (sized by
    ``--queue-size``). ``guided``: the Guided Stop-Gradient variant of its objective.
    ``finetune_lr_factor``: a pretrained start's base learning rate is ``base_lr`` times
    this (a tenth unless measured otherwise for the method).
    """

    name: str
    summary: str
    objective: Any
    base_lr: Mapping[str, float]
    weight_decay: Mapping[str, float] = field(default_factory=dict)
    projector_dim: int = DEFAULT_PROJECTOR_DIM
    predictor_hidden: int = DEFAULT_PREDICTOR_HIDDEN
    temperature: float = DEFAULT_TEMPERATURE
    views: tuple[int, ...] | None = None
    queue: bool = False
    guided: bool = False
    finetune_lr_factor: float = 0.1

    def default_weight_decay(self, optimizer: str) -> float:
        return self.weight_decay.get(optimizer, DEFAULT_WEIGHT_DECAY[optimizer])

    def min_batch(self, config: Any) -> int:
        """The smallest global batch a step of ``config`` can learn from."""
        return self.objective.min_batch(config)

    def queue_rows(self, config: Any) -> int:
        """The queue rows a step of ``config`` reads (``--queue-size`` must allow them)."""
        return self.objective.queue_rows(config)


METHODS: dict[str, MethodSpec] = {}
"""Every registered method by ``--method`` name, in registration order."""


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to :data:`METHODS` (``ValueError`` for a taken name)."""
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is already registered")
    if set(spec.base_lr) != set(OPTIMIZERS):
        raise ValueError(f"method {spec.name!r} needs a base_lr for each of {OPTIMIZERS}")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The spec of ``--method name``; ``ValueError`` naming the choices otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of "
                         f"{', '.join(METHODS)}") from None


def build_objective(config: Any, model: Any) -> Any:
    """The objective of ``config.method`` (a resolved ``TrainConfig``) around ``model``
    (an :class:`~groco.training.models.SSLModel`)."""
    spec = get_method(config.method)
    return spec.objective.from_config(config, model, spec)
