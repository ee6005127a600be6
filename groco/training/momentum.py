"""Momentum (EMA) encoders: a frozen copy of the online backbone + projector that follows
them slowly, with BYOL's cosine schedule for the momentum ``τ``.

After every optimiser step (``Objective.after_step(progress)``), each parameter ``ξ`` of
the copy moves toward its online twin ``θ``:

    ξ ← τ·ξ + (1 − τ)·θ
    τ(p) = τ_final − (τ_final − τ_base)·(cos(π·p) + 1) / 2,    p = step / total_steps

so ``τ`` rises from ``τ_base`` (0.99) at the start to ``τ_final`` (1.0) at the end.
Sources: BYOL (Grill et al., NeurIPS 2020, §3.1 and appendix A), solo-learn
(``solo/utils/momentum.py``: the update uses the current τ, then τ is advanced), MoCo v3 /
SNCLR (``--moco-m-cos`` / ``--snclr-m-cos``, m 0.99) and All4One (τ 0.99 → 1).
Only parameters are averaged; the copy's BatchNorm statistics come from its own forward
passes (in training mode, batch statistics), as in those implementations.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def cosine_momentum(progress: float, base: float, final: float = 1.0) -> float:
    """``τ(p) = final − (final − base)·(cos(π·p) + 1)/2`` for ``p`` clamped to [0, 1]."""
    p = min(1.0, max(0.0, float(progress)))
    return final - (final - base) * (math.cos(math.pi * p) + 1.0) / 2.0


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters do not require gradients."""
    twin = copy.deepcopy(module)
    for param in twin.parameters():
        param.requires_grad_(False)
    return twin


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, tau: float) -> None:
    """``ξ ← τ·ξ + (1 − τ)·θ`` for every parameter pair (``online`` θ, ``target`` ξ)."""
    online_params = list(online.parameters())
    target_params = list(target.parameters())
    if len(online_params) != len(target_params):
        raise ValueError("ema_update: online and target modules have different parameters")
    for theta, xi in zip(online_params, target_params, strict=True):
        xi.mul_(tau).add_(theta.detach().to(xi.dtype), alpha=1.0 - tau)


class MomentumEncoder(nn.Module):
    """EMA copy of an online ``backbone`` and ``projector``; ``forward(x)`` returns the
    momentum projection ``projector_ξ(backbone_ξ(x))`` without gradients.

    Its state dict holds ``backbone.*``, ``projector.*`` and ``tau`` under the objective's
    attribute name (``momentum_encoder.backbone.*``), never under a bare ``backbone.``
    prefix, so ``groco export`` reads the online backbone only. ``tau`` is a buffer, so the
    schedule's position is checkpointed and a resumed run continues exactly.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, base: float = 0.99,
                 final: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= base <= final <= 1.0:
            raise ValueError(f"momentum needs 0 <= base <= final <= 1, got {base}, {final}")
        self.base, self.final = float(base), float(final)
        self.backbone = frozen_copy(backbone)
        self.projector = frozen_copy(projector)
        self.register_buffer("tau", torch.tensor(self.base, dtype=torch.float64))

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.backbone(x))

    @torch.no_grad()
    def update(self, online: Sequence[nn.Module], progress: float) -> None:
        """EMA step toward ``online = (backbone, projector)`` with the current ``τ``, then
        ``τ ← τ(progress)`` for the next step (solo-learn's order)."""
        tau = float(self.tau)
        for source, target in zip(online, (self.backbone, self.projector), strict=True):
            ema_update(source, target, tau)
        self.tau.fill_(cosine_momentum(progress, self.base, self.final))
