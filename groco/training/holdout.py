"""Labelled images kept out of training, as the k-NN monitor's queries.

The monitor decides which epoch a run keeps. Scored leave-one-out on the images the
network trains on, it rewards what training does to *those* images: on Fashion-MNIST at
96 px with the stride-1 stem, every seed of the default fine-tune raised that figure
(+0.8 to +1.2 k-NN) while search with 1,000 unseen queries fell (P@10 −1.1 to 0.0;
BENCHMARKS.md, "Training's share"). Scored on images the run never trained on, it
measures what a user's new queries meet.

The split is a function of the file list and the seed alone, so a resumed run holds out
the same images: each class gives ``round(count * its share)`` images (at least one image
of a class stays in training), drawn by a generator seeded with ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

AUTO_MIN_LABELLED = 1000
"""A labelled folder of at least this many images holds out :data:`AUTO_FRACTION` of them
when the run does not say (smaller ones are scored leave-one-out: a few hundred queries
are too few to rank epochs)."""
AUTO_FRACTION = 0.1
AUTO_MAX = 1000
"""Held-out images at most, by default (1,000 queries rank epochs to about a point)."""


def auto_count(labelled: int, classes: int) -> int:
    """How many images a folder with ``labelled`` images in ``classes`` classes holds out
    when the run does not say: none below :data:`AUTO_MIN_LABELLED` images or 2 classes."""
    if labelled < AUTO_MIN_LABELLED or classes < 2:
        return 0
    return min(AUTO_MAX, round(AUTO_FRACTION * labelled))


def split(targets: Sequence[int], count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(trained, held_out)``: sorted positions into ``targets`` (class index per image,
    ``-1`` unlabelled: always trained). Each class holds out ``round(count * n_c / n)`` of
    its ``n_c`` images (``n`` labelled in all), keeping at least one in training.
    ``ValueError`` when ``count`` is negative or not below the labelled images."""
    targets = np.asarray(targets, dtype=np.int64)
    labelled = int((targets >= 0).sum())
    if count < 0 or (count and count >= labelled):
        raise ValueError(f"cannot hold out {count} of {labelled} labelled images")
    held: list[np.ndarray] = []
    if count:
        rng = np.random.default_rng(seed)
        for label in np.unique(targets[targets >= 0]):
            members = np.flatnonzero(targets == label)
            take = min(round(count * len(members) / labelled), len(members) - 1)
            held.append(rng.choice(members, size=take, replace=False))
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    trained = np.setdiff1d(np.arange(len(targets)), held_out)
    return trained, held_out
