"""Self-supervised objectives as plain ``nn.Module``s, each with its formula in the docstring.

``GroCoLoss`` and ``SimCLRLoss`` take ``forward(views) -> scalar``; the losses of methods
with predictors, queues or momentum encoders take the tensors their formula names.
"""

from groco.training.losses.all4one import All4OneLoss, feature_contrast
from groco.training.losses.byol import BYOLLoss
from groco.training.losses.groco import GroCoLoss
from groco.training.losses.gsg import GuidedStopGradientLoss, partner_permutation
from groco.training.losses.nnclr import NNCLRLoss, info_nce
from groco.training.losses.simclr import SimCLRLoss
from groco.training.losses.simsiam import SimSiamLoss, negative_cosine
from groco.training.losses.snclr import SoftNeighborLoss

__all__ = [
    "All4OneLoss",
    "BYOLLoss",
    "GroCoLoss",
    "GuidedStopGradientLoss",
    "NNCLRLoss",
    "SimCLRLoss",
    "SimSiamLoss",
    "SoftNeighborLoss",
    "feature_contrast",
    "info_nce",
    "negative_cosine",
    "partner_permutation",
]
