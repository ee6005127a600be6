"""GroCo: Group Ordering Constraints (Shvetsova, Petersen, Kukleva, Schiele, Kuehne,
"Learning by Sorting: Self-supervised Learning with Group Ordering Constraints", ICCV 2023;
released code: ninatu/learning_by_sorting, ``losses/groco.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groco.training.distributed import gather_with_grad, rank
from groco.training.sorting import SortingNetwork


class GroCoLoss(nn.Module):
    """Sort each anchor's positives among its hardest negatives; penalise every positive
    that a differentiable sorting network ranks below a negative.

    For ``V`` views ``z¹…zⱽ`` (each ``(B, D)``) of the same ``B`` images, every view ``v``
    is the anchor in turn. For anchor ``a = zᵛᵢ`` (L2-normalised; all in float32):

        pos  = sort↑ { cos(a, zᵘᵢ) : u ≠ v }                       (V − 1 positives)
        neg  = sort↑ top_k { cos(a, zᵛⱼ) : j ≠ i }                (k = topk_neg negatives,
                                                                   over all ranks' batches)
        s    = [neg, pos]  ∈ R^n,  n = k + V − 1                  (target: identity order)
        P    = SortingNetwork(s)                                   (n × n, rows: inputs)
        mᵢₙ  = Σ_{r ≥ k} P[m, r]        mass of input m on the top (positive) ranks
        ℓ    = ½·[BCE(mᵢₙ, y) + BCE(1 − mᵢₙ, 1 − y)],  y_m = 1 iff input m is a positive

    (``1 − mᵢₙ`` is computed as the mass on the bottom ranks, as in the released code.)
    The loss is ℓ averaged over inputs, anchors and views. With ``stop_grad`` the positives
    and negatives are detached, so gradients reach the encoder through the anchor only.
    Scores are plain cosine similarities, no temperature; the sorter's ``steepness``
    (1.0 in the paper) sets how sharply ranks are resolved.
    """

    def __init__(
        self,
        topk_neg: int = 10,
        steepness: float = 1.0,
        network: str = "odd_even",
        relaxation: str = "cauchy",
        stop_grad: bool = True,
    ) -> None:
        super().__init__()
        if topk_neg < 1:
            raise ValueError(f"topk_neg must be >= 1, got {topk_neg}")
        self.topk_neg, self.steepness = topk_neg, steepness
        self.network, self.relaxation, self.stop_grad = network, relaxation, stop_grad
        self.sorters = nn.ModuleDict()
        self._sorter(2)  # the common two-view case, built eagerly so .to() moves it

    def _sorter(self, n_views: int) -> SortingNetwork:
        key = str(n_views)
        if key not in self.sorters:
            size = n_views - 1 + self.topk_neg
            self.sorters[key] = SortingNetwork(self.network, size, self.steepness, self.relaxation)
        return self.sorters[key]

    def forward(self, views: list[Tensor]) -> Tensor:
        if len(views) < 2:
            raise ValueError(f"GroCo needs at least 2 views, got {len(views)}")
        with torch.autocast(device_type=views[0].device.type, enabled=False):
            z = [F.normalize(v.float(), dim=1) for v in views]
            sorter = self._sorter(len(z)).to(z[0].device)
            return torch.stack([self._anchor_loss(z, v, sorter) for v in range(len(z))]).mean()

    def _anchor_loss(self, z: list[Tensor], v: int, sorter: SortingNetwork) -> Tensor:
        anchor = z[v]
        batch = anchor.shape[0]
        maybe_detach = (lambda t: t.detach()) if self.stop_grad else (lambda t: t)
        positives = torch.stack(
            [(anchor * maybe_detach(z[u])).sum(1) for u in range(len(z)) if u != v], dim=1
        )
        bank = gather_with_grad(anchor)
        if bank.shape[0] - 1 < self.topk_neg:
            raise ValueError(
                f"GroCo needs a batch of at least topk_neg + 1 = {self.topk_neg + 1} images "
                f"(over all processes), got {bank.shape[0]}"
            )
        negatives = anchor @ maybe_detach(bank).T
        own = torch.arange(batch, device=anchor.device) + rank() * batch
        negatives = negatives.scatter(1, own[:, None], float("-inf"))
        negatives = negatives.topk(self.topk_neg, dim=1).values.flip(1)
        scores = torch.cat([negatives, positives.sort(dim=1).values], dim=1)
        _, perm = sorter(scores)
        k = self.topk_neg
        top_mass = perm[:, :, k:].sum(2).clamp(0, 1)
        bottom_mass = perm[:, :, :k].sum(2).clamp(0, 1)
        target = torch.zeros_like(top_mass)
        target[:, k:] = 1.0
        return 0.5 * (F.binary_cross_entropy(top_mass, target)
                      + F.binary_cross_entropy(bottom_mass, 1 - target))
