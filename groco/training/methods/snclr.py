"""SNCLR (Ge et al., ICLR 2023): soft neighbours from a memory bank and a momentum encoder;
its objective and registration."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from groco.training.heads import PredictionHead
from groco.training.losses import SoftNeighborLoss
from groco.training.methods.base import (
    Objective,
    WithMomentum,
    ignore_queue_in_ddp,
    momentum_settings,
    require_two_views,
)
from groco.training.methods.registry import MethodSpec, learning_rates, register
from groco.training.queue import FeatureQueue


class SNCLRObjective(WithMomentum, Objective):
    """SNCLR (ChongjianGE/SNCLR), MoCo v3 style: online projection ``q_pre = g(f(x))`` and
    prediction ``q = h(q_pre)``; momentum key ``k = g'(f'(x))``; the ``K`` nearest
    memory-bank rows of each key (bank as before this step) form its candidate set; loss
    :class:`~groco.training.losses.SoftNeighborLoss`; then view 2's keys are enqueued, as
    in the released code."""

    def __init__(self, model: Any, queue_size: int, num_neighbors: int = 5,
                 predictor_hidden: int = 4096, temperature: float = 0.2,
                 momentum_base: float = 0.99, momentum_final: float = 1.0) -> None:
        super().__init__(model)
        self.add_momentum_encoder(momentum_base, momentum_final)
        dim = model.projector.out_dim
        self.num_neighbors = num_neighbors
        self.predictor = PredictionHead(dim, predictor_hidden, dim)
        self.queue = FeatureQueue(queue_size, dim)
        self.loss = SoftNeighborLoss(temperature)
        ignore_queue_in_ddp(self, "queue")

    @classmethod
    def from_config(cls, config: Any, model: Any, spec: MethodSpec) -> SNCLRObjective:
        return cls(model, config.queue_size, config.num_neighbors, config.predictor_hidden,
                   config.temperature, **momentum_settings(config))

    def forward(self, views: list[Tensor]) -> Tensor:
        require_two_views(views, "snclr")
        q_pre = self.project(views)
        q = [self.predictor(v) for v in q_pre]
        keys = [F.normalize(kv, dim=1) for kv in self.momentum_project(views)]
        neighbours = [self.queue.nearest(kv, self.num_neighbors)[0] for kv in keys]
        loss = self.loss(q, q_pre, keys, neighbours)
        self.queue.enqueue(keys[1])
        return loss


register(MethodSpec(
    "snclr", "soft neighbours from a memory bank, momentum encoder",
    SNCLRObjective,
    learning_rates(0.5, 0.6, 1.5e-5), {"adamw": 0.1}, projector_dim=256, temperature=0.2,
    views=(2,), queue=True))
