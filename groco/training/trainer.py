"""`groco train`: one readable loop from an image folder to a run directory.

decode on CPU workers (uint8) → augment on the device (``MultiViewAugment``) → backbone +
projector on all views at once → loss → step; per step LR (warm-up + cosine); per epoch
a k-NN monitor (when the folder has labels), ``metrics.csv``, TensorBoard and an atomic
checkpoint. Under ``torchrun`` each process trains on its shard with DDP and the losses
gather negatives from every rank.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from groco.knn import class_indices, knn_accuracy
from groco.training import checkpoint, labelfree
from groco.training.augment import MultiViewAugment, normalize_batch
from groco.training.checkpoint import PARITY, PARITY_COUNT, PARITY_FEATURES, PARITY_IMAGES
from groco.training.config import TrainConfig
from groco.training.data import ImageFolderDataset, make_loader
from groco.training.distributed import is_distributed, rank, world_size
from groco.training.methods import Objective, build_objective, get_method
from groco.training.models import build_model, is_vit, network_facts
from groco.training.optim import build_optimizer, learning_rate

log = logging.getLogger("groco.train")

METRICS = checkpoint.METRICS
METRIC_FIELDS = ["epoch", "step", "loss", "lr", "images_per_s", "broken", "knn_top1",
                 *labelfree.SCORES, "kept", "seconds"]


class TrainError(ValueError):
    """A run that cannot start: bad data, bad settings, an existing run without --resume."""


def check_resume_settings(run_dir: Path, saved: TrainConfig, asked: Mapping[str, Any]) -> None:
    """Refuse (:class:`TrainError`, one line) to resume ``run_dir`` when a setting ``asked``
    for differs from the run's saved one: a resumed run repeats the uninterrupted one, so it
    keeps its own settings (the LR schedule spans its ``epochs``). Training longer is a new
    run from its weights, which the message gives."""
    values = {**asked}
    for key in ("data", "eval_data", "weights", "pretrained_file"):
        if values.get(key) is not None:
            values[key] = str(Path(values[key]).expanduser().resolve())
    differ = [(key, value) for key, value in values.items()
              if value is not None and getattr(saved, key, value) != value]
    if not differ:
        return
    key, value = differ[0]
    flag = "IMAGES" if key == "data" else "--" + key.replace("_", "-")
    more = f" (and {len(differ) - 1} more)" if len(differ) > 1 else ""
    longer = (f"; to train longer, start a new run from its weights: groco train IMAGES "
              f"--out NEW --weights {run_dir / checkpoint.BEST} --epochs {value}"
              if key == "epochs" else "")
    raise TrainError(f"--resume continues {run_dir} with its own settings, and {flag} {value} "
                     f"differs from its {getattr(saved, key)}{more}{longer}")


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


def _init_distributed(device_name: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo")


class Trainer:
    """Holds a run's pieces; ``fit()`` trains to ``config.epochs`` and returns the result."""

    def __init__(self, config: TrainConfig, resume: bool = False, show_progress: bool = True,
                 asked: Mapping[str, Any] | None = None):
        """``resume``: continue the run in ``config.out`` with its saved settings; ``asked``
        (the settings a user gave, e.g. on the command line) must agree with them."""
        _init_distributed(config.device)
        self.run_dir = Path(config.out)
        saved = self.run_dir / checkpoint.CONFIG
        if resume and saved.is_file():
            config = TrainConfig.from_dict(checkpoint.load_config(self.run_dir))
            check_resume_settings(self.run_dir, config, asked or {})
        elif not resume and (self.run_dir / checkpoint.STATE).exists():
            raise TrainError(f"{self.run_dir} already holds a run; pass --resume to continue it "
                             "or choose another --out")
        self.config = config = config.resolved()
        self.device = pick_device(config.device)
        self.show_progress = show_progress and rank() == 0
        torch.manual_seed(config.seed)  # same initial weights on every rank

        self.dataset = ImageFolderDataset(config.data, config.base_size)
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
        if config.trainable_stages:
            for stage in backbone_stages(model.backbone)[:-config.trainable_stages]:
                for param in stage:
                    param.requires_grad_(False)
        self.trainable_backbone = [p for p in model.backbone.parameters() if p.requires_grad]
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
        self.epoch = self.step = 0
        self.eval_preprocessing = config.preprocessing
        self.score_files = [self.dataset.files[i] for i in
                            labelfree.sample_indices(len(self.dataset), seed=config.seed)]
        self.kept: dict[str, str] | None = None  # metadata of best.safetensors
        self._last_scores: tuple[float | None, dict[str, float]] | None = None
        self.metrics: list[dict] = []  # rows of the finished epochs, as in metrics.csv
        self.restored = False
        self.parity_images = self._load_parity_images()
        if resume:
            self._restore()

    # ----------------------------------------------------------------------------- state
    def _generation(self, row: dict, best: bool) -> checkpoint.Generation:
        """This moment of the run as one checkpoint generation (``best``: this epoch is the
        kept one). The optimiser state is split into its tensors and the rest (JSON)."""
        opt = self.optimizer.state_dict()
        tensors, scalars = {}, {}
        for index, values in opt["state"].items():
            scalars[str(index)] = {}
            for key, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"optimizer.{index}.{key}"] = value
                else:
                    scalars[str(index)][key] = value
        state = {"epoch": self.epoch, "step": self.step, "rank_count": world_size(),
                 "param_groups": opt["param_groups"], "optimizer_scalars": scalars,
                 "last_scores": self._last_scores}
        weights = {**self.objective.state_dict(), **self._parity_tensors()}
        facts = self._network_facts()
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
        weights = {k: v for k, v in restored.weights.items() if not k.startswith(PARITY)}
        self.objective.load_state_dict(weights)
        opt_state: dict = {}
        for key, value in restored.state_tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                opt_state.setdefault(int(index), {})[name] = value.to(self.device)
        for index, scalars in state["optimizer_scalars"].items():
            opt_state.setdefault(int(index), {}).update(scalars)
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        self.epoch, self.step = state["epoch"], state["step"]
        self.restored = True
        scores = state.get("last_scores")
        self._last_scores = None if scores is None else (scores[0], dict(scores[1]))
        self.kept = restored.best_metadata
        self.metrics = restored.metrics
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
        progress = tqdm(total=self.steps_per_epoch * global_batch, unit="img",
                        desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
                        disable=not self.show_progress, dynamic_ncols=True, mininterval=1.0)
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
    @torch.no_grad()
    def embed_folder(self, root: str, files=None, transform=None
                     ) -> tuple[np.ndarray, list[str | None]]:
        """L2-normalised backbone features and class names of un-augmented images, cut by
        the exported encoder's :class:`~groco.preprocessing.Preprocessing`."""
        dataset = ImageFolderDataset(root, files=files, preprocessing=self.eval_preprocessing,
                                     transform=transform)
        loader = make_loader(dataset, 256, self.config.workers, shuffle=False,
                             seed=0, drop_last=False)
        self.objective.eval()
        features, labels = [], []
        for images, targets, _, _ in loader:
            if images.shape[0] == 0:
                continue
            batch = normalize_batch(images.to(self.device), self.config.mean, self.config.std)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                                enabled=self.autocast_dtype is not None):
                out = self.objective.backbone(batch).float()
            features.append(nn.functional.normalize(out, dim=1).cpu().numpy())
            labels += [dataset.classes[t] if t >= 0 else None for t in targets.tolist()]
        if not features:
            return np.zeros((0, 0), np.float32), []
        return np.concatenate(features), labels

    def knn_monitor(self, bank: tuple[np.ndarray, list[str | None]] | None = None
                    ) -> float | None:
        """Weighted k-NN top-1 (k, T from the config) on backbone features, or None
        without labels. Queries: ``eval_data`` when given, else leave-one-out on the bank
        (``bank``: the labelled images' features and class names, embedded when absent)."""
        if bank is None:
            bank = self.embed_bank()
        features, names = bank
        if not names:
            return None
        classes, labels = class_indices(names, self.dataset.classes)
        settings = {"k": self.config.knn_k, "temperature": self.config.knn_temperature,
                    "num_classes": len(classes)}
        if len(features) < 2:
            return None
        if not self.config.eval_data:
            return knn_accuracy(features, labels, features, labels, exclude_self=True,
                                **settings)
        queries, query_names = self.embed_folder(self.config.eval_data)
        _, query_labels = class_indices(query_names, classes)
        keep = query_labels >= 0
        if not keep.any():
            return None
        query_labels = query_labels[keep]
        return knn_accuracy(features, labels, queries[keep], query_labels, **settings)

    def embed_bank(self) -> tuple[np.ndarray, list[str | None]]:
        """Features and class names of the collection's labelled images (empty without)."""
        labelled = self.labelled_files()
        if not labelled:
            return np.zeros((0, 0), np.float32), []
        return self.embed_folder(self.config.data, labelled)

    def labelled_files(self) -> list[str]:
        return [f for f, t in zip(self.dataset.files, self.dataset.targets, strict=True)
                if t >= 0]

    def label_free_scores(self, originals: np.ndarray | None = None) -> dict[str, float]:
        """:func:`groco.training.labelfree.scores` on the run's fixed sample of images and
        their augmented copies (empty when fewer than 2 sample images decode).
        ``originals``: the sample's features when already embedded, in sample order."""
        if originals is None:
            originals, _ = self.embed_folder(self.config.data, self.score_files)
        copies, _ = self.embed_folder(self.config.data, self.score_files,
                                      transform=CopyTransform(self.config.seed))
        if len(originals) < 2 or len(originals) != len(copies):
            return {}
        return labelfree.scores(originals, copies)

    def evaluate(self) -> tuple[float | None, dict[str, float]]:
        """(k-NN top-1 or None, label-free scores) of the network as it is now. With
        labels the bank is embedded once: the label-free sample's originals are its rows
        (the same files through the same preprocessing)."""
        labelled = self.labelled_files()
        bank = self.embed_bank()
        knn = self.knn_monitor(bank)
        row_of = {f: i for i, f in enumerate(labelled)}
        originals = None
        if len(bank[0]) == len(labelled) and all(f in row_of for f in self.score_files):
            originals = bank[0][[row_of[f] for f in self.score_files]]
        return knn, self.label_free_scores(originals)

    def _network_facts(self) -> dict[str, str]:
        """What rebuilds exactly this network (its stem, size, architecture): stored with
        every weights file, read by ``groco export`` and a later ``--weights`` start."""
        return network_facts(self.objective.backbone, self.config.image_size)

    def _load_parity_images(self) -> torch.Tensor:
        """Up to :data:`PARITY_COUNT` images of the scoring sample as the encoder sees them
        (uint8 ``(n, 3, S, S)``), stored with every checkpoint beside their features."""
        dataset = ImageFolderDataset(self.config.data, files=self.score_files[:PARITY_COUNT * 2],
                                     preprocessing=self.eval_preprocessing)
        images = [dataset[i][0] for i in range(len(dataset))]
        images = [image for image in images if image is not None][:PARITY_COUNT]
        if not images:
            return torch.zeros((0, 3, self.config.image_size, self.config.image_size),
                               dtype=torch.uint8)
        return torch.stack(images)

    @torch.no_grad()
    def _parity_tensors(self) -> dict[str, torch.Tensor]:
        """:data:`PARITY_IMAGES` and the unit-norm features the backbone gives them now, in
        float32 (no autocast, no TF32): what ``groco export`` checks its rebuilt network and
        ONNX file against (:data:`groco.encoder.export.TRAINED_TOLERANCE`)."""
        if len(self.parity_images) == 0:
            return {}
        self.objective.eval()
        batch = normalize_batch(self.parity_images.to(self.device), self.config.mean,
                                self.config.std)
        with torch.autocast(self.device.type, enabled=False), \
                torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            out = self.objective.backbone(batch).float()
        return {PARITY_IMAGES: self.parity_images,
                PARITY_FEATURES: nn.functional.normalize(out, dim=1).cpu()}

    def _keep_if_best(self, knn: float | None, scores: dict[str, float]) -> bool:
        """Make this epoch the kept one (``best.safetensors`` of its checkpoint) when it
        beats the kept one (epoch 0 is kept first). With labels, k-NN top-1 decides (any
        gain); without, the label-free :data:`~groco.training.labelfree.CRITERION` must gain
        more than its margin."""
        if knn is not None:
            criterion, value, margin = "knn_top1", knn, 0.0
        elif labelfree.CRITERION in scores:
            criterion, value = labelfree.CRITERION, scores[labelfree.CRITERION]
            margin = labelfree.MARGIN
        else:
            return False
        kept = self.kept
        if (kept is not None and kept.get("criterion") == criterion
                and not labelfree.better(value, float(kept["score"]), margin)):
            return False
        start = float(kept["start_score"]) if kept else value
        what = "k-NN top-1" if criterion == "knn_top1" else f"label-free {criterion}"
        if self.epoch == 0:
            reason = f"the start, {what} {value:.4f}"
        else:
            reason = f"best {what} {value:.4f} (the start: {start:.4f})"
        self.kept = {"epoch": str(self.epoch), "criterion": criterion, "score": f"{value}",
                     "start_score": f"{start}", "reason": reason,
                     "method": self.config.method}
        return True

    def _epoch_row(self, loss: float | None, speed: float | None, broken: int,
                   knn: float | None, scores: dict[str, float], kept: bool,
                   seconds: float) -> dict:
        row = {"epoch": self.epoch, "step": self.step,
               "loss": "" if loss is None else f"{loss:.6f}",
               "lr": f"{self.optimizer.param_groups[0]['lr']:.6g}",
               "images_per_s": "" if speed is None else f"{speed:.1f}", "broken": broken,
               "knn_top1": "" if knn is None else f"{knn:.4f}",
               "kept": int(kept), "seconds": f"{seconds:.1f}"}
        row.update({name: f"{scores[name]:.6g}" if name in scores else ""
                    for name in labelfree.SCORES})
        return row

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
        if evaluate and self._last_scores is not None and self._backbone_was_frozen():
            knn, scores = self._last_scores  # the exported features are those scored
        elif evaluate:
            knn, scores = self.evaluate()
            kept = self._keep_if_best(knn, scores)
            self._last_scores = (knn, scores)
        row = self._epoch_row(loss, speed, broken, knn, scores, kept,
                              time.perf_counter() - started)
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
        writer = _tensorboard(self.run_dir) if rank() == 0 else None
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


class CopyTransform:
    """``(image, i) -> labelfree.augmented_copy(image, seed * 1_000_003 + i)``: the same
    copy of sample ``i`` at every epoch (a class, so data-loader workers can pickle it)."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def __call__(self, image, index: int):
        return labelfree.augmented_copy(image, self.seed * 1_000_003 + index)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but logging must never stop training
        log.warning("tensorboard is not installed; writing metrics.csv only")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def train(config: TrainConfig, resume: bool = False, show_progress: bool = True,
          asked: Mapping[str, Any] | None = None) -> TrainResult:
    """Train ``config`` (continuing a run in ``config.out`` when ``resume``; ``asked``: the
    settings the user gave, checked against the resumed run's, see
    :func:`check_resume_settings`)."""
    return Trainer(config, resume=resume, show_progress=show_progress, asked=asked).fit()
