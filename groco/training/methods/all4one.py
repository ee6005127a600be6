"""All4One (Estepa et al., ICCV 2023): neighbour centroids, neighbour and feature terms and
a momentum encoder; its objective and registration."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from groco.training.heads import CentroidTransformer, PredictionHead
from groco.training.losses import All4OneLoss
from groco.training.methods.base import NeighbourQueueObjective, attach_queue, require_two_views
from groco.training.methods.registry import MethodSpec, learning_rates, register


class All4OneObjective(NeighbourQueueObjective):
    """All4One (ImaGonEs/all4one): online ``z = g(f(x))``, ``p = h(z)``, ``p̃ = h̃(z)``;
    momentum ``m = ĝ'(f'(x))``; ``NN(mᵛ)`` its ``k`` nearest queue rows (most similar
    first); centroids ``cᵛ = T(NN(mᵛ))[0]`` and ``ĉᵛ = T([p̃ᵛ, NN₁…NN_{k−1}])[0]`` by
    :class:`~groco.training.heads.CentroidTransformer`; loss
    :class:`~groco.training.losses.All4OneLoss`; then view 1's ``m¹`` is enqueued.

    The released code trains the transformer at a fixed LR of 0.1 in its own parameter
    group; here it follows the run's optimiser and schedule like every other parameter.
    """

    def __init__(self, model: Any, queue_size: int, num_neighbors: int = 5,
                 predictor_hidden: int = 4096, temperature: float = 0.2,
                 momentum_base: float = 0.99, momentum_final: float = 1.0) -> None:
        super().__init__(model, num_neighbors, predictor_hidden, momentum_base, momentum_final)
        dim = model.projector.out_dim
        self.predictor2 = PredictionHead(dim, predictor_hidden, dim)
        self.centroid = CentroidTransformer(dim, num_neighbors)
        attach_queue(self, queue_size, All4OneLoss(temperature))

    def forward(self, views: list[Tensor]) -> Tensor:
        require_two_views(views, "all4one")
        k = self.num_neighbors
        z = self.project(views)
        p = [self.predictor(zv) for zv in z]
        p2 = [self.predictor2(zv).float() for zv in z]
        m = [F.normalize(mv, dim=1) for mv in self.momentum_project(views)]
        neighbours = [self.queue.nearest(mv, k)[0] for mv in m]  # (B, k, D) each
        centroids = [self.centroid(nv) for nv in neighbours]
        shifted = [self.centroid(torch.cat([pv[:, None], nv[:, : k - 1]], dim=1))
                   for pv, nv in zip(p2, neighbours, strict=True)]
        loss = self.loss(centroids, shifted, [nv[:, 0] for nv in neighbours], p, z, m)
        self.queue.enqueue(m[0])
        return loss


register(MethodSpec(
    "all4one", "neighbour centroids, neighbour and feature terms, momentum encoder",
    All4OneObjective,
    learning_rates(0.5, 1.0), {"lars": 1e-5}, projector_dim=256, temperature=0.2,
    views=(2,), queue=True))
