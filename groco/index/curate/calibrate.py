"""Duplicate thresholds calibrated for an index's own encoder and images.

A cosine threshold that separates copies from look-alikes depends on the encoder (raw
pixels put JPEG copies at 0.97+, the ImageNet Lite0 start near 0.9; BENCHMARKS.md,
"Near-duplicates"). So groco plants copies of a sample of the collection's own images,
embeds them with the index's encoder and reads where they land:

- ``jpeg`` (re-encoded at quality 70), ``smaller`` (0.75x the side) and ``larger`` (2x):
  the copies the *near* tier must hold. Its threshold ``t`` maximises
  ``copies(t) - look_alikes(t)`` (Youden's J), the share of these copies scoring ``>= t``
  with their original's stored vector less the share of the sampled originals whose
  nearest other item (from the neighbour graph) scores ``>= t``; the lowest such ``t``.
  Where copies stay far closer than any two images of the collection, that is just below
  the copies (every copy, few look-alikes); on tiny images, where a re-encode moves an
  embedding as far as the collection's look-alikes lie, it gives up the copies that a
  look-alike outscores rather than call most of the collection near copies; and never
  below the cosine that :data:`NEAR_LOOK_ALIKES` of the sampled images reach with their
  nearest other (J weighs a lost copy and an image with a look-alike alike, while copies
  are rare in a collection and look-alikes everywhere);
- ``crop`` (0.9x the side, off centre): measured and reported (``kinds``), not used for
  a threshold: how close a crop stays depends on the encoder far more than a re-encode
  does (BENCHMARKS.md, "Duplicate tiers").

The *similar* tier (look-alikes to review) starts at the cosine that only
:data:`SIMILAR_SHARE` of the sampled images reach with their nearest other item, never
above the near threshold: the review list holds about that share of the collection,
whatever the encoder's scale of cosines.

Beside the thresholds, the share of the sampled originals whose nearest other item (from
the neighbour graph) already scores at or above the near threshold: an upper bound on
how often a distinct look-alike would be called a near copy. Stored as
``calibration.json`` in the index directory, for the encoder it was made with.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from groco.fileio import atomic_write_text
from groco.images import ImageError, load_image

from .. import shards
from ..manifest import IndexDirError, check_encoder_hash
from ..neighbours import DEFAULT_K, NeighbourGraph, ensure_graph, read_graph
from ..store import DB_NAME, Store

NAME = "calibration.json"
SAMPLE = 200
"""Originals copies are planted from."""
NEAR_LOOK_ALIKES = 0.10
SIMILAR_SHARE = 0.25
NEAR_KINDS = ("jpeg", "smaller", "larger")


def _jpeg(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=70)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _scaled(image: Image.Image, factor: float) -> Image.Image:
    w, h = image.size
    return image.resize((max(1, round(w * factor)), max(1, round(h * factor))),
                        Image.BILINEAR)


def _crop(image: Image.Image) -> Image.Image:
    w, h = image.size
    cw, ch = max(1, round(w * 0.9)), max(1, round(h * 0.9))
    return image.crop((w - cw, 0, w, ch))  # the top-right 81 %


COPIES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg": _jpeg, "smaller": lambda im: _scaled(im, 0.75),
    "larger": lambda im: _scaled(im, 2.0), "crop": _crop}


@dataclass
class Calibration:
    """Thresholds for one encoder (module docstring)."""

    near: float
    similar: float
    sample: int
    encoder_hash: str
    look_alike_share: float
    """Sampled originals whose nearest other item (byte copies aside) scores >= ``near``."""
    kinds: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per copy kind: min, 2nd and 5th percentile and median cosine to the original."""
    made_at: str = ""

    def summary(self) -> str:
        kinds = ", ".join(f"{k} median {v['median']:.3f}" for k, v in self.kinds.items())
        return (f"calibrated on {self.sample} images: near copies >= {self.near:.4f}, "
                f"similar >= {self.similar:.4f} ({kinds}); {self.look_alike_share:.1%} of "
                "the sampled images have a distinct neighbour at or above the near "
                "threshold (at most that many false near pairs)")


def youden_threshold(positives: np.ndarray, negatives: np.ndarray) -> float:
    """The lowest ``t`` among the scores maximising ``mean(positives >= t) -
    mean(negatives >= t)``."""
    candidates = np.unique(np.concatenate([positives, negatives]).astype(np.float64))
    pos, neg = np.sort(positives), np.sort(negatives)
    kept = 1.0 - np.searchsorted(pos, candidates, side="left") / len(pos)
    false = 1.0 - np.searchsorted(neg, candidates, side="left") / max(len(neg), 1)
    j = kept - false
    return float(candidates[np.flatnonzero(j >= j.max() - 1e-12)[0]])


