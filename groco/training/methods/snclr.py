"""SNCLR (Ge et al., ICLR 2023): soft neighbours from a memory bank and a momentum encoder;
its objective and registration."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from groco.training.losses import SoftNeighborLoss
from groco.training.methods.base import NeighbourQueueObjective, attach_queue, require_two_views
from groco.training.methods.registry import MethodSpec, learning_rates, register


class SNCLRObjective(NeighbourQueueObjective):
    """SNCLR (ChongjianGE/SNCLR), MoCo v3 style: online projection ``q_pre = g(f(x))`` and
    prediction ``q = h(q_pre)``; momentum key ``k = g'(f'(x))``; the ``K`` nearest
    memory-bank rows of each key (bank as before this step) form its candidate set; loss
    :class:`~groco.training.losses.SoftNeighborLoss`; then view 2's keys are enqueued, as
    in the released code."""

    def __init__(self, model: Any, queue_size: int, num_neighbors: int = 5,
                 predictor_hidden: int = 4096, temperature: float = 0.2,
                 momentum_base: float = 0.99, momentum_final: float = 1.0) -> None:
        super().__init__(model, num_neighbors, predictor_hidden, momentum_base, momentum_final)
        attach_queue(self, queue_size, SoftNeighborLoss(temperature))

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
