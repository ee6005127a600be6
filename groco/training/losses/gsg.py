"""Guided Stop-Gradient (Lee & Lee, "Guided Stop-Gradient for Siamese Representation
Learning"; released code bych-lee/gsg, ``main_pretrain.py``): pair two images and let the
geometry of their views choose which views predict and which are stop-gradient targets."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from groco.training.losses.simsiam import negative_cosine


def partner_permutation(batch: int, device: torch.device | str | None = None,
                        generator: torch.Generator | None = None) -> Tensor:
    """A random permutation ``π`` of ``range(batch)`` without fixed points: image ``i`` is
    paired with image ``π(i) ≠ i``. Built as one random cycle: shuffle ``σ``, then
    ``π(σₖ) = σ₍ₖ₊₁₎ mod batch``. (The released code uses ``randperm``, which may pair an
    image with itself; a 2-view batch reuses its own views for the partner, where a
    self-pair would give distance 0, so groco excludes it.)"""
    if batch < 2:
        raise ValueError(f"pairing images needs a batch of at least 2, got {batch}")
    sigma = torch.randperm(batch, generator=generator).to(device)
    partner = torch.empty_like(sigma)
    partner[sigma] = sigma.roll(-1)
    return partner


class GuidedStopGradientLoss(nn.Module):
    """For image 1 (views 1a, 1b) and its partner image 2 (views 2a, 2b):

        d(x, y) = ‖z₁ₓ − z₂ᵧ‖₂ for x, y ∈ {a, b}              (targets, detached)
        (x*, y*) = argmin d                                    (closest cross-image pair)
        ℓᵢ = ½·[D(p₁ₓ*, sg z₁x̄*) + D(p₂ᵧ*, sg z₂ȳ*)],   D(p, z) = −cos(p, z)
        L  = meanᵢ ℓᵢ

    ``x̄`` is the sibling view of ``x``. The closest views are the sources (predictor side,
    with gradient), their siblings the targets. ``z`` are the online projections (SimSiam-
    GSG) or the momentum projections (BYOL-GSG), as in the released ``SimSiamGSG`` /
    ``BYOLGSG``. Ties go to the first pair in the order (1a,2a), (1a,2b), (1b,2a), (1b,2b).
    """

    def choice(self, targets: list[Tensor], partner_targets: list[Tensor]) -> Tensor:
        """Index ``2·x + y`` of the closest cross-image pair per row, ``(B,)``."""
        z1a, z1b = (t.detach().float() for t in targets)
        z2a, z2b = (t.detach().float() for t in partner_targets)
        distances = torch.stack([(z1a - z2a).norm(dim=1), (z1a - z2b).norm(dim=1),
                                 (z1b - z2a).norm(dim=1), (z1b - z2b).norm(dim=1)], dim=1)
        return distances.argmin(dim=1)

    def forward(self, predictions: list[Tensor], targets: list[Tensor],
                partner_predictions: list[Tensor], partner_targets: list[Tensor]) -> Tensor:
        for group in (predictions, targets, partner_predictions, partner_targets):
            if len(group) != 2:
                raise ValueError("GuidedStopGradientLoss takes 2 views of each image")
        p1a, p1b = predictions
        z1a, z1b = targets
        p2a, p2b = partner_predictions
        z2a, z2b = partner_targets
        source1 = [negative_cosine(p1a, z1b), negative_cosine(p1b, z1a)]  # x = a, x = b
        source2 = [negative_cosine(p2a, z2b), negative_cosine(p2b, z2a)]  # y = a, y = b
        losses = 0.5 * torch.stack([source1[0] + source2[0], source1[0] + source2[1],
                                    source1[1] + source2[0], source1[1] + source2[1]], dim=1)
        chosen = self.choice(targets, partner_targets)
        return losses.gather(1, chosen[:, None]).mean()
