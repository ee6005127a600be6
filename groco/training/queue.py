"""A FIFO queue of L2-normalised keys (NNCLR's support set, SNCLR's memory bank), the same
on every rank.

    keys ∈ R^{size×D}, unit rows, initialised with random unit vectors (as solo-learn's
    NNCLR/All4One ``queue = normalize(randn)`` and lightly's ``MemoryBankModule``)
    enqueue(k):  K = gather_no_grad(k̂)            (every rank's keys, rank order, N rows)
                 keys[(ptr + t) mod size] = K_t   for the last min(N, size) rows t
                 ptr ← (ptr + N) mod size
    nearest(q, n): the n rows of ``keys`` with the largest cosine q̂·keysᵀ, most similar first

Because every rank writes the same gathered rows in the same order, the queues stay
identical without DDP broadcasting them. ``keys`` and ``ptr`` are buffers, so a checkpoint
holds the queue and its write position and a resumed run continues exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groco.training.distributed import gather_no_grad


class FeatureQueue(nn.Module):
    """``size`` keys of width ``dim``; see the module docstring for the update rule."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be >= 1, got {size}, {dim}")
        self.size, self.dim = int(size), int(dim)
        self.register_buffer("keys", F.normalize(torch.randn(self.size, self.dim), dim=1))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Append every rank's ``keys`` (B, D) (normalised here), dropping the oldest."""
        with torch.autocast(device_type=keys.device.type, enabled=False):
            rows = gather_no_grad(F.normalize(keys.detach().float(), dim=1))
        n = rows.shape[0]
        ptr = int(self.ptr)
        positions = (ptr + torch.arange(n, device=self.keys.device)) % self.size
        if n > self.size:  # only the newest ``size`` rows survive; no index written twice
            rows, positions = rows[-self.size:], positions[-self.size:]
        self.keys.index_copy_(0, positions, rows.to(self.keys.dtype))
        self.ptr.fill_((ptr + n) % self.size)

    @torch.no_grad()
    def nearest(self, queries: Tensor, n: int = 1) -> tuple[Tensor, Tensor]:
        """``(neighbours (B, n, D), indices (B, n))``: the ``n`` keys most cosine-similar to
        each query, most similar first."""
        if n > self.size:
            raise ValueError(f"asked for {n} neighbours from a queue of {self.size}")
        with torch.autocast(device_type=queries.device.type, enabled=False):
            similarity = F.normalize(queries.detach().float(), dim=1) @ self.keys.T
            indices = similarity.topk(n, dim=1).indices
        return self.keys[indices], indices
