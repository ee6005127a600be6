"""The method registry: what each ``--method`` is, in one place (timm's registry manner).

A :class:`MethodSpec` holds everything that differs between methods: the defaults of the
settings ``TrainConfig.resolved()`` fills in (learning rate and weight decay per optimiser,
projection and predictor widths, temperature), the views it accepts, the smallest batch it
can learn from, whether it keeps a queue, and the builder of its ``Objective``. The
training config, the CLI help and the trainer all read :data:`METHODS`; adding a method is
one :func:`register` call. The registry itself imports no torch (``groco --help`` stays
fast): each builder imports its objective when it runs.

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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from groco.training.config import TrainConfig
    from groco.training.models import SSLModel
    from groco.training.objectives import Objective

OPTIMIZERS = ("sgd", "lars", "adamw")
DEFAULT_WEIGHT_DECAY = {"sgd": 1e-6, "lars": 1e-6, "adamw": 0.05}
DEFAULT_PROJECTOR_DIM = 2048
DEFAULT_PREDICTOR_HIDDEN = 4096
DEFAULT_TEMPERATURE = 0.1

Builder = Callable[["TrainConfig", "SSLModel"], "Objective"]


@dataclass(frozen=True)
class MethodSpec:
    """One training method: its defaults, constraints and objective builder.

    ``base_lr``: per optimiser (``sgd``, ``lars``, ``adamw``), per 256 images.
    ``weight_decay``: per-optimiser overrides of :data:`DEFAULT_WEIGHT_DECAY`.
    ``views``: accepted views per image (``None``: any ``>= 2``). ``queue``: keeps a
    support queue / memory bank (sized by ``--queue-size``; needs ``neighbours`` rows).
    ``min_batch``: the smallest global batch a step can learn from, given the config.
    ``finetune_lr_factor``: a pretrained start's base learning rate is ``base_lr`` times
    this (a tenth unless measured otherwise for the method).
    """

    name: str
    summary: str
    build: Builder
    base_lr: Mapping[str, float]
    weight_decay: Mapping[str, float] = field(default_factory=dict)
    projector_dim: int = DEFAULT_PROJECTOR_DIM
    predictor_hidden: int = DEFAULT_PREDICTOR_HIDDEN
    temperature: float = DEFAULT_TEMPERATURE
    views: tuple[int, ...] | None = None
    queue: bool = False
    neighbours: Callable[[TrainConfig], int] = lambda config: config.num_neighbors
    min_batch: Callable[[TrainConfig], int] = lambda config: 2
    finetune_lr_factor: float = 0.1

    def default_weight_decay(self, optimizer: str) -> float:
        return self.weight_decay.get(optimizer, DEFAULT_WEIGHT_DECAY[optimizer])


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


def build_objective(config: TrainConfig, model: SSLModel) -> Objective:
    """The objective of ``config.method`` (a resolved ``TrainConfig``) around ``model``."""
    return get_method(config.method).build(config, model)


def _momentum(config: TrainConfig) -> dict[str, float]:
    return {"momentum_base": config.momentum_base, "momentum_final": config.momentum_final}


def _groco(c: TrainConfig, m: SSLModel) -> Objective:
    from groco.training.losses import GroCoLoss
    from groco.training.objectives import ViewLossObjective

    return ViewLossObjective(m, GroCoLoss(c.topk_neg, c.steepness, c.network, c.relaxation,
                                          c.stop_grad))


def _simclr(c: TrainConfig, m: SSLModel) -> Objective:
    from groco.training.losses import SimCLRLoss
    from groco.training.objectives import ViewLossObjective

    return ViewLossObjective(m, SimCLRLoss(c.temperature))


def _nnclr(c: TrainConfig, m: SSLModel) -> Objective:
    from groco.training.objectives import NNCLRObjective

    return NNCLRObjective(m, c.queue_size, c.predictor_hidden, c.temperature)


def _all4one(c: TrainConfig, m: SSLModel) -> Objective:
    from groco.training.objectives import All4OneObjective

    return All4OneObjective(m, c.queue_size, c.num_neighbors, c.predictor_hidden,
                            c.temperature, **_momentum(c))


def _snclr(c: TrainConfig, m: SSLModel) -> Objective:
    from groco.training.objectives import SNCLRObjective

    return SNCLRObjective(m, c.queue_size, c.num_neighbors, c.predictor_hidden,
                          c.temperature, **_momentum(c))


def _simsiam(guided: bool) -> Builder:
    def build(c: TrainConfig, m: SSLModel) -> Objective:
        from groco.training.objectives import SiameseObjective

        return SiameseObjective(m, c.predictor_hidden, guided=guided)

    return build


def _byol(guided: bool) -> Builder:
    def build(c: TrainConfig, m: SSLModel) -> Objective:
        from groco.training.objectives import BYOLObjective

        return BYOLObjective(m, c.predictor_hidden, guided=guided, **_momentum(c))

    return build


def _lr(sgd: float, lars: float, adamw: float = 1e-3) -> dict[str, float]:
    return {"sgd": sgd, "lars": lars, "adamw": adamw}


register(MethodSpec(
    "groco", "Group Ordering Constraints (sorting network over positives and hardest "
    "negatives)",
    _groco,
    # Fine-tuning keeps the full rate: at steepness 1 the loss moves in a narrow band
    # (REFERENCES.md), and a tenth of it left the start's features as they were
    # (BENCHMARKS.md, "Quality: trained encoders beside their baselines").
    _lr(6.0, 6.0), min_batch=lambda config: config.topk_neg + 1, finetune_lr_factor=1.0))
register(MethodSpec(
    "simclr", "vanilla contrastive (InfoNCE over the batch)",
    _simclr, _lr(0.5, 0.3)))
register(MethodSpec(
    "nnclr", "nearest neighbour from a support queue as the positive",
    _nnclr,
    _lr(0.5, 0.4), {"lars": 1e-5}, projector_dim=256, views=(2,), queue=True,
    neighbours=lambda config: 1))
register(MethodSpec(
    "all4one", "neighbour centroids, neighbour and feature terms, momentum encoder",
    _all4one,
    _lr(0.5, 1.0), {"lars": 1e-5}, projector_dim=256, temperature=0.2, views=(2,),
    queue=True))
register(MethodSpec(
    "snclr", "soft neighbours from a memory bank, momentum encoder",
    _snclr,
    _lr(0.5, 0.6, 1.5e-5), {"adamw": 0.1}, projector_dim=256, temperature=0.2, views=(2,),
    queue=True))
register(MethodSpec(
    "simsiam", "siamese with a predictor and stop-gradient",
    _simsiam(guided=False),
    _lr(0.05, 1.0), {"sgd": 1e-4}, predictor_hidden=512, views=(2,)))
register(MethodSpec(
    "byol", "siamese with a momentum-encoder target",
    _byol(guided=False),
    _lr(0.05, 1.0), {"sgd": 1e-4, "lars": 1e-5}, projector_dim=256, views=(2,)))
register(MethodSpec(
    "simsiam_gsg", "SimSiam with Guided Stop-Gradient",
    _simsiam(guided=True),
    _lr(0.05, 1.0), {"sgd": 1e-4}, predictor_hidden=512, views=(2, 4)))
register(MethodSpec(
    "byol_gsg", "BYOL with Guided Stop-Gradient",
    _byol(guided=True),
    _lr(0.05, 1.0), {"sgd": 1e-4, "lars": 1e-5}, predictor_hidden=512, views=(2, 4)))
