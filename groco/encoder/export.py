"""Export a run's backbone to one self-describing ONNX file (fp32, fp16 or int8), checked.

The flow: read the run (its ``TrainConfig`` and weights), rebuild the backbone as an
:class:`EmbeddingModel`, trace it (:func:`groco.encoder.graph.to_onnx`), convert it
(:mod:`groco.encoder.quantize`), check it against PyTorch on real images of the run, and
write it atomically with its ``groco.*`` metadata (:func:`groco.encoder.graph.stamp`).
:func:`export_checked` is the check-and-write half, shared with the baseline encoders of
:mod:`groco.encoder.baselines`.

The graph takes float RGB in [0, 1], NCHW, at the trained ``image_size`` with a dynamic
batch axis; it applies ``(x - mean) / std``, runs the backbone and L2-normalises the pooled
features, so it returns unit vectors ``(N, embedding_dim)``. Everything a user of the file
needs is in ``metadata_props`` under ``groco.*`` keys, read back by
:class:`groco.encoder.runtime.Encoder`.

Checks: ``onnx.checker.check_model``; parity against the reference (PyTorch) on real
images of the run's data folder (fp32 max abs diff must be <= :data:`FP32_TOLERANCE`);
fp16 and int8 must agree with the fp32 model to a per-image cosine >= :data:`MIN_COSINE`
on images held out from int8 calibration. A failed check raises :class:`ExportError` and
writes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from groco.encoder.graph import (
    DEFAULT_OPSET,
    L2_EPS,
    ExportError,
    append_l2_normalisation,
    check,
    encoder_metadata,
    run,
    stamp,
    to_onnx,
)
from groco.encoder.quantize import to_fp16, to_int8
from groco.fileio import atomic_path
from groco.images import ImageError, find_images, load_image
from groco.preprocessing import Preprocessing
from groco.training import checkpoint
from groco.training.config import TrainConfig
from groco.training.models import (
    ARCHITECTURE_KEY,
    HUB_PREFIXES,
    IMAGE_SIZE_KEY,
    SMALL_STEM_KEY,
    build_backbone,
)

__all__ = ["FP32_TOLERANCE", "MIN_COSINE", "PRECISIONS", "EmbeddingModel", "ExportError",
           "ExportReport", "FeatureModel", "ImageSample", "cosines", "export_checked",
           "export_encoder", "export_untrained", "image_files", "load_embedding_model",
           "load_run_config", "sample_images"]

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


class FeatureModel(nn.Module):
    """``x`` in [0, 1] NCHW -> ``backbone((x - mean) / std)``: pooled features ``(N, D)``."""

    def __init__(self, backbone: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)


class EmbeddingModel(nn.Module):
    """The encoder in PyTorch: ``F.normalize(features(x), dim=1)``, i.e. ``f / max(|f|, 1e-12)``.

    ``features`` (a :class:`FeatureModel`) is what goes through torch.onnx; the
    normalisation is appended as plain ONNX nodes
    (:func:`groco.encoder.graph.append_l2_normalisation`) so fp16/int8 conversion never
    touches it.
    """

    def __init__(self, backbone: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.features = FeatureModel(backbone, mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(x), dim=1, eps=L2_EPS)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """``forward`` on a NumPy batch ``(N, 3, S, S)`` float32, without gradients."""
        with torch.no_grad():
            return self(torch.from_numpy(batch)).numpy()


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The run's settings as the :class:`TrainConfig` that wrote its ``config.yaml``.

    :class:`ExportError` (one line) for a directory that is not a run, or settings that are
    not a training configuration.
    """
    try:
        values = checkpoint.load_config(run_dir)
    except checkpoint.RunError as error:
        raise ExportError(str(error)) from error
    try:
        config = TrainConfig.from_dict(values)
        config.preprocessing  # noqa: B018 - checks image_size, eval_resize, mean and std
    except (TypeError, ValueError) as error:
        raise ExportError(f"{run_dir}: config.yaml is not a groco training config "
                          f"({' '.join(str(error).split())})") from None
    return config


