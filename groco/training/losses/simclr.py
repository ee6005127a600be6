"""SimCLR's NT-Xent (Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020), the vanilla contrastive baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groco.training.distributed import gather_with_grad, rank, world_size


class SimCLRLoss(nn.Module):
    """NT-Xent over all views, negatives from every rank.

    Stack the ``V`` views' L2-normalised projections into ``N = V·B`` rows ``zₘ`` (on all
    ranks: ``N·world``). For each local row ``m`` with positives ``Pos(m)`` (the other views
    of the same image) and temperature ``τ``:

        ℓₘ = −(1/|Pos(m)|) Σ_{p ∈ Pos(m)} log [ exp(zₘ·z_p/τ) / Σ_{o ≠ m} exp(zₘ·z_o/τ) ]

    and the loss is the mean of ℓₘ. For two views this is the usual symmetric NT-Xent.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, views: list[Tensor]) -> Tensor:
        if len(views) < 2:
            raise ValueError(f"SimCLR needs at least 2 views, got {len(views)}")
        with torch.autocast(device_type=views[0].device.type, enabled=False):
            n_views, batch = len(views), views[0].shape[0]
            local = F.normalize(torch.stack([v.float() for v in views]), dim=2)  # (V, B, D)
            # Global row order: rank-major, then view, then image.
            everything = gather_with_grad(local.reshape(n_views * batch, -1))
            logits = local.reshape(n_views * batch, -1) @ everything.T / self.temperature
            device = logits.device
            image = torch.arange(batch, device=device).repeat(n_views)
            view = torch.arange(n_views, device=device).repeat_interleave(batch)
            rows = rank() * n_views * batch + torch.arange(n_views * batch, device=device)
            col_rank = torch.arange(world_size(), device=device).repeat_interleave(n_views * batch)
            col_image = image.repeat(world_size())
            same_image = (col_rank[None, :] == rank()) & (col_image[None, :] == image[:, None])
            is_self = torch.arange(logits.shape[1], device=device)[None, :] == rows[:, None]
            logits = logits.masked_fill(is_self, float("-inf"))
            log_prob = logits - logits.logsumexp(dim=1, keepdim=True)
            positive = same_image & ~is_self
            loss = -(log_prob.masked_fill(~positive, 0).sum(1) / positive.sum(1))
            del view
            return loss.mean()