def read_calibration(index_dir: Path, encoder_hash: str | None = None) -> Calibration | None:
    """The stored calibration (``None`` without one, or one made for another encoder)."""
    try:
        data = json.loads((Path(index_dir) / NAME).read_text())
        found = Calibration(**data)
    except (OSError, ValueError, TypeError):
        return None
    if encoder_hash is not None and found.encoder_hash != encoder_hash:
        return None
    return found


def calibrate(index_dir: str | Path, sample: int = SAMPLE, seed: int = 0,
              encoder_path: str | Path | None = None, progress: bool = False) -> Calibration:
    """Plant copies of ``sample`` of the index's images, embed them with its encoder
    (``encoder_path``, default the recorded one; its hash must match) and store the
    thresholds (module docstring). Raises :class:`IndexDirError` when the images or the
    encoder cannot be read."""
    from groco.encoder.runtime import Encoder

    index_dir = Path(index_dir)
    ensure_graph(index_dir, DEFAULT_K, progress=progress, command="groco index dupes")
    graph = read_graph(index_dir)
    with Store(index_dir / DB_NAME, readonly=True) as store:
        info = store.info()
        ids, numbers, rows = store.embedded_locations()
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(ids), min(sample, len(ids)), replace=False))
        files = store.rows(ids[chosen].tolist())
    encoder = Encoder(encoder_path or info["encoder_path"])
    check_encoder_hash(info["encoder_hash"], encoder.hash, encoder.path, index_dir)
    root = Path(info["images_root"])
    originals, kept = [], []
    for position in chosen:
        row = files.get(int(ids[position]))
        try:
            originals.append(load_image(root / row.path))
        except (ImageError, OSError, AttributeError):
            continue  # moved or unreadable since it was indexed
        kept.append(position)
    if len(kept) < 10:
        raise IndexDirError(f"{index_dir}: only {len(kept)} of the sampled images could be "
                            f"read under {root}; calibration needs at least 10")
    kept = np.asarray(kept)
    stored = shards.gather(index_dir, numbers[kept], rows[kept])
    cosines = {}
    for kind, make in COPIES.items():
        copies = encoder.embed([make(image) for image in originals])
        cosines[kind] = np.einsum("ij,ij->i", copies, stored)
    near_all = np.concatenate([cosines[k] for k in NEAR_KINDS])
    nearest = _nearest_distinct(index_dir, graph, ids[kept])
    near = max(youden_threshold(near_all, nearest),
               float(np.quantile(nearest, 1.0 - NEAR_LOOK_ALIKES)))
    similar = min(near, float(np.quantile(nearest, 1.0 - SIMILAR_SHARE)))
    result = Calibration(
        near=round(near, 4), similar=round(similar, 4), sample=len(kept),
        encoder_hash=encoder.hash,
        look_alike_share=round(float((nearest >= near).mean()), 4),
        kinds={k: {"min": round(float(v.min()), 4),
                   "p02": round(float(np.quantile(v, 0.02)), 4),
                   "p05": round(float(np.quantile(v, 0.05)), 4),
                   "median": round(float(np.median(v)), 4)} for k, v in cosines.items()},
        made_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    atomic_write_text(index_dir / NAME, json.dumps(asdict(result), indent=1))
    return result


def _nearest_distinct(index_dir: Path, graph: NeighbourGraph, ids: np.ndarray) -> np.ndarray:
    """Each of ``ids``' cosine to its nearest other item that is not a byte copy of it
    (known by the content hash; -1 when the graph holds none)."""
    rows = np.searchsorted(graph.ids, ids)
    neighbours, scores = np.asarray(graph.neighbours[rows]), np.asarray(graph.scores[rows])
    with Store(index_dir / DB_NAME, readonly=True) as store:
        wanted = np.unique(np.concatenate([ids, neighbours[neighbours >= 0]]))
        hashes = {i: row.hash for i, row in store.rows(wanted.tolist()).items()}
    out = np.full(len(ids), -1.0)
    for n, own in enumerate(ids.tolist()):
        mine = hashes.get(own)
        for other, score in zip(neighbours[n].tolist(), scores[n].tolist(), strict=True):
            if other >= 0 and not (mine and hashes.get(other) == mine):
                out[n] = score
                break
    return out


def current_calibration(index_dir: str | Path) -> Calibration | None:
    """The stored calibration when it was made with the index's encoder, else ``None``."""
    index_dir = Path(index_dir)
    if not (index_dir / DB_NAME).is_file():
        return None
    with Store(index_dir / DB_NAME, readonly=True) as store:
        encoder_hash = store.info().get("encoder_hash")
    return read_calibration(index_dir, encoder_hash)