def trained_network(run_dir: Path, config: TrainConfig, weights_file: str
                    ) -> tuple[str, int, bool | None]:
    """``(timm name, image size, small stem)`` of the network the run trained, from the facts
    its weights file records (:func:`groco.training.models.network_facts`), else from its
    config. A run that started from weights and records no stem cannot be rebuilt with
    certainty (the stem is chosen by the start): :class:`ExportError`."""
    facts = checkpoint.weights_metadata(run_dir, weights_file)
    name, image_size = config.backbone, config.image_size
    if facts.get(IMAGE_SIZE_KEY, str(image_size)) != str(image_size):
        raise ExportError(f"{run_dir}: {weights_file} was trained at "
                          f"{facts[IMAGE_SIZE_KEY]} px, config.yaml says {image_size}")
    if name.startswith(HUB_PREFIXES):
        if ARCHITECTURE_KEY not in facts:
            raise ExportError(f"{run_dir}: {weights_file} does not record which architecture "
                              f"{name!r} resolved to")
        name = facts[ARCHITECTURE_KEY]
    small_stem = config.small_stem
    if SMALL_STEM_KEY in facts:
        small_stem = facts[SMALL_STEM_KEY] == "true"
    elif small_stem is None and config.starts_from_weights:
        raise ExportError(f"{run_dir}: {weights_file} does not record the network's stem and "
                          "the run started from weights; retrain with this groco version")
    return name, image_size, small_stem


def load_embedding_model(run_dir: str | Path, weights_file: str = checkpoint.WEIGHTS,
                         ) -> tuple[EmbeddingModel, TrainConfig, int]:
    """Rebuild the network a run trained (:func:`trained_network`) with the ``backbone.*``
    weights of ``weights_file`` (:data:`groco.training.checkpoint.WEIGHTS` or ``BEST``), as
    an :class:`EmbeddingModel`.

    Returns ``(model in eval mode, the run's TrainConfig, embedding_dim)``;
    :class:`ExportError` for a config the backbone cannot be built from or weights that do
    not fit it.
    """
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    try:
        weights = checkpoint.load_weights(run_dir, prefix="backbone.", name=weights_file)
        name, image_size, small_stem = trained_network(run_dir, config, weights_file)
    except checkpoint.RunError as error:
        raise ExportError(str(error)) from error
    try:
        backbone, dim = build_backbone(name, image_size, small_stem=small_stem)
    except (ValueError, RuntimeError) as error:
        raise ExportError(f"{run_dir}: cannot build backbone {name!r}: {error}") from error
    if not weights:
        raise ExportError(f"{run_dir}: {weights_file} has no backbone.* weights")
    try:
        backbone.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ExportError(f"{run_dir}: {weights_file} does not fit {name!r} at {image_size} px "
                          f"({first})") from error
    preprocessing = config.preprocessing
    model = EmbeddingModel(backbone, list(preprocessing.mean), list(preprocessing.std))
    return model.eval(), config, dim


_TRACES: OrderedDict[str, bytes] = OrderedDict()
TRACES_MAX_BYTES = 512 * 2**20  # serialized graphs kept for re-export in one process


def traced(model: EmbeddingModel, image_size: int, opset: int = DEFAULT_OPSET,
           files: tuple[Path, ...] = ()) -> onnx.ModelProto:
    """:func:`to_onnx` of ``model.features``, reusing this process's last traces.

    Exporting one network at several precisions traces it once (tracing takes seconds);
    the most recent traces are kept while they add up to at most :data:`TRACES_MAX_BYTES`
    serialized (the newest always). The key is the sha256 of ``files`` (the weights file
    and config that made ``model``), the module's structure (its ``repr``: layers,
    strides), the image size, the opset and the torch version; without ``files`` nothing
    is cached.
    """
    if not files:
        return to_onnx(model.features, image_size, opset)
    digest = hashlib.sha256(f"{image_size} {opset} {torch.__version__}".encode())
    digest.update(repr(model.features).encode())
    for path in files:
        digest.update(str(path.name).encode())
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    key = digest.hexdigest()
    if key in _TRACES:
        _TRACES.move_to_end(key)
        return onnx.ModelProto.FromString(_TRACES[key])
    body = to_onnx(model.features, image_size, opset)
    _TRACES[key] = body.SerializeToString()
    while len(_TRACES) > 1 and sum(map(len, _TRACES.values())) > TRACES_MAX_BYTES:
        _TRACES.popitem(last=False)
    return body


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


