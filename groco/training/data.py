"""Image folder dataset and loader for training: decode on CPU workers, augment on device.

Each sample is the image decoded with :func:`groco.images.load_image` and brought to a
fixed ``base_size`` square by :func:`groco.images.resize_center_crop` (shorter side to
``base_size``, centre crop), as a uint8 tensor. The trainer moves uint8 batches to the
device and does the random crops and colour augmentations there. A file that fails to
decode is skipped by :func:`collate_skip_broken`, counted, and named once in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from groco.images import (
    IMAGE_EXTENSIONS,
    ImageError,
    find_images,
    label_of,
    load_image,
    resize_center_crop,
)
from groco.knn import class_indices
from groco.preprocessing import Preprocessing

log = logging.getLogger(__name__)

Sample = tuple[torch.Tensor | None, int, int]


class ImageFolderDataset(Dataset):
    """Images under ``root``; the label is the first-level subfolder name.

    Attributes:
        root: the folder.
        files: image paths (``find_images(root)`` unless given).
        classes: sorted names of the first-level subfolders that hold images.
        targets: per file, the index in ``classes``, or -1 for files directly in ``root``.

    ``dataset[i]`` is ``(image, label, i)``: ``image`` a uint8 tensor
    ``(3, base_size, base_size)``, or ``None`` when the file cannot be decoded (a warning
    naming the file is logged once per process).

    ``preprocessing`` (evaluation): images are cut by :meth:`Preprocessing.uint8` (the
    exported encoder's crop, ``base_size`` is its ``image_size``) instead of a
    ``base_size`` square. ``transform(image, i)``, if given, changes each decoded image
    before that (label-free scoring makes augmented copies with it).
    """

    def __init__(self, root: str | Path, base_size: int | None = None,
                 files: Sequence[Path] | None = None,
                 preprocessing: Preprocessing | None = None,
                 transform: Callable[[Image.Image, int], Image.Image] | None = None):
        base_size = preprocessing.image_size if preprocessing is not None else base_size
        if base_size is None or base_size < 1:
            raise ValueError(f"base_size must be >= 1, got {base_size}")
        self.root = Path(root)
        self.base_size = int(base_size)
        self.preprocessing = preprocessing
        self.transform = transform
        self.files = list(find_images(self.root) if files is None else (Path(f) for f in files))
        if not self.files:
            exts = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
            raise ValueError(f"no images found under {self.root} (looked for: {exts})")
        classes, targets = class_indices([label_of(f, self.root) for f in self.files])
        self.classes: list[str] = classes
        self.targets: list[int] = targets.tolist()
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Sample:
        try:
            image = load_image(self.files[i])
        except ImageError as err:
            if i not in self._warned:
                self._warned.add(i)
                log.warning("skipping unreadable image %s", err)
            return None, self.targets[i], i
        if self.transform is not None:
            image = self.transform(image, i)
        if self.preprocessing is not None:
            array = self.preprocessing.uint8(image)
        else:
            array = np.array(resize_center_crop(image, self.base_size), dtype=np.uint8)
        return torch.from_numpy(array).permute(2, 0, 1).contiguous(), self.targets[i], i


def collate_skip_broken(
    batch: Sequence[Sample],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Stack the decodable samples; count the broken ones (image ``None``).

    Returns ``(images uint8 (N, 3, S, S), labels int64 (N,), indices int64 (N,),
    n_broken)``. When every sample is broken, ``images`` has shape ``(0, 3, 0, 0)``.
    """
    good = [s for s in batch if s[0] is not None]
    n_broken = len(batch) - len(good)
    if not good:
        empty = torch.empty(0, dtype=torch.int64)
        return torch.empty((0, 3, 0, 0), dtype=torch.uint8), empty, empty.clone(), n_broken
    images = torch.stack([s[0] for s in good])
    labels = torch.tensor([s[1] for s in good], dtype=torch.int64)
    indices = torch.tensor([s[2] for s in good], dtype=torch.int64)
    return images, labels, indices, n_broken


def make_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    shuffle: bool,
    seed: int,
    drop_last: bool,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A ``DataLoader`` with :func:`collate_skip_broken` and a reproducible order.

    With ``shuffle``, a ``RandomSampler`` draws the order from its own ``torch.Generator``
    seeded with ``seed`` (a fresh permutation each epoch): two loaders built with the same
    seed yield the same sequence of batches, epoch after epoch, whatever the number of
    workers. The loader's ``generator`` (worker seeds) is a second one seeded with
    ``seed``. Pinned memory when CUDA is available; persistent workers when
    ``workers > 0``. ``sampler`` replaces shuffling (pass ``shuffle=False`` with it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if sampler is not None and shuffle:
        raise ValueError("give either a sampler or shuffle=True, not both")
    if shuffle:
        # Not DataLoader(shuffle=True): that sampler shares the loader's generator, which
        # each new iterator also draws worker seeds from, so the order of later epochs
        # would depend on whether workers are persistent.
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skip_broken,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=workers > 0,
        generator=generator,
    )
