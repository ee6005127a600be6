"""`groco train`: one readable loop from an image folder to a run directory.

decode on CPU workers (uint8) → augment on the device (``MultiViewAugment``) → backbone +
projector on all views at once → loss → step; per step LR (warm-up + cosine); per epoch
the monitor (:mod:`~groco.training.trainer.monitor`), TensorBoard and one checkpoint
generation (:mod:`groco.training.checkpoint`). Under ``torchrun`` each process trains on
its shard with DDP and the losses gather negatives from every rank.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from groco.progress import progress_bar
from groco.training import checkpoint
from groco.training.augment import MultiViewAugment
from groco.training.checkpoint import PARITY
from groco.training.config import TrainConfig
from groco.training.data import ImageFolderDataset, make_loader
from groco.training.distributed import is_distributed, rank, world_size
from groco.training.geometry import with_geometry
from groco.training.holdout import split as holdout_split
from groco.training.methods import Objective, build_objective, get_method
from groco.training.models import build_model, is_vit, network_facts
from groco.training.optim import build_optimizer, learning_rate
from groco.training.trainer.monitor import Monitor, kept_record
from groco.training.trainer.run_state import (
    METRIC_FIELDS,
    check_resume_settings,
    epoch_row,
    load_optimizer_state,
    split_optimizer_state,
)
from groco.training.trainer.setup import (
    TrainError,
    TrainResult,
    freeze_batchnorm,
    freeze_stages,
    init_distributed,
    pick_device,
    tensorboard_writer,
)

log = logging.getLogger("groco.train")


def _split_folder(config: TrainConfig) -> tuple[ImageFolderDataset, list[str]]:
    """``(the images the run trains on, the held-out images)``
    (:mod:`groco.training.holdout`; none held out by default)."""
    listing = ImageFolderDataset(config.data, config.base_size)
    try:
        trained, held = holdout_split(listing.targets, config.holdout or 0, config.seed)
    except ValueError as error:
        raise TrainError(f"--holdout: {error}") from None
    if not len(held):
        return listing, []
    dataset = ImageFolderDataset(config.data, config.base_size,
                                 files=[listing.files[i] for i in trained])
    return dataset, [str(listing.files[i]) for i in held]


class Trainer:
    """Holds a run's pieces; ``fit()`` trains to ``config.epochs`` and returns the result."""

    def __init__(self, config: TrainConfig, resume: bool = False, show_progress: bool = True,
                 asked: Mapping[str, Any] | None = None):
        """``resume``: continue the run in ``config.out`` with its saved settings; ``asked``
        (the settings a user gave, e.g. on the command line) must agree with them."""
        init_distributed(config.device)
        self.run_dir = Path(config.out)
        if resume and (self.run_dir / checkpoint.CONFIG).is_file():
            config = TrainConfig.from_dict(checkpoint.load_config(self.run_dir))
            check_resume_settings(self.run_dir, config, asked or {})
        elif not resume and (self.run_dir / checkpoint.STATE).exists():
            raise TrainError(f"{self.run_dir} already holds a run; pass --resume to continue it "
                             "or choose another --out")
        config = with_geometry(config, self.run_dir).resolved()
        self.device = pick_device(config.device)
        self.show_progress = show_progress and rank() == 0
        torch.manual_seed(config.seed)  # same initial weights on every rank

        self.dataset, held_out = _split_folder(config)
        global_batch = config.batch_size * world_size()
        if len(self.dataset) < global_batch:
            raise TrainError(f"{config.data}: {len(self.dataset)} images, fewer than one batch "
                             f"of {global_batch}; lower --batch-size")
        self.sampler = DistributedSampler(self.dataset, num_replicas=world_size(), rank=rank(),
                                          shuffle=True, seed=config.seed, drop_last=True)
        self.loader = make_loader(self.dataset, config.batch_size, config.workers, shuffle=False,
                                  seed=config.seed, drop_last=True, sampler=self.sampler)
        self.steps_per_epoch = len(self.loader)
        if config.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, config.max_steps_per_epoch)

        model = build_model(config)
        self.config = config = config.with_network(model.backbone)  # recorded in config.yaml
        self.trainable_backbone = freeze_stages(model.backbone, config.trainable_stages)
        self.channels_last = not is_vit(model.backbone)
        objective = build_objective(config, model)
        if self.device.type == "cuda" and is_distributed():
            objective = nn.SyncBatchNorm.convert_sync_batchnorm(objective)
        objective = objective.to(self.device)
        if self.channels_last:
            objective = objective.to(memory_format=torch.channels_last)
        self.objective: Objective = objective
        self.ddp = (nn.parallel.DistributedDataParallel(objective) if is_distributed() else None)
        self.augment = MultiViewAugment(config.image_size, config.views, config.mean, config.std,
                                        crop_scale=(config.crop_min_scale, 1.0),
                                        flip=config.flip)
        self.peak_lr = config.lr * global_batch / 256
        self.optimizer = build_optimizer(config.optimizer, objective, self.peak_lr,
                                         config.weight_decay, config.momentum,
                                         config.backbone_lr_scale)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.warmup_steps = round(config.warmup_epochs * self.steps_per_epoch)
        self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None
        self.monitor = Monitor(config, self.dataset.files, self.dataset.targets,
                               self.dataset.classes, self.device, self.channels_last,
                               self.autocast_dtype, held_out=held_out)
        self.epoch = self.step = 0
        self.kept: dict[str, str] | None = None  # metadata of best.safetensors
        self.last_scores: tuple[float | None, dict[str, float]] | None = None
        self.metrics: list[dict] = []  # rows of the finished epochs, as in metrics.csv
        self.restored = False
        if resume:
            self._restore()

    # ----------------------------------------------------------------------------- state
    def _generation(self, row: dict, best: bool) -> checkpoint.Generation:
        """This moment of the run as one checkpoint generation (``best``: this epoch is the
        kept one)."""
        tensors, optimizer = split_optimizer_state(self.optimizer)
        state = {"epoch": self.epoch, "step": self.step, "rank_count": world_size(),
                 **optimizer, "last_scores": self.last_scores}
        weights = {**self.objective.state_dict(), **self.monitor.parity_tensors(self.objective)}
        facts = network_facts(self.objective.backbone, self.config.image_size)
        return checkpoint.Generation(
            epoch=self.epoch, weights=weights,
            weights_metadata={checkpoint.EPOCH_KEY: str(self.epoch),
                              "method": self.config.method, **facts},
            state_tensors=tensors, state=state, metrics=[*self.metrics, row],
            metric_fields=METRIC_FIELDS,
            best=(weights, {**self.kept, **facts}) if best and self.kept else None)

    def _save(self, row: dict, best: bool) -> None:
        """Write this epoch's generation (weights, optimiser state, metrics up to ``row``,
        the kept epoch) as one (:func:`groco.training.checkpoint.save_generation`), after
        the run's settings."""
        checkpoint.save_config(self.run_dir, self.config.to_dict())
        checkpoint.save_generation(self.run_dir, self._generation(row, best))
        self.metrics.append(row)

    def _restore(self) -> None:
        restored = checkpoint.load_generation(self.run_dir)
        if restored is None:
            return
        state = restored.state
        if state.get("rank_count", 1) != world_size():
            raise TrainError(f"{self.run_dir} was trained with {state['rank_count']} processes; "
                             f"resume it with the same number (now {world_size()})")
        self.objective.load_state_dict({k: v for k, v in restored.weights.items()
                                        if not k.startswith(PARITY)})
        load_optimizer_state(self.optimizer, restored.state_tensors, state, self.device)
        self.epoch, self.step = state["epoch"], state["step"]
        scores = state.get("last_scores")
        self.last_scores = None if scores is None else (scores[0], dict(scores[1]))
        self.kept = restored.best_metadata
        self.metrics = restored.metrics
        self.restored = True
        log.info("resumed %s at epoch %d (step %d)", self.run_dir, self.epoch, self.step)

    # ------------------------------------------------------------------------- training
    def _views(self, images: torch.Tensor) -> list[torch.Tensor]:
        views = self.augment(images.to(self.device, non_blocking=True))
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views

    def _warming_up(self) -> bool:
        """True during the head warm-up epochs (the backbone is not trained)."""
        return self.epoch < (self.config.head_warmup_epochs or 0)

    def train_step(self, images: torch.Tensor) -> float:
        lr = learning_rate(self.step, self.total_steps, self.warmup_steps, self.peak_lr)
        frozen_backbone = self._warming_up()
        for group in self.optimizer.param_groups:
            frozen = frozen_backbone and group["backbone"]
            group["lr"] = 0.0 if frozen else lr * group["lr_scale"]
        views = self._views(images)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            loss = (self.ddp or self.objective)(views)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {self.step}; "
                                     "lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        self.objective.after_step(self.step / self.total_steps)
        return float(loss.detach())

    def _equal_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Under DDP, trim to the smallest batch of all ranks (broken files are skipped)."""
        if not is_distributed():
            return images
        size = torch.tensor([images.shape[0]], device=self.device)
        dist.all_reduce(size, op=dist.ReduceOp.MIN)
        return images[: int(size)]

    def train_epoch(self) -> tuple[float, float, int]:
        """(mean loss, images/s, broken files skipped) of one epoch.

        The data order and the augmentations of epoch ``e`` depend on (seed, rank, e) only,
        so a run resumed from the checkpoint of epoch ``e`` repeats an uninterrupted one.
        """
        self.objective.train()
        if self.config.freeze_bn:
            freeze_batchnorm(self.objective.backbone)
        if not is_distributed():  # under DDP the warm-up is an LR of 0 (same parameters)
            for param in self.trainable_backbone:
                param.requires_grad_(not self._warming_up())
        self.sampler.set_epoch(self.epoch)
        torch.manual_seed(self.config.seed * 1_000_003 + rank() * 10_007 + self.epoch)
        global_batch = self.config.batch_size * world_size()
        progress = progress_bar(self.steps_per_epoch * global_batch, unit="img",
                                desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
                                disable=not self.show_progress)
        min_batch = get_method(self.config.method).min_batch(self.config)
        losses, images_seen, broken, started = [], 0, 0, time.perf_counter()
        readable = 0
        for index, (images, _, _, n_broken) in enumerate(self.loader):
            if index >= self.steps_per_epoch:
                break
            broken += n_broken
            readable += images.shape[0]
            images = self._equal_batch(images)
            if images.shape[0] * world_size() < min_batch:
                continue
            losses.append(self.train_step(images))
            images_seen += images.shape[0] * world_size()
            progress.update(images.shape[0] * world_size())
            progress.set_postfix(loss=f"{losses[-1]:.4f}", broken=broken, refresh=False)
        progress.close()
        if not losses:
            if readable == 0:
                raise TrainError(f"{self.config.data}: no readable image in an epoch "
                                 f"({broken} unreadable files skipped)")
            raise TrainError(
                f"{self.config.data}: an epoch drew {readable} readable images and {broken} "
                f"unreadable files, and no batch of {global_batch} kept the {min_batch} "
                f"readable images a step needs; lower --batch-size below {readable}")
        seconds = time.perf_counter() - started
        return float(np.mean(losses)), images_seen / seconds, broken

    # ----------------------------------------------------------------------- evaluation
    def knn_monitor(self) -> float | None:
        """Weighted k-NN top-1 of the network as it is now (None without labels)."""
        return self.monitor.knn(self.objective)

    def evaluate(self) -> tuple[float | None, dict[str, float]]:
        """(k-NN top-1 or None, label-free scores) of the network as it is now."""
        return self.monitor.evaluate(self.objective)

    def _log_epoch(self, loss: float | None, speed: float | None, knn: float | None,
                   scores: dict[str, float], broken: int, writer) -> None:
        head = f"epoch {self.epoch}/{self.config.epochs}" + (
            " (the start)" if self.epoch == 0 else "")
        parts = []
        if loss is not None:
            parts.append(f"loss {loss:.4f}, {speed:.1f} img/s")
        if knn is not None:
            parts.append(f"k-NN top-1 {knn:.4f}")
        if scores:
            parts.append(f"copy retrieval {scores['copy_top1']:.4f}, "
                         f"RankMe {scores['rankme']:.1f}")
        if broken:
            parts.append(f"{broken} unreadable files skipped")
        if self.kept is not None:
            parts.append(f"kept: epoch {self.kept['epoch']}")
        log.info(head + (": " + ", ".join(parts) if parts else ""))
        if writer is not None:
            if loss is not None:
                writer.add_scalar("train/loss", loss, self.epoch)
                writer.add_scalar("train/images_per_s", speed, self.epoch)
            if knn is not None:
                writer.add_scalar("eval/knn_top1", knn, self.epoch)
            for name, value in scores.items():
                writer.add_scalar(f"eval/{name}", value, self.epoch)
            writer.flush()

    def _record_epoch(self, loss: float | None, speed: float | None, broken: int,
                      started: float, writer, evaluate: bool) -> float | None:
        """Score the network (when ``evaluate``), keep it if best, write the epoch's
        checkpoint generation (its metrics row included) and log it.
        Returns the k-NN top-1 (``None`` without labels or evaluation)."""
        knn, scores, kept = None, {}, False
        if evaluate and self.last_scores is not None and self._backbone_was_frozen():
            knn, scores = self.last_scores  # the exported features are those scored
        elif evaluate:
            knn, scores = self.evaluate()
            record = kept_record(self.kept, self.epoch, self.config.method, knn, scores,
                                 self.monitor.scored_on)
            kept = record is not None
            self.kept = record or self.kept
            self.last_scores = (knn, scores)
        row = epoch_row(self.epoch, self.step, self.optimizer.param_groups[0]["lr"], loss,
                        speed, broken, knn, scores, kept, time.perf_counter() - started)
        self._save(row, kept)
        self._log_epoch(loss, speed, knn, scores, broken, writer)
        return knn

    def _backbone_was_frozen(self) -> bool:
        """True after a head warm-up epoch with frozen BatchNorm statistics: the backbone,
        whose features are scored and exported, is what it was before the epoch."""
        return bool(self.config.freeze_bn) and 0 < self.epoch <= (
            self.config.head_warmup_epochs or 0)

    def _evaluating(self) -> bool:
        every = self.config.eval_every
        return every > 0 and (self.epoch % every == 0 or self.epoch == self.config.epochs)

    # ------------------------------------------------------------------------------ fit
    def fit(self) -> TrainResult:
        config = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if rank() == 0:
            checkpoint.save_config(self.run_dir, config.to_dict())
        writer = tensorboard_writer(self.run_dir) if rank() == 0 else None
        loss = math.nan
        knn = None
        speed, broken_total = 0.0, 0
        if self.restored and self.epoch >= config.epochs:
            log.info("%s already finished its %d epochs: nothing to train", self.run_dir,
                     config.epochs)
        if not self.restored and rank() == 0 and config.eval_every > 0:
            knn = self._record_epoch(None, None, 0, time.perf_counter(), writer, evaluate=True)
        if is_distributed():
            dist.barrier()
        while self.epoch < config.epochs:
            started = time.perf_counter()
            loss, speed, broken = self.train_epoch()
            broken_total += broken
            self.epoch += 1
            knn = None
            if rank() == 0:
                knn = self._record_epoch(loss, speed, broken, started, writer,
                                         evaluate=self._evaluating())
            if is_distributed():
                dist.barrier()
        if writer is not None:
            writer.close()
        kept_epoch = int(self.kept["epoch"]) if self.kept else None
        reason = self.kept["reason"] if self.kept else ""
        if rank() == 0 and kept_epoch == 0 and self.epoch > 0:
            log.info("no epoch improved on the start: %s is the start (%s)",
                     checkpoint.BEST, reason)
        return TrainResult(self.run_dir, self.epoch, self.step, loss, knn, speed, broken_total,
                           kept_epoch, reason)


def train(config: TrainConfig, resume: bool = False, show_progress: bool = True,
          asked: Mapping[str, Any] | None = None) -> TrainResult:
    """Train ``config`` (continuing a run in ``config.out`` when ``resume``; ``asked``: the
    settings the user gave, checked against the resumed run's, see
    :func:`~groco.training.trainer.run_state.check_resume_settings`)."""
    return Trainer(config, resume=resume, show_progress=show_progress, asked=asked).fit()