def export_encoder(
    run_dir: str | Path,
    out_path: str | Path,
    precision: str = "fp32",
    calibration_images: int = 64,
    parity_images: int = 16,
    opset: int = DEFAULT_OPSET,
    data: str | Path | None = None,
    last: bool = False,
) -> ExportReport:
    """Export ``run_dir``'s backbone to ``out_path`` (written atomically) and check it.

    ``precision``: ``fp32``; ``fp16`` (weights and compute in fp16, float32 I/O); ``int8``.
    ``data``: the images for the parity check and int8 calibration (default: the run's
    ``data`` folder). The checks and their errors are :func:`export_checked`'s.

    Weights: the run's best epoch (``best.safetensors``) when it kept one, else the last
    (:func:`groco.training.checkpoint.export_choice`); ``last=True`` forces
    ``last.safetensors``. The report's ``weights`` line says which and why; the file's
    metadata names it (``groco.weights``).

    Raises :class:`ExportError` for a bad run directory, a failed export or check.
    """
    start = time.perf_counter()
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    run_dir = Path(run_dir)
    load_run_config(run_dir)  # a clear error for a directory that is not a run, first
    if last:
        weights_file = checkpoint.WEIGHTS
        reason = f"the last epoch ({weights_file}, as asked)"
    else:
        try:
            weights_file, reason = checkpoint.export_choice(run_dir)
        except checkpoint.RunError as error:
            raise ExportError(str(error)) from error
    model, config, dim = load_embedding_model(run_dir, weights_file)
    preprocessing = config.preprocessing
    log.info("exporting %s (%s, %d px) to ONNX", config.backbone, precision,
             preprocessing.image_size)
    body = traced(model, preprocessing.image_size, opset,
                  files=(run_dir / weights_file, run_dir / checkpoint.CONFIG))

    def metadata(precision: str) -> dict[str, str]:
        return encoder_metadata(preprocessing, dim, precision, config.backbone, config.method,
                                epochs=config.epochs, weights=weights_file)

    report = export_checked(
        body, out_path, model.embed, preprocessing, metadata, precision=precision,
        data=data if data is not None else config.data, parity_images=parity_images,
        calibration_images=calibration_images, weights=reason,
        trained=trained_embeddings(run_dir, weights_file))
    return _with_seconds(report, start)


def trained_embeddings(run_dir: Path, weights_file: str
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """The images a run's weights file stores and the trained network's embeddings of them
    (:data:`groco.training.checkpoint.PARITY_IMAGES`), as ``(float32 in [0, 1], float32)``;
    None for a file without them (written by an older groco or outside the trainer)."""
    stored = checkpoint.load_weights(run_dir, prefix=checkpoint.PARITY, name=weights_file)
    images = stored.get(checkpoint.PARITY_IMAGES[len(checkpoint.PARITY):])
    features = stored.get(checkpoint.PARITY_FEATURES[len(checkpoint.PARITY):])
    if images is None or features is None:
        return None
    return images.numpy().astype(np.float32) / 255.0, features.float().numpy()


def _with_seconds(report: ExportReport, start: float) -> ExportReport:
    return replace(report, seconds=time.perf_counter() - start)


def export_untrained(config: TrainConfig, run_dir: str | Path, out_path: str | Path,
                     seed: int = 0, **export_options: Any) -> ExportReport:
    """Write ``run_dir`` as a run of ``config`` whose weights are freshly initialised
    (``torch.manual_seed(seed)``, then ``build_model``) and export it like a trained one.

    The floor a trained encoder must beat, and an encoder for tests and benchmarks whose
    figures do not depend on the weights. ``export_options`` go to :func:`export_encoder`.
    """
    from groco.training.models import build_model, network_facts

    run_dir = Path(run_dir)
    config = config.resolved()
    torch.manual_seed(seed)
    model = build_model(config)
    config = config.with_network(model.backbone)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.save_config(run_dir, config.to_dict())
    checkpoint.save_weights(run_dir, model.state_dict(),
                            network_facts(model.backbone, config.image_size))
    return export_encoder(run_dir, out_path, **export_options)
