"""Objectives: a backbone and projector plus whatever a method trains beside them.

An ``Objective`` is an ``nn.Module`` whose ``forward(views)`` returns the scalar loss of a
batch of augmented views and whose ``after_step(progress)`` runs once after each optimiser
step (momentum-encoder updates, for instance). Its state dict keeps the backbone under
``backbone.*`` and the projector under ``projector.*``, which is what ``groco export``
reads; method heads, momentum encoders and queues live under their own names
(``predictor.*``, ``momentum_encoder.backbone.*``, ``queue.keys``, ...), all as parameters
or buffers, so a checkpoint holds everything a resumed run needs.

Methods: GroCo and SimCLR (a loss over the views' projections); NNCLR (support queue);
All4One (momentum encoder, queue, centroid transformer); SNCLR (momentum encoder, memory
bank); SimSiam and BYOL (predictor; BYOL with a momentum encoder), each also with Guided
Stop-Gradient. Which ``--method`` builds which objective: :mod:`groco.training.methods`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groco.training.heads import CentroidTransformer, PredictionHead
from groco.training.losses import (
    All4OneLoss,
    BYOLLoss,
    GuidedStopGradientLoss,
    NNCLRLoss,
    SimSiamLoss,
    SoftNeighborLoss,
    partner_permutation,
)
from groco.training.models import SSLModel
from groco.training.momentum import MomentumEncoder
from groco.training.queue import FeatureQueue


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


def _two_views(views: list[Tensor], method: str) -> None:
    if len(views) != 2:
        raise ValueError(f"{method} takes 2 views per image, got {len(views)}")


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


def _ignore_in_ddp(objective: nn.Module, queue_name: str) -> None:
    """Keep DDP from broadcasting the queue every step: its rows are gathered from every
    rank, so each rank's copy is already the same (see ``groco.training.queue``)."""
    objective._ddp_params_and_buffers_to_ignore = [f"{queue_name}.keys", f"{queue_name}.ptr"]


class NNCLRObjective(Objective):
    """NNCLR (Dwibedi et al., ICCV 2021): ``z = g(f(x))``, ``p = h(z)``; the nearest
    neighbour of ``ẑᵛ`` in the support queue replaces the positive of the other view's
    prediction (:class:`~groco.training.losses.NNCLRLoss`); then view 1's ``ẑ¹`` of every
    rank is enqueued (solo-learn ``solo/methods/nnclr.py``)."""

    def __init__(self, model: SSLModel, queue_size: int, predictor_hidden: int = 4096,
                 temperature: float = 0.1) -> None:
        super().__init__(model)
        dim = model.projector.out_dim
        self.predictor = PredictionHead(dim, predictor_hidden, dim)
        self.queue = FeatureQueue(queue_size, dim)
        self.loss = NNCLRLoss(temperature)
        _ignore_in_ddp(self, "queue")

    def forward(self, views: list[Tensor]) -> Tensor:
        _two_views(views, "nnclr")
        z = self.project(views)
        p = [self.predictor(zv) for zv in z]
        neighbours = [self.queue.nearest(zv, 1)[0][:, 0] for zv in z]
        loss = self.loss(neighbours, p)
        self.queue.enqueue(z[0])
        return loss


class All4OneObjective(WithMomentum, Objective):
    """All4One (Estepa et al., ICCV 2023; ImaGonEs/all4one): online ``z = g(f(x))``,
    ``p = h(z)``, ``p̃ = h̃(z)``; momentum ``m = ĝ'(f'(x))``; ``NN(mᵛ)`` its ``k`` nearest
    queue rows (most similar first); centroids ``cᵛ = T(NN(mᵛ))[0]`` and
    ``ĉᵛ = T([p̃ᵛ, NN₁…NN_{k−1}])[0]`` by :class:`~groco.training.heads.CentroidTransformer`;
    loss :class:`~groco.training.losses.All4OneLoss`; then view 1's ``m¹`` is enqueued.

    The released code trains the transformer at a fixed LR of 0.1 in its own parameter
    group; here it follows the run's optimiser and schedule like every other parameter.
    """

    def __init__(self, model: SSLModel, queue_size: int, num_neighbors: int = 5,
                 predictor_hidden: int = 4096, temperature: float = 0.2,
                 momentum_base: float = 0.99, momentum_final: float = 1.0) -> None:
        super().__init__(model)
        self.add_momentum_encoder(momentum_base, momentum_final)
        dim = model.projector.out_dim
        self.num_neighbors = num_neighbors
        self.predictor = PredictionHead(dim, predictor_hidden, dim)
        self.predictor2 = PredictionHead(dim, predictor_hidden, dim)
        self.centroid = CentroidTransformer(dim, num_neighbors)
        self.queue = FeatureQueue(queue_size, dim)
        self.loss = All4OneLoss(temperature)
        _ignore_in_ddp(self, "queue")

    def forward(self, views: list[Tensor]) -> Tensor:
        _two_views(views, "all4one")
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


