"""Label-free quality scores of an embedding, for collections without labels (NumPy only).

Computed each epoch (epoch 0, the start, included) on a fixed sample of the collection's
own images, embedded with the exported encoder's preprocessing. ``Z`` is ``(n, d)`` of
L2-normalised rows.

- **copy retrieval** (:func:`copy_retrieval`): each sampled image ``x_i`` gets one
  deterministic augmented copy ``a(x_i)`` (a crop of 30-50 % of its area, resized back
  to its size, brightness times 0.7-1.3, re-encoded as JPEG at quality 40): the
  fraction of copies whose
  nearest sampled original (cosine) is their own, ``mean_i [argmax_j a_i . z_j == i]``.
  The search a user does, asked of the images' own copies: a collapsed or scrambled
  embedding cannot find them.
- **RankMe** (:func:`rankme`, Garrido et al., ICML 2023): ``exp(H(p))`` with
  ``p_k = s_k / sum s`` over the singular values ``s`` of ``Z``: the effective rank.
- **alpha-ReQ** (:func:`alpha_req`, Agrawal et al., NeurIPS 2022): the slope ``alpha`` of
  ``log eig_k ~ -alpha log k`` over the covariance eigenspectrum of ``Z``.
- **uniformity** (:func:`uniformity`, Wang & Isola, ICML 2020):
  ``log mean_{i != j} exp(-2 ||z_i - z_j||^2)`` (lower is more uniform).

Which of them decides which epoch is kept is :data:`CRITERION`, chosen by measuring each
score's rank agreement (Kendall tau) with k-NN accuracy (BENCHMARKS.md, "label-free
score"); the kept epoch must beat the start by :data:`MARGIN`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance

CRITERION = "copy_top1"
"""The score that chooses the kept epoch on an unlabelled collection (higher is better)."""
MARGIN = 0.01
"""A later epoch replaces the kept one only when its score is higher by more than this."""
SAMPLE_SIZE = 2000
"""Images in the fixed scoring sample (all of a smaller collection)."""
SCORES = ("copy_top1", "rankme", "alpha_req", "uniformity")


def sample_indices(count: int, size: int = SAMPLE_SIZE, seed: int = 0) -> np.ndarray:
    """A fixed, sorted sample of ``min(size, count)`` indices of ``count`` files."""
    if count <= size:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size, replace=False))


def augmented_copy(image: Image.Image, seed: int) -> Image.Image:
    """The deterministic copy of ``image`` (module docstring): crop, resize back, JPEG."""
    rng = np.random.default_rng(seed)
    w, h = image.size
    area = rng.uniform(0.3, 0.5)
    side_w, side_h = max(1, round(w * area ** 0.5)), max(1, round(h * area ** 0.5))
    left = int(rng.integers(0, w - side_w + 1))
    top = int(rng.integers(0, h - side_h + 1))
    crop = image.convert("RGB").crop((left, top, left + side_w, top + side_h))
    crop = crop.resize((w, h), Image.Resampling.BICUBIC)
    crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.7, 1.3))
    buffer = io.BytesIO()
    crop.save(buffer, format="JPEG", quality=40)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def copy_retrieval(originals: np.ndarray, copies: np.ndarray) -> float:
    """Fraction of rows ``i`` of ``copies`` whose most similar row of ``originals`` is ``i``."""
    if originals.shape != copies.shape or len(originals) == 0:
        raise ValueError(f"need two equal non-empty (n, d) arrays, got {originals.shape} "
                         f"and {copies.shape}")
    hits = 0
    for start in range(0, len(copies), 1024):
        sims = copies[start:start + 1024] @ originals.T
        hits += int((sims.argmax(axis=1) == np.arange(start, start + len(sims))).sum())
    return hits / len(copies)


def rankme(z: np.ndarray, eps: float = 1e-7) -> float:
    """``exp(-sum p_k log p_k)``, ``p_k = s_k / sum(s) + eps`` (RankMe's formula)."""
    s = np.linalg.svd(np.asarray(z, dtype=np.float64), compute_uv=False)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def alpha_req(z: np.ndarray) -> float:
    """Least-squares slope ``alpha`` of ``log eig_k = c - alpha log k`` over the nonzero
    covariance eigenvalues of ``z`` (centred), ``k = 1..``."""
    x = np.asarray(z, dtype=np.float64)
    x = x - x.mean(axis=0)
    eig = np.linalg.svd(x, compute_uv=False) ** 2 / max(1, len(x) - 1)
    eig = eig[eig > eig.max(initial=0.0) * 1e-12]
    if len(eig) < 2:
        return float("inf")
    k = np.log(np.arange(1, len(eig) + 1))
    slope = np.polyfit(k, np.log(eig), 1)[0]
    return float(-slope)


def uniformity(z: np.ndarray, t: float = 2.0) -> float:
    """``log mean_{i != j} exp(-t ||z_i - z_j||^2)`` on unit rows (Wang & Isola)."""
    x = np.asarray(z, dtype=np.float64)
    n = len(x)
    if n < 2:
        raise ValueError("uniformity needs at least 2 rows")
    sq = np.clip(2.0 - 2.0 * (x @ x.T), 0.0, None)
    off = ~np.eye(n, dtype=bool)
    return float(np.log(np.exp(-t * sq[off]).mean()))


def scores(originals: np.ndarray, copies: np.ndarray) -> dict[str, float]:
    """Every score of :data:`SCORES` for one epoch."""
    return {"copy_top1": copy_retrieval(originals, copies), "rankme": rankme(originals),
            "alpha_req": alpha_req(originals), "uniformity": uniformity(originals)}


def better(candidate: float, kept: float, margin: float = MARGIN) -> bool:
    """True when ``candidate`` beats the ``kept`` score clearly (by more than ``margin``)."""
    return candidate > kept + margin
