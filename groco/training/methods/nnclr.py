"""NNCLR (Dwibedi et al., ICCV 2021): the nearest neighbour from a support queue as the
positive; its objective and registration."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from groco.training.heads import PredictionHead
from groco.training.losses import NNCLRLoss
from groco.training.methods.base import Objective, attach_queue, require_two_views
from groco.training.methods.registry import MethodSpec, learning_rates, register


class NNCLRObjective(Objective):
    """NNCLR: ``z = g(f(x))``, ``p = h(z)``; the nearest neighbour of ``ẑᵛ`` in the support
    queue replaces the positive of the other view's prediction
    (:class:`~groco.training.losses.NNCLRLoss`); then view 1's ``ẑ¹`` of every rank is
    enqueued (solo-learn ``solo/methods/nnclr.py``)."""

    def __init__(self, model: Any, queue_size: int, predictor_hidden: int = 4096,
                 temperature: float = 0.1) -> None:
        super().__init__(model)
        dim = model.projector.out_dim
        self.predictor = PredictionHead(dim, predictor_hidden, dim)
        attach_queue(self, queue_size, NNCLRLoss(temperature))

    @classmethod
    def from_config(cls, config: Any, model: Any, spec: MethodSpec) -> NNCLRObjective:
        return cls(model, config.queue_size, config.predictor_hidden, config.temperature)

    @classmethod
    def queue_rows(cls, config: Any) -> int:
        return 1

    def forward(self, views: list[Tensor]) -> Tensor:
        require_two_views(views, "nnclr")
        z = self.project(views)
        p = [self.predictor(zv) for zv in z]
        neighbours = [self.queue.nearest(zv, 1)[0][:, 0] for zv in z]
        loss = self.loss(neighbours, p)
        self.queue.enqueue(z[0])
        return loss


register(MethodSpec(
    "nnclr", "nearest neighbour from a support queue as the positive",
    NNCLRObjective,
    learning_rates(0.5, 0.4), {"lars": 1e-5}, projector_dim=256, views=(2,), queue=True))
