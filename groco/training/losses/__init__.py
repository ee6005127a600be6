"""Self-supervised objectives as plain ``nn.Module``s: ``forward(views) -> scalar``."""

from groco.training.losses.groco import GroCoLoss
from groco.training.losses.simclr import SimCLRLoss

__all__ = ["GroCoLoss", "SimCLRLoss"]
