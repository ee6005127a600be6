"""GroCo (Shvetsova, Petersen et al., ICCV 2023): the loss of
:class:`~groco.training.losses.GroCoLoss` over the views' projections, and its registration."""

from __future__ import annotations

from typing import Any

from groco.training.losses import GroCoLoss
from groco.training.methods.base import ViewLossObjective
from groco.training.methods.registry import MethodSpec, learning_rates, register


class GroCoObjective(ViewLossObjective):
    """``loss(project(views))`` with :class:`~groco.training.losses.GroCoLoss`."""

    @classmethod
    def from_config(cls, config: Any, model: Any, spec: MethodSpec) -> GroCoObjective:
        return cls(model, GroCoLoss(config.topk_neg, config.steepness, config.network,
                                    config.relaxation, config.stop_grad))

    @classmethod
    def min_batch(cls, config: Any) -> int:
        """One positive and ``topk_neg`` negatives per anchor."""
        return config.topk_neg + 1


register(MethodSpec(
    "groco", "Group Ordering Constraints (sorting network over positives and hardest "
    "negatives)",
    GroCoObjective,
    # Fine-tuning keeps the full rate: at steepness 1 the loss moves in a narrow band
    # (REFERENCES.md), and a tenth of it left the start's features as they were
    # (BENCHMARKS.md, "Quality: trained encoders beside their baselines").
    learning_rates(6.0, 6.0), finetune_lr_factor=1.0))
