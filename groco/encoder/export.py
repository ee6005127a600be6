"""Export a run's backbone to one self-describing ONNX file (fp32, fp16 or int8), checked.

The flow: read the run (its ``TrainConfig`` and weights), rebuild the backbone as an
:class:`EmbeddingModel`, trace it (:func:`groco.encoder.graph.to_onnx`), convert it
(:mod:`groco.encoder.quantize`), check it against PyTorch on real images of the run, and
write it atomically with its ``groco.*`` metadata (:func:`groco.encoder.graph.stamp`).
The check-and-write half, :func:`groco.encoder.checked.export_checked`, is shared with the
baseline encoders of :mod:`groco.encoder.baselines`.

The graph takes float RGB in [0, 1], NCHW, at the trained ``image_size`` with a dynamic
batch axis; it applies ``(x - mean) / std``, runs the backbone and L2-normalises the pooled
features, so it returns unit vectors ``(N, embedding_dim)``. Everything a user of the file
needs is in ``metadata_props`` under ``groco.*`` keys, read back by
:class:`groco.encoder.runtime.Encoder`.

The checks (:func:`groco.encoder.checked.export_checked`): parity with the rebuilt PyTorch
network on real images of the run and with the features the trained network gave the
images its checkpoint stores; fp16/int8 agreement. A failed check writes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from groco.encoder.checked import PRECISIONS, ExportReport, export_checked
from groco.encoder.graph import (
    DEFAULT_OPSET,
    L2_EPS,
    ExportError,
    encoder_metadata,
    to_onnx,
)
from groco.training import checkpoint
from groco.training.config import TrainConfig
from groco.training.models import (
    ARCHITECTURE_KEY,
    HUB_PREFIXES,
    IMAGE_SIZE_KEY,
    POOL_KEY,
    SMALL_STEM_KEY,
    build_backbone,
)

__all__ = ["EmbeddingModel", "ExportError", "FeatureModel", "export_encoder",
           "export_untrained", "load_embedding_model", "load_run_config", "trained_embeddings",
           "trained_network"]

log = logging.getLogger(__name__)


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
                    ) -> tuple[str, int, bool | None, str]:
    """``(timm name, image size, small stem, global pooling)`` of the network the run
    trained, from the facts its weights file records
    (:func:`groco.training.models.network_facts`), else from its config (a file without a
    pooling fact predates the choice: ``avg``). A run that started from weights and records
    no stem cannot be rebuilt with certainty (the stem is chosen by the start):
    :class:`ExportError`."""
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
    return name, image_size, small_stem, facts.get(POOL_KEY, config.pool)


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
        name, image_size, small_stem, pool = trained_network(run_dir, config, weights_file)
    except checkpoint.RunError as error:
        raise ExportError(str(error)) from error
    try:
        backbone, dim = build_backbone(name, image_size, small_stem=small_stem, pool=pool)
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

    pool = getattr(model.features.backbone, "groco_pool", "avg")

    def metadata(precision: str) -> dict[str, str]:
        return encoder_metadata(preprocessing, dim, precision, config.backbone, config.method,
                                pool, epochs=config.epochs, weights=weights_file)

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
