"""SNCLR (Ge, Wang, Tong, Song, Wang, Luo, "Soft Neighbors are Positive Supporters in
Contrastive Visual Representation Learning", ICLR 2023; released code ChongjianGE/SNCLR,
``snclr/builder_snclr_factor.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groco.training.distributed import gather_no_grad, rank


class SoftNeighborLoss(nn.Module):
    """Soft-neighbour contrast of predictions against candidate sets of momentum keys.

    For query view ``a`` and key view ``b`` (local sample ``i``, all L2-normalised):
    candidates ``Cᵢ = {kᵢ, NNᵢ₁ … NNᵢ_K}`` (the momentum key of view ``b`` and its ``K``
    nearest memory-bank rows), ``U`` = the union of every sample's ``Cᵢ`` over all ranks,

        wᵢⱼ   = softmax_j (q̂ᵢ_pre · NN̂ᵢⱼ)              positiveness (no temperature)
        Pᵢ(c) = exp(q̂ᵢ·ĉ/τ) / Σ_{u ∈ U} exp(q̂ᵢ·û/τ)
        ℓ(a, b) = −2τ · meanᵢ [ log Pᵢ(kᵢ) + Σⱼ wᵢⱼ log Pᵢ(NNᵢⱼ) ]
        L = ℓ(1, 2) + ℓ(2, 1)

    ``q`` is the predictor output, ``q_pre`` the online projection it came from. As in the
    released code the weights ``w`` are not detached (gradient reaches ``q_pre`` through
    them) and the two directions are summed (MoCo v3's convention). τ = 0.2.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def direction(self, query: Tensor, query_projection: Tensor, key: Tensor,
                  neighbours: Tensor) -> Tensor:
        """``ℓ`` for queries ``(B, D)``, projections ``(B, D)``, keys ``(B, D)`` and
        neighbours ``(B, K, D)``."""
        with torch.autocast(device_type=query.device.type, enabled=False):
            q = F.normalize(query.float(), dim=1)
            q_pre = F.normalize(query_projection.float(), dim=1)
            nn_ = F.normalize(neighbours.detach().float(), dim=2)
            k = F.normalize(key.detach().float(), dim=1)
            batch, n_neighbours = nn_.shape[:2]
            local = torch.cat([k[:, None], nn_], dim=1)  # (B, 1 + K, D): [kᵢ, NNᵢ₁…NNᵢ_K]
            union = gather_no_grad(local.reshape(batch * (1 + n_neighbours), -1))
            log_p = (q @ union.T / self.temperature).log_softmax(dim=1)
            own = (rank() * batch + torch.arange(batch, device=q.device))[:, None] * (
                1 + n_neighbours) + torch.arange(1 + n_neighbours, device=q.device)
            log_p_own = log_p.gather(1, own)  # (B, 1 + K)
            w = torch.einsum("bd,bkd->bk", q_pre, nn_).softmax(dim=1)
            weights = torch.cat([torch.ones_like(w[:, :1]), w], dim=1)
            return -2 * self.temperature * (weights * log_p_own).sum(1).mean()

    def forward(self, queries: list[Tensor], projections: list[Tensor], keys: list[Tensor],
                neighbours: list[Tensor]) -> Tensor:
        if not len(queries) == len(projections) == len(keys) == len(neighbours) == 2:
            raise ValueError("SoftNeighborLoss takes two views of each input")
        return (self.direction(queries[0], projections[0], keys[1], neighbours[1])
                + self.direction(queries[1], projections[1], keys[0], neighbours[0]))
