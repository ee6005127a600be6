"""Differentiable sorting networks (Petersen et al., ICML 2021 "Differentiable Sorting
Networks for Scalable Sorting and Ranking Supervision"; ICLR 2022 "Monotonic Differentiable
Sorting Networks").

A sorting network is a fixed sequence of layers of conditional swaps. Relaxed, a swap of the
wires ``a < b`` with values ``x_a, x_b`` becomes

    alpha = f(steepness * (x_b - x_a))            # soft "x_a <= x_b"
    min   = alpha * x_a + (1 - alpha) * x_b
    max   = (1 - alpha) * x_a + alpha * x_b

and the relaxed permutation matrix ``P`` (``sorted_x = x @ P``, ascending) is the product
of all layers' 2x2 mixing matrices. ``f`` is one of

    cauchy        f(v) = atan(v) / pi + 1/2                       (default, monotonic)
    logistic      f(v) = sigmoid(v)
    logistic_phi  f(v) = sigmoid(v / (|x_b - x_a| + 1e-10) ** art_lambda)   (ART)
    reciprocal    f(v) = (v / (2 + |v|) + 1) / 2                  (monotonic)
    optimal       f(v) = clamp(v, -1/4, 1/4) + 1/2 + sign·(1/4 - 1/(16|v|)) beyond ±1/4
    gaussian      f(v) = Phi(v)                                   (normal CDF)

Numbers and wiring follow diffsort 0.2.0 (odd-even transposition network; bitonic network
pruned to sizes that are not a power of two by dropping the top wires), but each layer is
applied as the pairwise mix it is, on strided views of the wires, in O(B·n²) per layer
instead of diffsort's dense (B, n, n) products in O(B·n³) per layer. ``P`` is built by a
custom autograd function that keeps only each layer's wire differences for the backward
pass; where those would take more than ``max_saved_bytes`` (1 GiB by default: odd-even at
n = 128 and B = 1024 would keep 4 GiB), it keeps a copy of the permutation every
``√(2·layers)`` layers instead and recomputes each segment's differences during the
backward pass (one more forward pass of ``P``'s layers; at odd-even n = 128 about 1 GiB of
checkpoints and one segment's differences instead of 4 GiB).
Everything is computed in float32, also under autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

NETWORKS = ("odd_even", "bitonic")
MAX_SAVED_BYTES = 2**30
RELAXATIONS = ("cauchy", "logistic", "logistic_phi", "reciprocal", "optimal", "gaussian")


@dataclass(frozen=True)
class Layer:
    """One layer of comparators laid out as strided views of the (padded) wires.

    Wires ``start .. start + 2·groups·width`` are viewed as ``(groups, 2, width)``: the
    comparator ``(g, j)`` compares wire ``start + 2·g·width + j`` (the ``a`` side, slot 0)
    with wire ``start + (2·g + 1)·width + j`` (the ``b`` side, slot 1). ``descending`` and
    ``inert`` name the comparators whose min goes to the ``b`` side and those that leave both
    wires as they are (diffsort's pruned comparators); both are ``None`` when empty.
    ``block``: the layer only mixes wires within aligned blocks of this many wires (0 = all
    wires), so ``P`` is block-diagonal up to it and is stored as such.
    """

    start: int
    groups: int
    width: int
    descending: str | None = None
    inert: str | None = None
    block: int = 0

    @property
    def stop(self) -> int:
        return self.start + 2 * self.groups * self.width


def odd_even_layers(n: int) -> list[Layer]:
    """Odd-even transposition sort: ``n`` layers comparing (0,1),(2,3),… then (1,2),(3,4),…"""
    layers = []
    for t in range(n):
        shifted = t % 2
        pairs = (n - shifted) // 2
        if pairs:
            layers.append(Layer(start=shifted, groups=pairs, width=1))
    return layers


def bitonic_layers(n: int) -> tuple[list[Layer], dict[str, Tensor], int]:
    """Bitonic sorting network on ``N = 2**ceil(log2 n)`` wires, the top ``N - n`` pruned.

    Returns the layers, the boolean comparator masks they name, and ``N``. As in diffsort,
    a comparator that touches a pruned wire leaves its wires unchanged.
    """
    stages = max(1, math.ceil(math.log2(n))) if n > 1 else 0
    padded = 2**stages
    offset = padded - n
    layers: list[Layer] = []
    masks: dict[str, Tensor] = {}
    for block in range(stages):
        for step in range(block + 1):
            width = 2 ** (block - step)
            groups = padded // (2 * width)
            a = (torch.arange(groups)[:, None] * 2 * width + torch.arange(width)[None, :])
            descending = (a // 2 ** (block + 1)) % 2 == 1
            inert = a < offset  # the a side is pruned (the b side then is too, or is kept as is)
            name = f"layer{len(layers)}"
            desc_name = inert_name = None
            if bool(descending.any()):
                desc_name = f"{name}_descending"
                masks[desc_name] = descending
            if bool(inert.any()):
                inert_name = f"{name}_inert"
                masks[inert_name] = inert
            layers.append(Layer(0, groups, width, desc_name, inert_name, 2 ** (block + 1)))
    return layers, masks, padded


def relaxed_swap_probability(
    a: Tensor, b: Tensor, steepness: float, relaxation: str, art_lambda: float = 0.25
) -> Tensor:
    """``alpha = f(steepness·(b − a))``: the soft probability that ``a`` is the smaller one."""
    if relaxation == "cauchy":
        return torch.atan(steepness * (b - a)) / math.pi + 0.5
    if relaxation == "logistic":
        return torch.sigmoid(steepness * (b - a))
    if relaxation == "logistic_phi":
        return torch.sigmoid(steepness * (b - a) / ((a - b).abs() + 1e-10).pow(art_lambda))
    if relaxation == "reciprocal":
        v = steepness * (b - a)
        return 0.5 * (v / (2 + v.abs()) + 1)
    if relaxation == "optimal":
        v = steepness * (b - a)
        tail = ((v > 0.25).float() - (v < -0.25).float()) * (0.25 - 1 / 16 / (v.abs() + 1e-10))
        return torch.clamp(v, -0.25, 0.25) + 0.5 + tail
    if relaxation == "gaussian":
        return 0.5 + 0.5 * torch.erf(steepness * (b - a) / math.sqrt(2))
    raise ValueError(f"unknown relaxation {relaxation!r}; choose one of {', '.join(RELAXATIONS)}")


def _mix_(pairs: Tensor, alpha: Tensor, buffer: Tensor | None = None) -> Tensor:
    """In place: ``(x0, x1) ← (α·x0 + (1−α)·x1, (1−α)·x0 + α·x1)``; returns ``x0 − x1``
    (written into the start of the flat ``buffer`` when one is given).

    ``pairs`` is a view ``(B, groups, 2, width, m)`` and ``alpha`` ``(B, groups, 1, width, 1)``.
    The mixing matrix is symmetric, so the same update carries gradients backwards.
    """
    x0, x1 = pairs[:, :, 0:1], pairs[:, :, 1:2]
    diff = (x0 - x1 if buffer is None
            else torch.sub(x0, x1, out=buffer[: x0.numel()].view(x0.shape)))
    torch.addcmul(x1, alpha, diff, out=x0)
    x1.addcmul_(1 - alpha, diff)
    return diff


class _SoftPermutation(torch.autograd.Function):
    """``P`` from the per-layer effective swap probabilities, with a hand-written backward.

    Forward keeps ``Xᵀ`` (wires × inputs, the padded wires carrying virtual inputs of their
    own) in one buffer and mixes it layer by layer in place; it saves each layer's
    ``x0 − x1`` (the only thing ``∂P/∂α`` needs), or with ``segment > 0`` a copy of ``Xᵀ``
    before every ``segment``-th layer, from which backward recomputes the differences one
    segment at a time. Backward runs the layers in reverse on the gradient,
    ``∂L/∂α = Σ (g0 − g1)·(x0 − x1)``. While the layers only mix wires within aligned blocks
    (bitonic stages), ``Xᵀ`` is block-diagonal and only its diagonal blocks
    ``(B, blocks, size, size)`` are stored and mixed.
    """

    @staticmethod
    def forward(ctx, layers: list[Layer], padded: int, n: int, segment: int,
                *alphas: Tensor) -> Tensor:
        batch, ref = alphas[0].shape[0], alphas[0]
        size = layers[0].block or padded
        xt = torch.eye(size, dtype=ref.dtype, device=ref.device).repeat(
            batch, padded // size, 1, 1)
        if segment:  # each segment's starting Xᵀ; its differences go through one buffer
            saved, scratch = [], [_difference_buffer(xt, padded)] * segment
            for first in range(0, len(layers), segment):
                if (layers[first].block or padded) != xt.shape[-1]:
                    xt = _grow_blocks(xt)
                saved.append(xt.clone())
                xt, _ = _mix_layers(xt, layers, alphas, first,
                                    min(len(layers), first + segment), padded, scratch)
        else:  # each layer's differences
            xt, diffs = _mix_layers(xt, layers, alphas, 0, len(layers), padded)
            saved = list(diffs.values())
        ctx.layers, ctx.padded, ctx.n, ctx.segment = layers, padded, n, segment
        ctx.saved_count = len(saved)
        ctx.save_for_backward(*saved, *alphas)
        offset = padded - n
        return xt.view(batch, padded, padded)[:, offset:, offset:].transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_p: Tensor):
        layers, padded, n, segment = ctx.layers, ctx.padded, ctx.n, ctx.segment
        tensors = ctx.saved_tensors
        saved, alphas = tensors[: ctx.saved_count], tensors[ctx.saved_count :]
        batch, offset = grad_p.shape[0], padded - n
        grad = grad_p.new_zeros(batch, 1, padded, padded)
        grad[:, 0, offset:, offset:].copy_(grad_p.transpose(1, 2))
        grad_alphas: list[Tensor] = [None] * len(layers)  # type: ignore[list-item]
        diffs: dict[int, Tensor] = dict(enumerate(saved)) if not segment else {}
        buffers = ([_difference_buffer(grad, padded) for _ in range(segment)]
                   if segment else [])
        scratch = _difference_buffer(grad, padded)
        for t in range(len(layers) - 1, -1, -1):
            if segment and t not in diffs:
                first = t // segment * segment
                _, diffs = _mix_layers(saved[t // segment].clone(), layers, alphas, first,
                                       min(len(layers), first + segment), padded, buffers)
            layer, alpha = layers[t], alphas[t]
            while (layer.block or padded) != grad.shape[-1]:
                grad = _diagonal_blocks(grad)
            g_diff = _mix_(_pairs(grad, layer, padded),
                           alpha.view(batch, layer.groups, 1, layer.width, 1), scratch)
            if ctx.needs_input_grad[4 + t]:
                grad_alphas[t] = torch.linalg.vecdot(g_diff, diffs[t]).view_as(alpha)
        return (None, None, None, None, *grad_alphas)


def _pairs(blocks: Tensor, layer: Layer, padded: int) -> Tensor:
    """The ``(B, groups, 2, width, m)`` view of the wires ``layer`` compares."""
    batch, m = blocks.shape[0], blocks.shape[-1]
    rows = blocks.view(batch, padded, m)[:, layer.start : layer.stop]
    return rows.view(batch, layer.groups, 2, layer.width, m)


def _difference_buffer(like: Tensor, padded: int) -> Tensor:
    """A flat buffer that holds one layer's ``x0 − x1`` at the largest block size."""
    return like.new_empty(like.shape[0] * (padded // 2) * padded)


def _mix_layers(xt: Tensor, layers: list[Layer], alphas: tuple[Tensor, ...], first: int,
                stop: int, padded: int, buffers: list[Tensor] | None = None
                ) -> tuple[Tensor, dict[int, Tensor]]:
    """Layers ``first .. stop − 1`` applied in place to ``Xᵀ`` (its blocks grown as the
    layers need): ``(Xᵀ, {layer index: x0 − x1})``, each difference written into
    ``buffers[t − first]`` when buffers are given, a new tensor otherwise."""
    batch, diffs = xt.shape[0], {}
    for t in range(first, stop):
        layer = layers[t]
        if (layer.block or padded) != xt.shape[-1]:
            xt = _grow_blocks(xt)
        diffs[t] = _mix_(_pairs(xt, layer, padded),
                         alphas[t].view(batch, layer.groups, 1, layer.width, 1),
                         None if buffers is None else buffers[t - first])
    return xt, diffs


def _segment_length(layers: list[Layer], batch: int, padded: int, itemsize: int,
                    max_saved_bytes: float) -> int:
    """0 (keep every layer's differences) when they fit in ``max_saved_bytes``, else the
    segment length ``round(√(2·layers))`` that minimises checkpoints + one segment's
    differences."""
    saved = sum(batch * (padded // 2) * (layer.block or padded) for layer in layers) * itemsize
    if saved <= max_saved_bytes:
        return 0
    return max(1, round(math.sqrt(2 * len(layers))))


def _grow_blocks(blocks: Tensor) -> Tensor:
    """``(B, k, s, s)`` diagonal blocks → ``(B, k/2, 2s, 2s)``, pairs of blocks merged."""
    batch, count, size, _ = blocks.shape
    grown = blocks.new_zeros(batch, count // 2, 2 * size, 2 * size)
    grown[:, :, :size, :size] = blocks[:, 0::2]
    grown[:, :, size:, size:] = blocks[:, 1::2]
    return grown


def _diagonal_blocks(blocks: Tensor) -> Tensor:
    """``(B, k, 2s, 2s)`` → its ``(B, 2k, s, s)`` diagonal blocks (the inverse of growing)."""
    batch, count, size, _ = blocks.shape
    half = size // 2
    out = blocks.new_empty(batch, 2 * count, half, half)
    out[:, 0::2] = blocks[:, :, :half, :half]
    out[:, 1::2] = blocks[:, :, half:, half:]
    return out


class SortingNetwork(nn.Module):
    """A relaxed sorting network: ``forward(x) -> (sorted_x, P)`` with ``sorted_x == x @ P``.

    Args:
        kind: ``"odd_even"`` (n layers of adjacent swaps) or ``"bitonic"`` (log² n layers).
        size: number of inputs ``n`` (any size ≥ 1).
        steepness: inverse temperature of the relaxation.
        relaxation: one of ``cauchy`` (default), ``logistic``, ``logistic_phi`` (ART),
            ``reciprocal``, ``optimal``, ``gaussian``.
        art_lambda: the exponent of ``logistic_phi``.
        max_saved_bytes: above this much memory kept for the backward pass, ``P``'s
            backward recomputes its layers a segment at a time instead (the same
            gradients, one more forward pass of ``P``).

    ``x`` is ``(B, size)``; ``sorted_x`` is ascending ``(B, size)`` and ``P`` is
    ``(B, size, size)``, doubly stochastic, ``P[b, i, j]`` the probability that input ``i``
    lands at rank ``j``. The wiring lives in registered buffers, so ``.to(device)`` moves it;
    computation is float32 even under autocast (float64 inputs stay float64).
    """

    def __init__(
        self,
        kind: str,
        size: int,
        steepness: float = 10.0,
        relaxation: str = "cauchy",
        art_lambda: float = 0.25,
        max_saved_bytes: float = MAX_SAVED_BYTES,
    ) -> None:
        super().__init__()
        if kind not in NETWORKS:
            raise ValueError(f"unknown sorting network {kind!r}; choose one of {NETWORKS}")
        if relaxation not in RELAXATIONS:
            raise ValueError(f"unknown relaxation {relaxation!r}; choose one of {RELAXATIONS}")
        if size < 1:
            raise ValueError(f"a sorting network needs size >= 1, got {size}")
        self.kind, self.size = kind, size
        self.steepness, self.relaxation, self.art_lambda = float(steepness), relaxation, art_lambda
        self.max_saved_bytes = max_saved_bytes
        if kind == "odd_even":
            self.layers, masks, self.padded = odd_even_layers(size), {}, size
        else:
            self.layers, masks, self.padded = bitonic_layers(size)
        for name, mask in masks.items():
            self.register_buffer(name, mask, persistent=False)

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, size={self.size}, steepness={self.steepness}, "
                f"relaxation={self.relaxation!r}, layers={len(self.layers)}")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 2 or x.shape[1] != self.size:
            raise ValueError(f"expected input of shape (B, {self.size}), got {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._sort(x if x.dtype == torch.float64 else x.float())

    def _sort(self, x: Tensor) -> tuple[Tensor, Tensor]:
        batch, offset = x.shape[0], self.padded - self.size
        if not self.layers:
            return x, torch.ones_like(x).unsqueeze(-1)
        values = x if offset == 0 else torch.cat([x.new_zeros(batch, offset), x], dim=1)
        alphas = []
        for layer in self.layers:
            pairs = values[:, layer.start : layer.stop].view(batch, layer.groups, 2, layer.width)
            a, b = pairs[:, :, 0], pairs[:, :, 1]
            alpha = relaxed_swap_probability(a, b, self.steepness, self.relaxation,
                                             self.art_lambda)
            if layer.descending is not None:
                alpha = torch.where(getattr(self, layer.descending), 1 - alpha, alpha)
            if layer.inert is not None:
                alpha = alpha.masked_fill(getattr(self, layer.inert), 1.0)
            mixed = torch.stack([alpha * a + (1 - alpha) * b, (1 - alpha) * a + alpha * b], 2)
            values = torch.cat(
                [values[:, : layer.start], mixed.reshape(batch, -1), values[:, layer.stop :]], 1
            )
            alphas.append(alpha.contiguous())
        segment = _segment_length(self.layers, batch, self.padded, x.element_size(),
                                  self.max_saved_bytes)
        perm = _SoftPermutation.apply(self.layers, self.padded, self.size, segment, *alphas)
        return values[:, offset:], perm
