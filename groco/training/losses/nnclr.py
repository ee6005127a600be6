"""NNCLR (Dwibedi, Aytar, Tompson, Sermanet, Zisserman, "With a Little Help from My Friends:
Nearest-Neighbor Contrastive Learning of Visual Representations", ICCV 2021; solo-learn
``solo/losses/nnclr.py``): the nearest neighbour in a support queue replaces the positive."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groco.training.distributed import gather_with_grad, rank


def info_nce(anchors: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """InfoNCE with the matching row as the positive and every rank's targets as candidates:

        ℓ = −(1/B) Σᵢ log [ exp(âᵢ·t̂ᵢ/τ) / Σⱼ exp(âᵢ·t̂ⱼ/τ) ]

    ``anchors`` ``a`` and ``targets`` ``t`` are ``(B, D)``, L2-normalised here, in float32;
    ``i`` runs over this rank's rows, ``j`` over the targets of all ranks (gathered with
    gradient), so under DDP the mean over ranks is the loss of the whole batch.
    solo-learn's ``nnclr_loss_func(nn, p, τ)`` is this with ``a = nn``, ``t = p`` on one rank.
    """
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        a = F.normalize(anchors.float(), dim=1)
        t = F.normalize(targets.float(), dim=1)
        logits = a @ gather_with_grad(t).T / temperature
        labels = rank() * a.shape[0] + torch.arange(a.shape[0], device=a.device)
        return F.cross_entropy(logits, labels)


class NNCLRLoss(nn.Module):
    """Symmetric NNCLR loss for two views:

        L = ½·ℓ(NN(ẑ¹), p²) + ½·ℓ(NN(ẑ²), p¹)

    with ``ℓ`` = :func:`info_nce` at temperature ``τ``, ``NN(ẑᵛ)`` the support-queue row
    most cosine-similar to view ``v``'s normalised projection (no gradient) and ``pᵛ`` the
    predictor output of view ``v``. τ = 0.1 in the paper (0.2 in solo-learn's configs).
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, neighbours: list[Tensor], predictions: list[Tensor]) -> Tensor:
        if len(neighbours) != 2 or len(predictions) != 2:
            raise ValueError("NNCLRLoss takes the neighbours and predictions of 2 views")
        n1, n2 = (n.detach() for n in neighbours)
        p1, p2 = predictions
        return 0.5 * (info_nce(n1, p2, self.temperature) + info_nce(n2, p1, self.temperature))
