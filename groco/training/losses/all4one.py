"""All4One (Estepa, Rodríguez, Radeva, "All4One: Symbiotic Neighbour Contrastive Learning via
Self-Attention and Redundancy Reduction", ICCV 2023; released code ImaGonEs/all4one and
solo-learn ``solo/methods/all4one.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groco.training.distributed import gather_no_grad, gather_with_grad
from groco.training.losses.nnclr import info_nce


def _off_diagonal(matrix: Tensor) -> Tensor:
    n = matrix.shape[0]
    return matrix.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def feature_contrast(online: list[Tensor], momentum: list[Tensor]) -> Tensor:
    """All4One's redundancy-reduction term on cross-correlations of feature columns:

        Ẑᵛ = zᵛ / ‖zᵛ‖_col,  M̂ᵛ = mᵛ / ‖mᵛ‖_col   (columns over the batch, not centred)
        C¹ = M̂¹ᵀ Ẑ²,  C² = M̂²ᵀ Ẑ¹                   (D × D)
        on  = √(½·[mean_d (C¹_dd − 1)² + mean_d (C²_dd − 1)²])
        off = √(½·[mean_{d≠e} (C¹_de)² + mean_{d≠e} (C²_de)²])
        L_feat = 10·(½·on + ½·off)

    ``zᵛ`` are the online projections (gradient), ``mᵛ`` the normalised momentum
    projections (none). Columns are normalised over the batch of all ranks (``z`` gathered
    with gradient), so every rank computes the whole batch's value.
    """
    with torch.autocast(device_type=online[0].device.type, enabled=False):
        z = [F.normalize(gather_with_grad(v.float()), dim=0) for v in online]
        m = [F.normalize(gather_no_grad(v.detach().float()), dim=0) for v in momentum]
        c1, c2 = m[0].T @ z[1], m[1].T @ z[0]
        on = (0.5 * ((c1.diagonal() - 1).pow(2).mean() + (c2.diagonal() - 1).pow(2).mean()))
        off = 0.5 * (_off_diagonal(c1).pow(2).mean() + _off_diagonal(c2).pow(2).mean())
        return 10.0 * (0.5 * on.sqrt() + 0.5 * off.sqrt())


class All4OneLoss(nn.Module):
    """The three All4One objectives, weighted as in the released code:

        L_cen  = ½·ℓ(c¹, ĉ²; τ_c) + ½·ℓ(c², ĉ¹; τ_c)        centroid contrast
        L_NN   = ½·ℓ(NN₁(m¹), p²; τ) + ½·ℓ(NN₁(m²), p¹; τ)   NNCLR neighbour contrast
        L_feat = :func:`feature_contrast`                     redundancy reduction
        L      = 0.5·L_cen + 0.5·L_NN + 0.5·L_feat

    ``ℓ`` is :func:`~groco.training.losses.nnclr.info_nce`; ``cᵛ = T(NN(mᵛ))[0]`` the
    transformer centroid of view ``v``'s ``k`` nearest queue neighbours (of its momentum
    projection ``mᵛ``), ``ĉᵛ = T([p̃ᵛ, NN₁…NN_{k−1}])[0]`` the centroid with the second
    predictor's output ``p̃ᵛ`` shifted in first, ``NN₁`` the nearest neighbour, ``pᵛ`` the
    first predictor's output, ``zᵛ`` the online projection. τ_c = 0.1 (the default of
    ``nnclr_loss_func``), τ = 0.2 (the released config).
    """

    def __init__(self, temperature: float = 0.2, centroid_temperature: float = 0.1,
                 weights: tuple[float, float, float] = (0.5, 0.5, 0.5)) -> None:
        super().__init__()
        if temperature <= 0 or centroid_temperature <= 0:
            raise ValueError("All4One temperatures must be > 0")
        self.temperature, self.centroid_temperature = temperature, centroid_temperature
        self.weights = weights

    def terms(self, centroids: list[Tensor], shifted: list[Tensor], nearest: list[Tensor],
              predictions: list[Tensor], online: list[Tensor],
              momentum: list[Tensor]) -> dict[str, Tensor]:
        """``{"centroid": L_cen, "neighbour": L_NN, "feature": L_feat}``."""
        tc, t = self.centroid_temperature, self.temperature
        centroid = 0.5 * (info_nce(centroids[0], shifted[1], tc)
                          + info_nce(centroids[1], shifted[0], tc))
        neighbour = 0.5 * (info_nce(nearest[0].detach(), predictions[1], t)
                           + info_nce(nearest[1].detach(), predictions[0], t))
        return {"centroid": centroid, "neighbour": neighbour,
                "feature": feature_contrast(online, momentum)}

    def forward(self, centroids: list[Tensor], shifted: list[Tensor], nearest: list[Tensor],
                predictions: list[Tensor], online: list[Tensor],
                momentum: list[Tensor]) -> Tensor:
        terms = self.terms(centroids, shifted, nearest, predictions, online, momentum)
        w_cen, w_nn, w_feat = self.weights
        return w_cen * terms["centroid"] + w_nn * terms["neighbour"] + w_feat * terms["feature"]
