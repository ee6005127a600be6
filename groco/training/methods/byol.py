"""BYOL (Grill et al., NeurIPS 2020), plain and with Guided Stop-Gradient: the momentum-
target siamese objective and the registration of ``byol`` and ``byol_gsg``."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from groco.training.losses import BYOLLoss
from groco.training.methods.base import WithMomentum, momentum_settings
from groco.training.methods.registry import MethodSpec, learning_rates, register
from groco.training.methods.simsiam import SiameseObjective


class BYOLObjective(WithMomentum, SiameseObjective):
    """BYOL: SimSiam's network whose targets come from the momentum encoder, loss
    :class:`~groco.training.losses.BYOLLoss` (or Guided Stop-Gradient with momentum
    targets, the released ``BYOLGSG``)."""

    def __init__(self, model: Any, predictor_hidden: int = 4096, guided: bool = False,
                 momentum_base: float = 0.99, momentum_final: float = 1.0) -> None:
        super().__init__(model, predictor_hidden, guided)
        self.add_momentum_encoder(momentum_base, momentum_final)

    @classmethod
    def from_config(cls, config: Any, model: Any, spec: MethodSpec) -> BYOLObjective:
        return cls(model, config.predictor_hidden, guided=spec.guided,
                   **momentum_settings(config))

    def pair_loss(self) -> nn.Module:
        return BYOLLoss()

    def targets(self, views: list[Tensor], projections: list[Tensor]) -> list[Tensor]:
        return self.momentum_project(views)


register(MethodSpec(
    "byol", "siamese with a momentum-encoder target",
    BYOLObjective,
    learning_rates(0.05, 1.0), {"sgd": 1e-4, "lars": 1e-5}, projector_dim=256, views=(2,)))
register(MethodSpec(
    "byol_gsg", "BYOL with Guided Stop-Gradient",
    BYOLObjective,
    learning_rates(0.05, 1.0), {"sgd": 1e-4, "lars": 1e-5}, predictor_hidden=512,
    views=(2, 4), guided=True))
