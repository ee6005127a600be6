"""Objectives: a backbone and projector plus whatever a method trains beside them.

An ``Objective`` is an ``nn.Module`` whose ``forward(views)`` returns the scalar loss of a
batch of augmented views and whose ``after_step(progress)`` runs once after each optimiser
step (momentum-encoder updates, for instance). Its state dict keeps the backbone under
``backbone.*`` and the projector under ``projector.*``, which is what ``groco export``
reads; method heads, momentum encoders and queues live under their own names.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from groco.training.config import TrainConfig
from groco.training.losses import GroCoLoss, SimCLRLoss
from groco.training.models import SSLModel


class Objective(nn.Module):
    """Base class: holds ``backbone`` and ``projector`` of an ``SSLModel``."""

    def __init__(self, model: SSLModel) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.projector = model.projector

    def project(self, views: list[Tensor]) -> list[Tensor]:
        """Projections of each view, all views through the network in one batch."""
        projections = self.projector(self.backbone(torch.cat(views)))
        return list(projections.float().chunk(len(views)))

    def forward(self, views: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def after_step(self, progress: float) -> None:
        """Called after every optimiser step with the fraction of training done."""


class ViewLossObjective(Objective):
    """Objectives whose loss takes the views' projections only (GroCo, SimCLR)."""

    def __init__(self, model: SSLModel, loss: nn.Module) -> None:
        super().__init__(model)
        self.loss = loss

    def forward(self, views: list[Tensor]) -> Tensor:
        return self.loss(self.project(views))


def build_objective(config: TrainConfig, model: SSLModel) -> Objective:
    """The ``--method`` of ``config`` around ``model``."""
    if config.method == "groco":
        return ViewLossObjective(model, GroCoLoss(config.topk_neg, config.steepness,
                                                  config.network, config.relaxation,
                                                  config.stop_grad))
    if config.method == "simclr":
        return ViewLossObjective(model, SimCLRLoss(config.temperature))
    raise ValueError(f"unknown method {config.method!r}")
