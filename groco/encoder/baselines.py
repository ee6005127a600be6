"""Baseline encoders: what a user has without groco, as ONNX encoders like any other.

Every quality figure carries its baselines (DESIGN.md, "Quality is a comparison"), so each
is an encoder file the index accepts like a trained one: the same input contract (float
RGB in [0, 1], NCHW), the same ``groco.*`` metadata with its hash and
:class:`groco.preprocessing.Preprocessing`, L2-normalised output, and the same checks and
atomic write (:func:`groco.encoder.export.export_checked`).

- :func:`export_raw_pixels`: the image itself, resized, as the embedding.
- :func:`export_backbone`: a timm network as it is, without a run: ImageNet-pretrained
  (``method = pretrained``), from a local weights file (``weights``) or freshly
  initialised (``untrained``), with the network's own mean/std (timm's ``pretrained_cfg``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from groco.encoder.checked import ExportReport, export_checked
from groco.encoder.graph import (
    DEFAULT_OPSET,
    FEATURES_NAME,
    INPUT_NAME,
    L2_EPS,
    ExportError,
    encoder_metadata,
)
from groco.preprocessing import Preprocessing

log = logging.getLogger(__name__)

RAW_PIXELS = "raw-pixels"
"""``groco.backbone`` and ``groco.method`` of the raw-pixel encoder."""

RAW_PIXELS_CENTRE = True
"""Whether :func:`export_raw_pixels` subtracts each image's mean before normalising.

Chosen by measuring (``python benchmarks/raw_pixels.py``, 2026-12-02, 2-core AVX2 EPYC;
weighted k-NN with :mod:`groco.knn`'s protocol values, cosine, through this ONNX encoder
at the images' native size): Fashion-MNIST (60k training images as the bank, the 10k test
images as queries, 28 px) top-1 85.18 % with per-image centring against 84.59 % without;
scikit-learn's digits (1797 images leave-one-out, 8 px) 98.44 % against 98.27 %. Centring
drops each image's overall brightness, which says little about what it shows, so it is on.
"""


def raw_pixel_preprocessing(size: int) -> Preprocessing:
    """``Preprocessing(size, size)`` with mean 0 and std 1: the graph normalises nothing
    but the vector, so the metadata says so."""
    return Preprocessing(size, size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def raw_pixel_embeddings(batch: np.ndarray, centre: bool = RAW_PIXELS_CENTRE) -> np.ndarray:
    """The raw-pixel embedding in NumPy, for preprocessed images ``(N, 3, S, S)`` in [0, 1]::

        v = flatten(x)                      # (N, 3 S^2), channels first
        v = v - mean(v)        (centre)     # each image's own mean over all its values
        e = v / max(|v|_2, 1e-12)
    """
    flat = np.asarray(batch, dtype=np.float32).reshape(len(batch), -1)
    if centre:
        flat = flat - flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.maximum(norm, np.float32(L2_EPS))


def raw_pixel_network(centre: bool = RAW_PIXELS_CENTRE):
    """:func:`raw_pixel_embeddings` before its L2 step as a ``torch.nn.Module`` on
    preprocessed ``(N, 3, S, S)`` batches (``flatten``, then ``- mean`` when ``centre``):
    the raw-pixel encoder in the shape the training monitor scores a backbone."""
    import torch
    from torch import nn

    class RawPixels(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            flat = x.flatten(1)
            return flat - flat.mean(dim=1, keepdim=True) if centre else flat

    return RawPixels()


def raw_pixel_body(size: int, centre: bool = RAW_PIXELS_CENTRE,
                   opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The body ``images (batch, 3, S, S) -> features (batch, 3 S^2)`` of the raw-pixel
    encoder, written with ``onnx.helper``: ``Flatten``, then (``centre``) ``Sub`` of
    ``ReduceMean`` over axis 1. :func:`groco.encoder.graph.append_l2_normalisation`
    completes :func:`raw_pixel_embeddings`'s formula."""
    if size < 1:
        raise ExportError(f"raw-pixel size must be >= 1, got {size}")
    dim = 3 * size * size
    nodes = [helper.make_node("Flatten", [INPUT_NAME], ["flat" if centre else FEATURES_NAME],
                              name="raw_flatten", axis=1)]
    initializers = []
    if centre:
        initializers.append(onnx.numpy_helper.from_array(np.array([1], dtype=np.int64),
                                                         "raw_axes"))
        nodes += [
            helper.make_node("ReduceMean", ["flat", "raw_axes"], ["image_mean"],
                             name="raw_mean", keepdims=1),
            helper.make_node("Sub", ["flat", "image_mean"], [FEATURES_NAME], name="raw_centre"),
        ]
    graph = helper.make_graph(
        nodes, "groco_raw_pixels",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                       ["batch", 3, size, size])],
        [helper.make_tensor_value_info(FEATURES_NAME, TensorProto.FLOAT, ["batch", dim])],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="groco")
    model.ir_version = 10
    return model


