"""What a run is made of before its first step: the device, the process group, which
backbone parameters train, and the errors and result a run reports."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from groco.training.distributed import is_distributed

log = logging.getLogger("groco.train")


class TrainError(ValueError):
    """A run that cannot start: bad data, bad settings, an existing run without --resume."""


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    steps: int
    final_loss: float
    knn_top1: float | None
    images_per_s: float
    broken: int
    kept_epoch: int | None = None
    kept_reason: str = ""


def backbone_stages(backbone: nn.Module) -> list[list[nn.Parameter]]:
    """The backbone's parameters by stage, stem first: timm's coarse ``group_matcher``
    (ResNet: stem, layer1..4; EfficientNet: stem, blocks.0..6 with the head conv last; ViT:
    patch embedding, then each block, the final norm last). One stage when the model has
    no ``group_matcher``."""
    matcher = getattr(backbone, "group_matcher", None)
    if matcher is None:
        return [list(backbone.parameters())]
    from timm.models import group_parameters

    named = dict(backbone.named_parameters())
    groups = group_parameters(backbone, matcher(coarse=True))
    return [[named[n] for n in names if n in named] for _, names in sorted(groups.items())]


def freeze_stages(backbone: nn.Module, trainable_stages: int) -> list[nn.Parameter]:
    """Freeze all but the last ``trainable_stages`` stages (0 = train all); returns the
    backbone parameters that still train."""
    if trainable_stages:
        for stage in backbone_stages(backbone)[:-trainable_stages]:
            for param in stage:
                param.requires_grad_(False)
    return [p for p in backbone.parameters() if p.requires_grad]


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm of ``module`` in eval mode: running statistics stay as they are
    (the pretrained ones) and batches are normalised with them."""
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.eval()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError("--device cuda: no CUDA device is available")
        if is_distributed():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def init_distributed(device_name: str) -> None:
    """Join the ``torchrun`` process group (NCCL on CUDA, else gloo) when there is one."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo")


def tensorboard_writer(run_dir: Path):
    """A TensorBoard ``SummaryWriter`` in ``run_dir/tensorboard``, or None without it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but logging must never stop training
        log.warning("tensorboard is not installed; writing metrics.csv only")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
