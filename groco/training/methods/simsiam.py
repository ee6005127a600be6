"""SimSiam (Chen & He, CVPR 2021), plain and with Guided Stop-Gradient (Lee et al., 2023):
the siamese objective and the registration of ``simsiam`` and ``simsiam_gsg``."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from groco.training.heads import PredictionHead
from groco.training.losses import GuidedStopGradientLoss, SimSiamLoss, partner_permutation
from groco.training.methods.base import Objective
from groco.training.methods.registry import MethodSpec, learning_rates, register


class SiameseObjective(Objective):
    """SimSiam: ``z = g(f(x))``, ``p = h(z)``, loss :class:`~groco.training.losses.
    SimSiamLoss` with ``sg z`` as targets.

    With ``guided`` (Guided Stop-Gradient, bych-lee/gsg): every image is paired with
    another of the batch (:func:`~groco.training.losses.partner_permutation`) and
    :class:`~groco.training.losses.GuidedStopGradientLoss` picks sources and targets. With
    2 views the partner's views are its own two views; with 4 views, views 3 and 4 of the
    partner image (the released code's four crops).
    """

    def __init__(self, model: Any, predictor_hidden: int = 512,
                 guided: bool = False) -> None:
        super().__init__(model)
        dim = model.projector.out_dim
        self.predictor = PredictionHead(dim, predictor_hidden, dim)
        self.guided = guided
        self.loss = GuidedStopGradientLoss() if guided else self.pair_loss()

    @classmethod
    def from_config(cls, config: Any, model: Any, spec: MethodSpec) -> SiameseObjective:
        return cls(model, config.predictor_hidden, guided=spec.guided)

    def pair_loss(self) -> nn.Module:
        return SimSiamLoss()

    def targets(self, views: list[Tensor], projections: list[Tensor]) -> list[Tensor]:
        """Stop-gradient targets of each view: the projections themselves (SimSiam)."""
        return [z.detach() for z in projections]

    def forward(self, views: list[Tensor]) -> Tensor:
        allowed = (2, 4) if self.guided else (2,)
        if len(views) not in allowed:
            raise ValueError(f"expected {' or '.join(map(str, allowed))} views, "
                             f"got {len(views)}")
        z = self.project(views)
        p = [self.predictor(zv) for zv in z]
        targets = self.targets(views, z)
        if not self.guided:
            return self.loss(p, targets)
        partner = partner_permutation(z[0].shape[0], z[0].device)
        second = slice(2, 4) if len(views) == 4 else slice(0, 2)
        return self.loss(p[:2], targets[:2], [pv[partner] for pv in p[second]],
                         [tv[partner] for tv in targets[second]])


register(MethodSpec(
    "simsiam", "siamese with a predictor and stop-gradient",
    SiameseObjective,
    learning_rates(0.05, 1.0), {"sgd": 1e-4}, predictor_hidden=512, views=(2,)))
register(MethodSpec(
    "simsiam_gsg", "SimSiam with Guided Stop-Gradient",
    SiameseObjective,
    learning_rates(0.05, 1.0), {"sgd": 1e-4}, predictor_hidden=512, views=(2, 4),
    guided=True))
