"""The monitor: how good the network is now, on the run's own images, and which epoch to
keep. Embeds un-augmented images through the exported encoder's preprocessing; scores
weighted k-NN top-1 (folder labels) and the label-free scores
(:mod:`groco.training.labelfree`); stores a few images with their features for the
export's parity check; decides the kept epoch (:func:`kept_record`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from groco.knn import class_indices, knn_accuracy
from groco.training import labelfree
from groco.training.augment import normalize_batch
from groco.training.checkpoint import PARITY_COUNT, PARITY_FEATURES, PARITY_IMAGES
from groco.training.config import TrainConfig
from groco.training.data import ImageFolderDataset, make_loader

Features = tuple[np.ndarray, list[str | None]]


class CopyTransform:
    """``(image, i) -> labelfree.augmented_copy(image, seed * 1_000_003 + i)``: the same
    copy of sample ``i`` at every epoch (a class, so data-loader workers can pickle it)."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def __call__(self, image, index: int):
        return labelfree.augmented_copy(image, self.seed * 1_000_003 + index)


class Monitor:
    """Scores the backbone of a network (an objective: ``.backbone``, ``.eval()``) on the
    run's images. ``files``/``targets``/``classes``: the collection as the trainer's
    dataset lists it; the label-free sample is fixed by the run's seed."""

    def __init__(self, config: TrainConfig, files: list[str], targets: list[int],
                 classes: list[str], device: torch.device, channels_last: bool,
                 autocast_dtype: torch.dtype | None, held_out: list[str] | None = None
                 ) -> None:
        self.config = config
        self.files, self.targets, self.classes = files, targets, classes
        self.held_out = list(held_out or [])
        """Labelled images of ``config.data`` the run does not train on: the k-NN queries
        when given (:mod:`groco.training.holdout`)."""
        self.device = device
        self.channels_last = channels_last
        self.autocast_dtype = autocast_dtype
        self.preprocessing = config.preprocessing
        self.score_files = [files[i] for i in labelfree.sample_indices(len(files),
                                                                       seed=config.seed)]
        self.parity_images = self._load_parity_images()

    def _batch(self, images: torch.Tensor) -> torch.Tensor:
        batch = normalize_batch(images.to(self.device), self.config.mean, self.config.std)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    @torch.no_grad()
    def embed_folder(self, network: nn.Module, root: str, files=None, transform=None
                     ) -> Features:
        """L2-normalised backbone features and class names of un-augmented images, cut by
        the exported encoder's :class:`~groco.preprocessing.Preprocessing`."""
        dataset = ImageFolderDataset(root, files=files, preprocessing=self.preprocessing,
                                     transform=transform)
        loader = make_loader(dataset, 256, self.config.workers, shuffle=False,
                             seed=0, drop_last=False)
        network.eval()
        features, labels = [], []
        for images, targets, _, _ in loader:
            if images.shape[0] == 0:
                continue
            with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                                enabled=self.autocast_dtype is not None):
                out = network.backbone(self._batch(images)).float()
            features.append(nn.functional.normalize(out, dim=1).cpu().numpy())
            labels += [dataset.classes[t] if t >= 0 else None for t in targets.tolist()]
        if not features:
            return np.zeros((0, 0), np.float32), []
        return np.concatenate(features), labels

    @property
    def scored_on(self) -> str:
        """What the k-NN figure's queries are, in words."""
        if self.held_out:
            return f"{len(self.held_out)} held-out images"
        if self.config.eval_data:
            return f"the images of {self.config.eval_data}"
        return "the trained images, leave-one-out"

    def labelled_files(self) -> list[str]:
        return [f for f, t in zip(self.files, self.targets, strict=True) if t >= 0]

    def embed_bank(self, network: nn.Module) -> Features:
        """Features and class names of the collection's labelled images (empty without)."""
        labelled = self.labelled_files()
        if not labelled:
            return np.zeros((0, 0), np.float32), []
        return self.embed_folder(network, self.config.data, labelled)

    def knn(self, network: nn.Module, bank: Features | None = None) -> float | None:
        """Weighted k-NN top-1 (k, T from the config) on backbone features, or None
        without labels. Queries (:attr:`scored_on`): the held-out images, or ``eval_data``,
        else leave-one-out on the bank (``bank``: the labelled images' features and class
        names, embedded when absent)."""
        if bank is None:
            bank = self.embed_bank(network)
        features, names = bank
        if not names or len(features) < 2:
            return None
        classes, labels = class_indices(names, self.classes)
        settings = {"k": self.config.knn_k, "temperature": self.config.knn_temperature,
                    "num_classes": len(classes)}
        if self.held_out:
            queries, query_names = self.embed_folder(network, self.config.data, self.held_out)
        elif self.config.eval_data:
            queries, query_names = self.embed_folder(network, self.config.eval_data)
        else:
            return knn_accuracy(features, labels, features, labels, exclude_self=True,
                                **settings)
        _, query_labels = class_indices(query_names, classes)
        keep = query_labels >= 0
        if not keep.any():
            return None
        return knn_accuracy(features, labels, queries[keep], query_labels[keep], **settings)

    def label_free_scores(self, network: nn.Module, originals: np.ndarray | None = None
                          ) -> dict[str, float]:
        """:func:`groco.training.labelfree.scores` on the run's fixed sample of images and
        their augmented copies (empty when fewer than 2 sample images decode).
        ``originals``: the sample's features when already embedded, in sample order."""
        if originals is None:
            originals, _ = self.embed_folder(network, self.config.data, self.score_files)
        copies, _ = self.embed_folder(network, self.config.data, self.score_files,
                                      transform=CopyTransform(self.config.seed))
        if len(originals) < 2 or len(originals) != len(copies):
            return {}
        return labelfree.scores(originals, copies)

    def evaluate(self, network: nn.Module) -> tuple[float | None, dict[str, float]]:
        """(k-NN top-1 or None, label-free scores) of the network as it is now. With
        labels the bank is embedded once: the label-free sample's originals are its rows
        (the same files through the same preprocessing)."""
        labelled = self.labelled_files()
        bank = self.embed_bank(network)
        knn = self.knn(network, bank)
        row_of = {f: i for i, f in enumerate(labelled)}
        originals = None
        if len(bank[0]) == len(labelled) and all(f in row_of for f in self.score_files):
            originals = bank[0][[row_of[f] for f in self.score_files]]
        return knn, self.label_free_scores(network, originals)

    def _load_parity_images(self) -> torch.Tensor:
        """Up to :data:`PARITY_COUNT` images of the scoring sample as the encoder sees them
        (uint8 ``(n, 3, S, S)``), stored with every checkpoint beside their features."""
        dataset = ImageFolderDataset(self.config.data, files=self.score_files[:PARITY_COUNT * 2],
                                     preprocessing=self.preprocessing)
        images = [dataset[i][0] for i in range(len(dataset))]
        images = [image for image in images if image is not None][:PARITY_COUNT]
        if not images:
            size = self.config.image_size
            return torch.zeros((0, 3, size, size), dtype=torch.uint8)
        return torch.stack(images)

    @torch.no_grad()
    def parity_tensors(self, network: nn.Module) -> dict[str, torch.Tensor]:
        """:data:`PARITY_IMAGES` and the unit-norm features the backbone gives them now, in
        float32 (no autocast, no TF32): what ``groco export`` checks its rebuilt network and
        ONNX file against (:data:`groco.encoder.checked.TRAINED_TOLERANCE`)."""
        if len(self.parity_images) == 0:
            return {}
        network.eval()
        with torch.autocast(self.device.type, enabled=False), \
                torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            out = network.backbone(self._batch(self.parity_images)).float()
        return {PARITY_IMAGES: self.parity_images,
                PARITY_FEATURES: nn.functional.normalize(out, dim=1).cpu()}


