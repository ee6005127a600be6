"""BYOL (Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020; solo-learn
``solo/losses/byol.py``)."""

from __future__ import annotations

from torch import Tensor, nn

from groco.training.losses.simsiam import negative_cosine


class BYOLLoss(nn.Module):
    """Normalised mean squared error of online predictions against momentum targets,
    summed over both directions:

        L = meanᵢ ‖p̂¹ᵢ − ẑ'²ᵢ‖² + meanᵢ ‖p̂²ᵢ − ẑ'¹ᵢ‖²,   ‖p̂ − ẑ'‖² = 2 − 2·p̂·ẑ'

    ``pᵛ`` the predictor output of view ``v``, ``z'ᵛ`` the momentum encoder's projection
    (no gradient). Ranges over [0, 8]; 0 when predictions match their targets.
    """

    def forward(self, predictions: list[Tensor], targets: list[Tensor]) -> Tensor:
        if len(predictions) != 2 or len(targets) != 2:
            raise ValueError("BYOLLoss takes the predictions and targets of 2 views")
        p1, p2 = predictions
        z1, z2 = targets
        return (2 + 2 * negative_cosine(p1, z2)).mean() + (2 + 2 * negative_cosine(p2, z1)).mean()
