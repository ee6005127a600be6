"""SimCLR (Chen et al., ICML 2020), vanilla contrastive: the InfoNCE loss of
:class:`~groco.training.losses.SimCLRLoss` over the views' projections, and its registration."""

from __future__ import annotations

from typing import Any

from groco.training.losses import SimCLRLoss
from groco.training.methods.base import ViewLossObjective
from groco.training.methods.registry import MethodSpec, learning_rates, register


class SimCLRObjective(ViewLossObjective):
    """``loss(project(views))`` with :class:`~groco.training.losses.SimCLRLoss`."""

    @classmethod
    def from_config(cls, config: Any, model: Any, spec: MethodSpec) -> SimCLRObjective:
        return cls(model, SimCLRLoss(config.temperature))


register(MethodSpec(
    "simclr", "vanilla contrastive (InfoNCE over the batch)",
    SimCLRObjective, learning_rates(0.5, 0.3)))