def export_raw_pixels(size: int, out_path: str | Path, data: str | Path | None = None,
                      centre: bool = RAW_PIXELS_CENTRE, parity_images: int = 16,
                      ) -> ExportReport:
    """Write the raw-pixel encoder: resize to ``size`` x ``size`` (shorter side, centre
    crop, as every encoder), flatten, centre, L2-normalise (:func:`raw_pixel_embeddings`).

    fp32 only (there are no weights to shrink). Checked against the NumPy formula on up to
    ``parity_images`` images of ``data`` (random tensors without it).
    """
    body = raw_pixel_body(size, centre)  # checks size first
    preprocessing = raw_pixel_preprocessing(size)

    def metadata(precision: str) -> dict[str, str]:
        return encoder_metadata(preprocessing, 3 * size * size, precision, RAW_PIXELS,
                                RAW_PIXELS, centre="per-image mean" if centre else "none")

    return export_checked(body, out_path, lambda b: raw_pixel_embeddings(b, centre),
                          preprocessing, metadata, data=data, parity_images=parity_images,
                          reference_name="the NumPy formula")


def export_backbone(
    name: str,
    image_size: int,
    out_path: str | Path,
    pretrained: bool = False,
    weights: str | Path | None = None,
    precision: str = "fp32",
    data: str | Path | None = None,
    seed: int = 0,
    parity_images: int = 16,
    calibration_images: int = 64,
    small_stem: bool | None = None,
    pool: str = "avg",
) -> ExportReport:
    """Export the timm network ``name`` at ``image_size`` as it is, without a run.

    Weights: timm's pretrained ones (``pretrained``: Hugging Face cache, ``HF_HUB_OFFLINE``,
    as :func:`groco.training.models.build_backbone` gets them), a local ``weights`` file
    (groco's or timm's format), or, with neither, a fresh initialisation
    (``torch.manual_seed(seed)``). The stem is the one ``groco train`` gives the same
    network (``small_stem``: ``None`` = the same automatic choice, see ``build_backbone``),
    so a baseline is the epoch 0 of a run from the same start; ``pool``: its global pooling
    (``avg`` or ``max``, recorded in the metadata when not ``avg``).
    Input normalisation is the network's own: ``pretrained_normalisation(name)`` (timm's
    ``pretrained_cfg`` mean/std), recorded in the metadata; ``groco.method`` is
    ``pretrained``, ``weights`` or ``untrained``. Checked against the PyTorch network on
    ``data`` like a run's export (:func:`groco.encoder.export.export_checked`).
    """
    import torch

    from groco.encoder.export import EmbeddingModel, traced
    from groco.training.models import build_backbone, pretrained_normalisation

    if pretrained and weights is not None:
        raise ExportError("give --pretrained or --weights FILE, not both")
    if weights is not None and not Path(weights).is_file():
        raise ExportError(f"weights file not found: {weights}")
    torch.manual_seed(seed)
    try:
        backbone, dim = build_backbone(name, image_size, small_stem=small_stem, weights=weights,
                                       pretrained=pretrained, pool=pool)
    except (ValueError, RuntimeError, OSError) as error:
        raise ExportError(" ".join(str(error).split())) from error
    mean, std = pretrained_normalisation(name)
    preprocessing = Preprocessing(image_size, image_size, tuple(mean), tuple(std))
    model = EmbeddingModel(backbone, list(mean), list(std)).eval()
    method = "pretrained" if pretrained else "weights" if weights is not None else "untrained"
    facts = {"weights": Path(weights).name} if weights is not None else {}
    if method == "untrained":
        facts["seed"] = str(seed)
    body = traced(model, image_size, files=(Path(weights),) if weights is not None else ())

    def metadata(precision: str) -> dict[str, str]:
        return encoder_metadata(preprocessing, dim, precision, name, method, pool, **facts)

    what = {"pretrained": "timm's pretrained weights", "untrained": f"random init (seed {seed})",
            "weights": f"weights file {weights}"}[method]
    return export_checked(body, out_path, model.embed, preprocessing, metadata,
                          precision=precision, data=data, parity_images=parity_images,
                          calibration_images=calibration_images, weights=f"{name}: {what}")
