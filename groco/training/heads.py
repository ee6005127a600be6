"""Heads that methods train beside the projector: the predictor MLP and All4One's
centroid transformer."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PredictionHead(nn.Sequential):
    """``p = W₂·ReLU(BN(W₁·z)) + b₂``: ``Linear(in, hidden, no bias) → BN → ReLU →
    Linear(hidden, out)``; ``forward``: ``(B, in_dim) -> (B, out_dim)``.

    The predictor of BYOL (Grill et al., 2020: hidden 4096, out 256), SimSiam (Chen & He,
    CVPR 2021, and bych-lee/gsg ``builder.py``: bottleneck hidden 512, out 2048, bias-free
    first layer), NNCLR and All4One (solo-learn: hidden 4096) and SNCLR (the MoCo v3
    two-layer predictor, hidden 4096). The first Linear has no bias since BN follows it.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
        self.in_dim, self.out_dim = in_dim, out_dim


def slot_encoding(length: int, dim: int) -> Tensor:
    """Sinusoidal encoding ``E`` ``(length, dim)`` of the slots of a neighbour sequence.

    All4One's released code adds ``Summer(PositionalEncodingPermute1D(5))`` to a
    ``(B, 5, D)`` sequence; that layer permutes the input, so the sinusoid runs along the
    feature index ``d`` and each pair of slots ``j`` gets its own frequency:

        E[j, d] = sin(d·ω_⌊j/2⌋) for even j,   cos(d·ω_⌊j/2⌋) for odd j,
        ω_m = 10000^(−2m / C),   C = 2·⌈length / 2⌉.
    """
    channels = 2 * ((length + 1) // 2)
    omega = 1.0 / (10000 ** (torch.arange(0, channels, 2, dtype=torch.float64) / channels))
    phase = torch.arange(dim, dtype=torch.float64)[:, None] * omega[None, :]  # (dim, C/2)
    table = torch.stack((phase.sin(), phase.cos()), dim=-1).flatten(1)  # (dim, C)
    return table[:, :length].T.contiguous().float()


class CentroidTransformer(nn.Module):
    """All4One's centroid: ``c = T(S + E)[:, 0]`` for a sequence ``S`` ``(B, length, D)``.

    ``T`` is a batch-first ``nn.TransformerEncoder`` (3 layers, 8 heads, feed-forward 2·D,
    dropout 0.1) and ``E`` is :func:`slot_encoding`, as in the released code
    (ImaGonEs/all4one, ``solo/methods/all4one.py``). ``D`` must be divisible by ``heads``.
    """

    def __init__(self, dim: int, length: int, layers: int = 3, heads: int = 8,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"the centroid transformer needs a projection width divisible by "
                             f"{heads} heads, got {dim}; change --projector-dim")
        layer = nn.TransformerEncoderLayer(d_model=dim, nhead=heads, dim_feedforward=2 * dim,
                                           dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers,
                                             enable_nested_tensor=False)
        self.length = length
        self.register_buffer("position", slot_encoding(length, dim), persistent=False)

    def forward(self, sequence: Tensor) -> Tensor:
        if sequence.shape[1] != self.length:
            raise ValueError(f"expected sequences of {self.length}, got {sequence.shape[1]}")
        return self.encoder(sequence + self.position.to(sequence.dtype))[:, 0]
