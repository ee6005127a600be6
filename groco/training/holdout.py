"""Labelled images kept out of training, as the k-NN monitor's queries (``--holdout N``).

The monitor decides which epoch a run keeps. By default it scores leave-one-out on the
images the network trains on; with a holdout it scores images the run never trained on
against the trained ones: what a user's new queries meet. On Fashion-MNIST (4,000
images, 400 held out, the default fine-tune at 96 px, 3 seeds) the two chose epochs of the
same worth (precision@10 on 1,000 unseen queries +0.39 against +0.35 over the start, mean;
BENCHMARKS.md, "Which epoch to keep"), so it is a choice, not the default.

The split is a function of the file list and the seed alone, so a resumed run holds out
the same images: each class gives ``round(count * its share)`` images (at least one image
of a class stays in training), drawn by a generator seeded with ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
