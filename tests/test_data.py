"""groco.training.data: folder dataset, broken-file collate, reproducible loader."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from groco.training.data import ImageFolderDataset, collate_skip_broken, make_loader

COLOURS = {"cats": (200, 30, 30), "dogs": (30, 30, 200), "": (30, 200, 30)}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """cats/ 3 images, dogs/ 2 images + 1 broken, 1 unlabelled image in the root."""
    sizes = [(40, 30), (17, 50), (64, 64)]
    for label, n in (("cats", 3), ("dogs", 2), ("", 1)):
        (tmp_path / label).mkdir(exist_ok=True)
        for i in range(n):
            img = Image.new("RGB", sizes[i], COLOURS[label])
            img.save(tmp_path / label / f"{label or 'root'}{i}.png")
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (tmp_path / "dogs" / "notes.txt").write_text("ignored")
    return tmp_path


def test_dataset_shapes_and_labels(folder: Path) -> None:
    ds = ImageFolderDataset(folder, base_size=24)
    assert len(ds) == 7
    assert ds.classes == ["cats", "dogs"]
    names = [p.relative_to(folder).as_posix() for p in ds.files]
    assert names[0] == "cats/cats0.png" and names[-1] == "root0.png"
    assert ds.targets == [0, 0, 0, 1, 1, 1, -1]  # dogs/broken.jpg sorts before dogs/dogs0.png
    for i in (0, 4, 6):
        img, label, index = ds[i]
        assert img.dtype == torch.uint8 and img.shape == (3, 24, 24)
        assert label == ds.targets[i] and index == i
        colour = COLOURS[ds.classes[label] if label >= 0 else ""]
        assert img[:, 12, 12].tolist() == list(colour)


def test_broken_file_is_none_and_warned_once(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = ImageFolderDataset(folder, base_size=8)
    broken = [p.name for p in ds.files].index("broken.jpg")
    with caplog.at_level(logging.WARNING, logger="groco.training.data"):
        assert ds[broken] == (None, 1, broken)
        assert ds[broken][0] is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "broken.jpg" in warnings[0]


def test_collate_counts_broken(folder: Path) -> None:
    ds = ImageFolderDataset(folder, base_size=8)
    images, labels, indices, n_broken = collate_skip_broken([ds[i] for i in range(len(ds))])
    assert images.shape == (6, 3, 8, 8) and images.dtype == torch.uint8
    assert n_broken == 1
    assert labels.tolist() == [0, 0, 0, 1, 1, -1]
    assert indices.tolist() == [0, 1, 2, 4, 5, 6]
    images, labels, indices, n_broken = collate_skip_broken([(None, 0, 3), (None, -1, 5)])
    assert images.shape[0] == labels.numel() == indices.numel() == 0 and n_broken == 2


def test_subset_of_files_and_empty_folder(folder: Path, tmp_path_factory) -> None:
    files = [folder / "dogs" / "dogs1.png", folder / "root0.png"]
    ds = ImageFolderDataset(folder, base_size=8, files=files)
    assert ds.files == files and ds.classes == ["dogs"] and ds.targets == [0, -1]
    empty = tmp_path_factory.mktemp("empty")
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no images found"):
        ImageFolderDataset(empty, base_size=8)
    with pytest.raises(FileNotFoundError):
        ImageFolderDataset(empty / "missing", base_size=8)


def epoch_orders(loader, epochs: int = 2) -> list[list[int]]:
    orders = []
    for _ in range(epochs):
        order, broken = [], 0
        for images, labels, indices, n_broken in loader:
            assert images.shape[0] == labels.shape[0] == indices.shape[0]
            order += indices.tolist()
            broken += n_broken
        assert broken == 1  # the broken file, every epoch
        orders.append(order)
    return orders


def test_loader_is_reproducible(folder: Path) -> None:
    ds = ImageFolderDataset(folder, base_size=8)

    def loader(seed: int, workers: int = 0):
        return make_loader(ds, 3, workers, shuffle=True, seed=seed, drop_last=False)

    first = epoch_orders(loader(7))
    assert first == epoch_orders(loader(7))
    assert sorted(first[0]) == [i for i in range(7) if ds.files[i].name != "broken.jpg"]
    assert first[0] != first[1]  # a new permutation each epoch
    assert epoch_orders(loader(8)) != first
    # Workers decode, the main process draws the order: same batches with workers.
    with_workers = loader(7, workers=1)
    assert with_workers.persistent_workers
    assert epoch_orders(with_workers) == first

    plain = make_loader(ds, 4, 0, shuffle=False, seed=0, drop_last=True)
    assert [b[2].tolist() for b in plain] == [[0, 1, 2]]  # index 3 broken, 4..6 dropped
    with pytest.raises(ValueError, match="sampler"):
        make_loader(ds, 4, 0, shuffle=True, seed=0, drop_last=False, sampler=range(7))