class SNCLRObjective(WithMomentum, Objective):
    """SNCLR (Ge et al., ICLR 2023; ChongjianGE/SNCLR), MoCo v3 style: online projection
    ``q_pre = g(f(x))`` and prediction ``q = h(q_pre)``; momentum key ``k = g'(f'(x))``; the
    ``K`` nearest memory-bank rows of each key (bank as before this step) form its
    candidate set; loss :class:`~groco.training.losses.SoftNeighborLoss`; then view 2's keys
    are enqueued, as in the released code."""

    def __init__(self, model: SSLModel, queue_size: int, num_neighbors: int = 5,
                 predictor_hidden: int = 4096, temperature: float = 0.2,
                 momentum_base: float = 0.99, momentum_final: float = 1.0) -> None:
        super().__init__(model)
        self.add_momentum_encoder(momentum_base, momentum_final)
        dim = model.projector.out_dim
        self.num_neighbors = num_neighbors
        self.predictor = PredictionHead(dim, predictor_hidden, dim)
        self.queue = FeatureQueue(queue_size, dim)
        self.loss = SoftNeighborLoss(temperature)
        _ignore_in_ddp(self, "queue")

    def forward(self, views: list[Tensor]) -> Tensor:
        _two_views(views, "snclr")
        q_pre = self.project(views)
        q = [self.predictor(v) for v in q_pre]
        keys = [F.normalize(kv, dim=1) for kv in self.momentum_project(views)]
        neighbours = [self.queue.nearest(kv, self.num_neighbors)[0] for kv in keys]
        loss = self.loss(q, q_pre, keys, neighbours)
        self.queue.enqueue(keys[1])
        return loss


class SiameseObjective(Objective):
    """SimSiam (Chen & He, CVPR 2021): ``z = g(f(x))``, ``p = h(z)``, loss
    :class:`~groco.training.losses.SimSiamLoss` with ``sg z`` as targets.

    With ``guided`` (Guided Stop-Gradient, bych-lee/gsg): every image is paired with
    another of the batch (:func:`~groco.training.losses.partner_permutation`) and
    :class:`~groco.training.losses.GuidedStopGradientLoss` picks sources and targets. With
    2 views the partner's views are its own two views; with 4 views, views 3 and 4 of the
    partner image (the released code's four crops).
    """

    def __init__(self, model: SSLModel, predictor_hidden: int = 512,
                 guided: bool = False) -> None:
        super().__init__(model)
        dim = model.projector.out_dim
        self.predictor = PredictionHead(dim, predictor_hidden, dim)
        self.guided = guided
        self.loss = GuidedStopGradientLoss() if guided else self.pair_loss()

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


class BYOLObjective(WithMomentum, SiameseObjective):
    """BYOL (Grill et al., NeurIPS 2020): SimSiam's network whose targets come from the
    momentum encoder, loss :class:`~groco.training.losses.BYOLLoss` (or Guided
    Stop-Gradient with momentum targets, the released ``BYOLGSG``)."""

    def __init__(self, model: SSLModel, predictor_hidden: int = 4096, guided: bool = False,
                 momentum_base: float = 0.99, momentum_final: float = 1.0) -> None:
        super().__init__(model, predictor_hidden, guided)
        self.add_momentum_encoder(momentum_base, momentum_final)

    def pair_loss(self) -> nn.Module:
        return BYOLLoss()

    def targets(self, views: list[Tensor], projections: list[Tensor]) -> list[Tensor]:
        return self.momentum_project(views)
