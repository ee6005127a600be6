"""Optimisers and the learning-rate schedule of a run."""

from __future__ import annotations

import math

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    For each parameter ``w`` with gradient ``g`` (weight decay ``λ`` folded in first,
    ``g ← g + λw``), the update is scaled by the trust ratio
    ``η · ‖w‖ / ‖g‖`` (1 when either norm is 0). Parameter groups with
    ``lars_exclude=True`` (biases and normalisation layers) get plain SGD without decay.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.02) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not group["lars_exclude"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.norm(p), torch.norm(grad)
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
                    grad = grad.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def _split_decay(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights, biases and normalisation parameters)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return decay, no_decay


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float,
                    momentum: float) -> torch.optim.Optimizer:
    """``sgd`` (decay on everything, as GroCo's released code), ``lars`` or ``adamw``
    (no decay and no adaptation on biases and normalisation parameters)."""
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                               weight_decay=weight_decay)
    decay, no_decay = _split_decay(model)
    if name == "lars":
        return LARS([{"params": decay}, {"params": no_decay, "lars_exclude": True}],
                    lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def learning_rate(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to 0:

        lr(s) = peak · (s + 1) / warmup                              for s < warmup
        lr(s) = peak · ½ · (1 + cos(π · (s − warmup) / (total − warmup)))  otherwise
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
