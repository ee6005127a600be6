"""What every objective shares: the base class and the momentum-encoder mixin.

An ``Objective`` is an ``nn.Module`` whose ``forward(views)`` returns the scalar loss of a
batch of augmented views and whose ``after_step(progress)`` runs once after each optimiser
step (momentum-encoder updates, for instance). Its state dict keeps the backbone under
``backbone.*`` and the projector under ``projector.*``, which is what ``groco export``
reads; method heads, momentum encoders and queues live under their own names
(``predictor.*``, ``momentum_encoder.backbone.*``, ``queue.keys``, ...), all as parameters
or buffers, so a checkpoint holds everything a resumed run needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from groco.training.heads import PredictionHead
from groco.training.momentum import MomentumEncoder
from groco.training.queue import FeatureQueue

if TYPE_CHECKING:
    from groco.training.models import SSLModel


class Objective(nn.Module):
    """Base class: holds ``backbone`` and ``projector`` of an ``SSLModel``."""

    def __init__(self, model: SSLModel) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.projector = model.projector

    @classmethod
    def from_config(cls, config: Any, model: SSLModel, spec: Any) -> Objective:
        """The objective a resolved ``TrainConfig`` asks for, around ``model``."""
        raise NotImplementedError

    @classmethod
    def min_batch(cls, config: Any) -> int:
        """The smallest global batch a step can learn from."""
        return 2

    @classmethod
    def queue_rows(cls, config: Any) -> int:
        """Queue rows read per sample (methods with a queue): ``--num-neighbors``."""
        return config.num_neighbors

    def project(self, views: list[Tensor]) -> list[Tensor]:
        """Projections of each view, all views through the network in one batch."""
        projections = self.projector(self.backbone(torch.cat(views)))
        return list(projections.float().chunk(len(views)))

    def forward(self, views: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def after_step(self, progress: float) -> None:
        """Called after every optimiser step with the fraction of training done."""


class ViewLossObjective(Objective):
    """Objectives whose loss takes the views' projections only: ``loss(project(views))``."""

    def __init__(self, model: SSLModel, loss: nn.Module) -> None:
        super().__init__(model)
        self.loss = loss

    def forward(self, views: list[Tensor]) -> Tensor:
        return self.loss(self.project(views))


def require_two_views(views: list[Tensor], method: str) -> None:
    if len(views) != 2:
        raise ValueError(f"{method} takes 2 views per image, got {len(views)}")


def momentum_settings(config: Any) -> dict[str, float]:
    """The EMA schedule of a config: ``momentum_base`` and ``momentum_final``."""
    return {"momentum_base": config.momentum_base, "momentum_final": config.momentum_final}


class WithMomentum:
    """Mixin for an objective with a momentum encoder (EMA of backbone + projector, cosine
    τ schedule) updated after every optimiser step (BYOL, All4One, SNCLR). Call
    :meth:`add_momentum_encoder` in ``__init__`` once ``backbone`` and ``projector`` exist."""

    backbone: nn.Module
    projector: nn.Module
    momentum_encoder: MomentumEncoder

    def add_momentum_encoder(self, base: float = 0.99, final: float = 1.0) -> None:
        self.momentum_encoder = MomentumEncoder(self.backbone, self.projector, base, final)

    @torch.no_grad()
    def momentum_project(self, views: list[Tensor]) -> list[Tensor]:
        """Momentum projections of each view (float32, no gradient), all views at once."""
        return list(self.momentum_encoder(torch.cat(views)).float().chunk(len(views)))

    def after_step(self, progress: float) -> None:
        self.momentum_encoder.update((self.backbone, self.projector), progress)


def attach_queue(objective: Objective, queue_size: int, loss: nn.Module) -> None:
    """Give ``objective`` its ``queue`` (a :class:`~groco.training.queue.FeatureQueue` of
    ``queue_size`` rows as wide as the projection) and its ``loss``, and keep DDP from
    broadcasting the queue every step: its rows are gathered from every rank, so each
    rank's copy is already the same (see ``groco.training.queue``)."""
    objective.queue = FeatureQueue(queue_size, objective.projector.out_dim)
    objective.loss = loss
    objective._ddp_params_and_buffers_to_ignore = ["queue.keys", "queue.ptr"]


class NeighbourQueueObjective(WithMomentum, Objective):
    """All4One and SNCLR: a momentum encoder, a predictor and a queue of momentum keys
    whose ``num_neighbors`` nearest rows per sample the loss reads. Subclasses add their
    own heads, then :func:`attach_queue` with their loss."""

    def __init__(self, model: SSLModel, num_neighbors: int, predictor_hidden: int,
                 momentum_base: float, momentum_final: float) -> None:
        super().__init__(model)
        self.add_momentum_encoder(momentum_base, momentum_final)
        dim = model.projector.out_dim
        self.num_neighbors = num_neighbors
        self.predictor = PredictionHead(dim, predictor_hidden, dim)

    @classmethod
    def from_config(cls, config: Any, model: SSLModel, spec: Any) -> Objective:
        return cls(model, config.queue_size, config.num_neighbors, config.predictor_hidden,
                   config.temperature, **momentum_settings(config))