def kept_record(kept: dict[str, str] | None, epoch: int, method: str, knn: float | None,
                scores: dict[str, float], scored_on: str | None = None
                ) -> dict[str, str] | None:
    """The metadata of ``best.safetensors`` when epoch ``epoch`` beats the ``kept`` one
    (epoch 0 is kept first), else None. With labels, k-NN top-1 decides (any gain);
    without, the label-free :data:`~groco.training.labelfree.CRITERION` must gain more
    than :data:`~groco.training.labelfree.MARGIN`."""
    if knn is not None:
        criterion, value, margin = "knn_top1", knn, 0.0
    elif labelfree.CRITERION in scores:
        criterion, value = labelfree.CRITERION, scores[labelfree.CRITERION]
        margin = labelfree.MARGIN
    else:
        return None
    if (kept is not None and kept.get("criterion") == criterion
            and not labelfree.better(value, float(kept["score"]), margin)):
        return None
    start = float(kept["start_score"]) if kept else value
    what = "k-NN top-1" if criterion == "knn_top1" else f"label-free {criterion}"
    on = f" on {scored_on}" if criterion == "knn_top1" and scored_on else ""
    if epoch == 0:
        reason = f"the start, {what} {value:.4f}{on}"
    else:
        reason = f"best {what} {value:.4f}{on} (the start: {start:.4f})"
    return {"epoch": str(epoch), "criterion": criterion, "score": f"{value}",
            "start_score": f"{start}", "reason": reason, "method": method}
