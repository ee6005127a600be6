"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021;
facebookresearch/simsiam and bych-lee/gsg ``main_pretrain.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def negative_cosine(prediction: Tensor, target: Tensor) -> Tensor:
    """``D(p, z) = −cos(p, sg z)`` per row ``(B,)``, in float32, ``z`` detached."""
    with torch.autocast(device_type=prediction.device.type, enabled=False):
        return -F.cosine_similarity(prediction.float(), target.detach().float(), dim=1)


class SimSiamLoss(nn.Module):
    """Symmetric negative cosine with stop-gradient on the targets:

        L = ½·meanᵢ D(p¹ᵢ, sg z²ᵢ) + ½·meanᵢ D(p²ᵢ, sg z¹ᵢ),   D(p, z) = −p̂·ẑ

    ``pᵛ`` the predictor output and ``zᵛ`` the projection (SimSiam) or momentum projection
    (used by BYOL through :class:`~groco.training.losses.byol.BYOLLoss`) of view ``v``.
    Ranges over [−1, 1]; −1 when every prediction points at its target.
    """

    def forward(self, predictions: list[Tensor], targets: list[Tensor]) -> Tensor:
        if len(predictions) != 2 or len(targets) != 2:
            raise ValueError("SimSiamLoss takes the predictions and targets of 2 views")
        p1, p2 = predictions
        z1, z2 = targets
        return 0.5 * (negative_cosine(p1, z2).mean() + negative_cosine(p2, z1).mean())
