"""Check an ONNX encoder and write it: parity with its reference on real images, the
low-precision conversions and their agreement, the metadata stamp, the atomic write.

Checks: ``onnx.checker.check_model``; parity against the reference (PyTorch, or a
baseline's NumPy formula) on real images of a data folder (fp32 max abs diff must be
<= :data:`FP32_TOLERANCE`); a run's export also against the features the trained network
gave the images its checkpoint stores (<= :data:`TRAINED_TOLERANCE`); fp16 and int8 must
agree with the fp32 model to a per-image cosine >= :data:`MIN_COSINE` on images held out
from int8 calibration. A failed check raises :class:`ExportError` and writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from groco.encoder.graph import ExportError, append_l2_normalisation, check, run, stamp
from groco.encoder.quantize import to_fp16, to_int8
from groco.fileio import atomic_path
from groco.images import ImageError, find_images, load_image
from groco.preprocessing import Preprocessing

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
FP32_TOLERANCE = 1e-4
"""Largest accepted |ONNX Runtime fp32 - reference| over the parity images' embeddings."""
TRAINED_TOLERANCE = 1e-3
"""Largest accepted |ONNX Runtime fp32 - the trained network| over the images a run's weights
file stores with the features its network gave them (:data:`groco.training.checkpoint.
PARITY_FEATURES`, float32 on the training device). Unit vectors from the same network agree
to about 1e-6 across CPU and GPU; a network rebuilt with another stem differs by 0.1 or more.
"""
MIN_COSINE = 0.99
"""Smallest accepted per-image cosine of an fp16/int8 encoder's embedding to the fp32
encoder's, on the parity images (held out from int8 calibration). Below it the export
refuses to write the file: at 0.99 a neighbour list barely changes (top-10 overlap >= 0.9
in tests/test_export.py), while int8 with 8-bit weights on a non-VNNI CPU gave 0.954 on the
test's vit_tiny and 0.870 on a trained vit_tiny (issue 14).
"""


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_checked` wrote and measured.

    ``max_abs_diff``: fp32 ONNX Runtime vs the reference (``reference``: PyTorch, or the
    NumPy formula of a baseline) on the parity images (measured for every precision).
    ``cosine_min``/``cosine_mean``: per-image cosine of the fp16/int8 model's embedding to
    the fp32 model's on the parity images (``None`` for fp32). ``parity_source`` and
    ``calibration_source`` say which images were used, ``parity_files`` and
    ``calibration_files`` name them (disjoint: int8 is checked on images it was not
    calibrated on; empty for random tensors / no calibration). ``weights``: which weights
    were exported and why (a line, or ``None``).
    """

    path: Path
    precision: str
    max_abs_diff: float
    cosine_min: float | None
    cosine_mean: float | None
    hash: str
    embedding_dim: int
    seconds: float
    parity_source: str
    calibration_source: str | None = None
    parity_files: tuple[Path, ...] = ()
    calibration_files: tuple[Path, ...] = ()
    reference: str = "PyTorch"
    weights: str | None = None
    trained_diff: float | None = None
    trained_images: int = 0

    def summary(self) -> str:
        """A few human-readable lines (what ``groco export`` prints)."""
        lines = [f"weights: {self.weights}"] if self.weights else []
        lines += [
            f"wrote {self.path} ({self.precision}, dim {self.embedding_dim}, "
            f"hash {self.hash}) in {self.seconds:.1f}s",
            f"parity vs {self.reference}: max abs diff {self.max_abs_diff:.2e} on "
            f"{self.parity_source}",
        ]
        if self.trained_diff is not None:
            lines.append(f"parity vs the trained network: max abs diff {self.trained_diff:.2e} "
                         f"on the {self.trained_images} images its checkpoint stores")
        if self.cosine_min is not None:
            lines.append(f"{self.precision} vs fp32: cosine min {self.cosine_min:.5f}, "
                         f"mean {self.cosine_mean:.5f}")
        if self.calibration_source:
            lines.append(f"int8 calibration: {self.calibration_source}")
        return "\n".join(lines)


def _pick_order(count: int, n: int, phase: float) -> list[int]:
    """Indices 0..count-1: ``n`` evenly spaced ones first, the rest after."""
    if count <= n:
        return list(range(count))
    first = sorted({min(count - 1, int((i + phase) * count / n)) for i in range(n)})
    chosen = set(first)
    return first + [i for i in range(count) if i not in chosen]


@dataclass(frozen=True)
class ImageSample:
    """Preprocessed images ``batch`` ``(k, 3, S, S)``, the ``files`` they came from (row
    order) and the ``skipped`` files that did not decode."""

    batch: np.ndarray
    files: tuple[Path, ...]
    skipped: tuple[Path, ...]
    folder: str

    def describe(self, what: str = "images") -> str:
        note = f", {len(self.skipped)} unreadable skipped" if self.skipped else ""
        return f"{len(self.files)} {what} from {self.folder}{note}"


def image_files(folder: str | Path | None) -> list[Path]:
    """The images under ``folder`` (sorted); empty when it is unset or not a directory."""
    if folder is None or not Path(folder).is_dir():
        return []
    return find_images(folder)


def sample_images(folder: str | Path | None, n: int, preprocessing: Preprocessing,
                  phase: float = 0.5, exclude: frozenset[Path] = frozenset(),
                  ) -> ImageSample | None:
    """Up to ``n`` preprocessed images of ``folder``, none of them in ``exclude``.

    Images are spread evenly over the sorted file list (so every subfolder is seen); a file
    that does not decode is skipped (logged) and the next candidate used. ``None`` when the
    folder is unset, gone, or holds no decodable image outside ``exclude``.
    """
    files = [f for f in image_files(folder) if f not in exclude]
    arrays, used, skipped = [], [], []
    for index in _pick_order(len(files), n, phase):
        if len(arrays) == n:
            break
        try:
            arrays.append(preprocessing.array(load_image(files[index])))
            used.append(files[index])
        except ImageError as error:
            skipped.append(files[index])
            log.warning("skipping %s", error)
    if not arrays:
        return None
    return ImageSample(np.stack(arrays), tuple(used), tuple(skipped), str(folder))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of ``a`` and ``b`` ``(N, D)`` -> ``(N,)``."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return (a * b).sum(axis=1)


def export_checked(
    body: onnx.ModelProto,
    out_path: str | Path,
    reference: Callable[[np.ndarray], np.ndarray],
    preprocessing: Preprocessing,
    metadata: Callable[[str], dict[str, str]],
    precision: str = "fp32",
    data: str | Path | None = None,
    parity_images: int = 16,
    calibration_images: int = 64,
    reference_name: str = "PyTorch",
    weights: str | None = None,
    trained: tuple[np.ndarray, np.ndarray] | None = None,
) -> ExportReport:
    """Convert ``body`` (``images -> features``, float32) to ``precision``, check, stamp, write.

    - ``reference(batch)``: the embeddings the encoder must give (e.g. the PyTorch model's).
    - ``metadata(precision)``: the ``groco.*`` entries (see
      :func:`groco.encoder.graph.encoder_metadata`).
    - Parity: up to ``parity_images`` images of ``data`` (preprocessed by
      ``preprocessing``) through ``reference`` and the fp32 ONNX model; a max abs diff
      above :data:`FP32_TOLERANCE` raises :class:`ExportError`. Without images in ``data``,
      random tensors are used and the report says so (not for int8).
    - ``int8`` (static QDQ, per-channel 7-bit weights, see
      :func:`groco.encoder.quantize.to_int8`) calibrates on up to ``calibration_images``
      other files of ``data`` than the parity images: these are held out (at most half the
      folder), so int8 needs two readable images at least.
    - fp16/int8: the per-image cosine to the fp32 model on the parity images must be
      >= :data:`MIN_COSINE`, else :class:`ExportError`.
    - ``trained``: ``(images (n, 3, S, S) in [0, 1], embeddings (n, D))`` the trained
      network gave; the fp32 model must reproduce them within :data:`TRAINED_TOLERANCE`, so
      a network rebuilt differently from the trained one (another stem, say) cannot pass.

    Nothing is written unless every check passes; the file is written atomically.
    """
    start = time.perf_counter()
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if parity_images < 1 or calibration_images < 1:
        raise ExportError("parity_images and calibration_images must be >= 1")
    size = preprocessing.image_size
    fp32 = append_l2_normalisation(body)
    check(fp32)

    files = image_files(data)
    # int8 calibrates on images of the folder too: the parity images are held out from it
    # (at most half the folder), so agreement is measured on images the quantiser never saw.
    n_parity = parity_images if precision != "int8" else min(parity_images, len(files) // 2)
    parity = sample_images(data, n_parity, preprocessing, phase=0.5) if n_parity else None
    if parity is None:
        if precision == "int8":
            raise ExportError(f"int8 needs calibration images and held-out images to check "
                              f"them, but data folder {data} has {len(files)} readable "
                              "image(s); pass another folder (groco export --data DIR)")
        batch = np.random.default_rng(0).random((parity_images, 3, size, size),
                                                dtype=np.float32)
        parity_source = f"{parity_images} random tensors (no images in data folder {data})"
        parity_files: tuple[Path, ...] = ()
        log.warning("parity check on random tensors: no images in data folder %s", data)
    else:
        batch, parity_files = parity.batch, parity.files
        parity_source = parity.describe("held-out images" if precision == "int8" else "images")
    expected = reference(batch)
    fp32_out = run(fp32, batch)
    max_abs_diff = float(np.abs(fp32_out - expected).max())
    if not max_abs_diff <= FP32_TOLERANCE:  # also catches NaN
        raise ExportError(f"ONNX fp32 output differs from {reference_name} by "
                          f"{max_abs_diff:.3g} (> {FP32_TOLERANCE:g}) on {parity_source}")

    trained_diff = None
    if trained is not None and len(trained[0]):
        trained_diff = float(np.abs(run(fp32, trained[0]) - trained[1]).max())
        if not trained_diff <= TRAINED_TOLERANCE:  # also catches NaN
            raise ExportError(
                f"the exported network is not the one the run trained: its embeddings of the "
                f"{len(trained[0])} images the checkpoint stores differ from the trained "
                f"network's by {trained_diff:.3g} (> {TRAINED_TOLERANCE:g})")

    final, calibration_source, calibration_files = fp32, None, ()
    if precision == "fp16":
        final = append_l2_normalisation(to_fp16(body))
    elif precision == "int8":
        assert parity is not None
        calib = sample_images(data, calibration_images, preprocessing, phase=0.0,
                              exclude=frozenset(parity.files + parity.skipped))
        if calib is None:
            raise ExportError(f"int8 needs calibration images besides the {len(parity.files)} "
                              f"held-out ones, but data folder {data} has no other readable "
                              "image; pass another folder (groco export --data DIR)")
        calibration_source = calib.describe("other images")
        calibration_files = calib.files
        final = append_l2_normalisation(to_int8(body, calib.batch))
    cosine_min = cosine_mean = None
    if precision != "fp32":
        agreement = cosines(run(final, batch), fp32_out)
        cosine_min, cosine_mean = float(agreement.min()), float(agreement.mean())
        if not cosine_min >= MIN_COSINE:  # also catches NaN
            raise ExportError(
                f"{precision} embeddings agree too poorly with fp32 to be written: cosine min "
                f"{cosine_min:.4f} < {MIN_COSINE} on {parity_source}; export fp32 instead")
        check(final, precision)

    digest = stamp(final, metadata(precision))
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        onnx.save_model(final, tmp)
    return ExportReport(
        path=out_path, precision=precision, max_abs_diff=max_abs_diff, cosine_min=cosine_min,
        cosine_mean=cosine_mean, hash=digest, embedding_dim=int(fp32_out.shape[1]),
        seconds=time.perf_counter() - start, parity_source=parity_source,
        calibration_source=calibration_source, parity_files=parity_files,
        calibration_files=calibration_files, reference=reference_name, weights=weights,
        trained_diff=trained_diff, trained_images=0 if trained is None else len(trained[0]),
    )
