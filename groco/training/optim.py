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


def _groups(model: nn.Module, backbone_lr_scale: float,
            split_decay: bool) -> list[dict]:
    """Parameter groups: backbone vs the rest (``lr_scale`` 1), each split into weights and
    biases/normalisation parameters (``no_decay``) when ``split_decay``. Parameters that do
    not require gradients (frozen stages) are left out; empty groups are dropped."""
    backbone = getattr(model, "backbone", None)
    in_backbone = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for param in model.parameters():
        if not param.requires_grad:
            continue
        key = (id(param) in in_backbone, split_decay and param.ndim <= 1)
        groups.setdefault(key, []).append(param)
    return [{"params": params, "lr_scale": backbone_lr_scale if is_backbone else 1.0,
             "backbone": is_backbone, "no_decay": no_decay}
            for (is_backbone, no_decay), params in sorted(groups.items())]


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float,
                    momentum: float, backbone_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """``sgd`` (decay on everything, as GroCo's released code), ``lars`` or ``adamw``
    (no decay and no adaptation on biases and normalisation parameters).

    Every group carries ``backbone`` (whether it holds ``model.backbone``'s parameters) and
    ``lr_scale``: ``backbone_lr_scale`` for the backbone, 1 for the heads; the trainer sets
    ``lr = schedule * lr_scale``.
    """
    if name not in ("sgd", "lars", "adamw"):
        raise ValueError(f"unknown optimizer {name!r}")
    groups = _groups(model, backbone_lr_scale, split_decay=name != "sgd")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        for group in groups:
            group["lars_exclude"] = group["no_decay"]
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    for group in groups:
        group["weight_decay"] = 0.0 if group["no_decay"] else weight_decay
    return torch.optim.AdamW(groups, lr=lr)


def learning_rate(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to 0:

        lr(s) = peak · (s + 1) / warmup                              for s < warmup
        lr(s) = peak · ½ · (1 + cos(π · (s − warmup) / (total − warmup)))  otherwise
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
