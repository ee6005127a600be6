"""Export a run's backbone to one self-describing ONNX file (fp32, fp16 or int8).

The graph takes float RGB in [0, 1], NCHW, at the trained ``image_size`` with a dynamic
batch axis; it applies ``(x - mean) / std``, runs the backbone and L2-normalises the pooled
features, so it returns unit vectors ``(N, embedding_dim)``. Everything a user of the file
needs is in ``metadata_props`` under ``groco.*`` keys (see :func:`groco_metadata`), read back
by :class:`groco.encoder.runtime.Encoder`.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript). With torch
2.14 both exporters export resnet18 and ViTs with a dynamic batch at 1e-7 parity, but the
TorchScript one is deprecated (it warns that it will be removed), and the dynamo one writes
a cleaner graph (LayerNormalization as one op, no Identity/Constant clutter: 509 vs 963
nodes for vit_small), which is what fp16 conversion and QDQ quantisation then work on. It
costs a few seconds more per export (about 5-10 s instead of 2-4 s on two cores).

Checks: ``onnx.checker.check_model``; parity against PyTorch on real images of the run's
data folder (fp32 max abs diff must be <= :data:`FP32_TOLERANCE`, else :class:`ExportError`);
fp16 and int8 report the per-image cosine to the fp32 model.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

import groco
from groco.fileio import atomic_path
from groco.images import ImageError, find_images, load_image
from groco.preprocessing import META_PREFIX, Preprocessing
from groco.training import checkpoint
from groco.training.models import build_backbone

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_OPSET = 18
FP32_TOLERANCE = 1e-4
"""Largest accepted |ONNX Runtime fp32 - PyTorch| over the parity images' embeddings."""
MIN_COSINE = 0.99
"""Smallest accepted per-image cosine of an fp16/int8 encoder's embedding to the fp32
encoder's, on the parity images (held out from int8 calibration). Below it the export
refuses to write the file: at 0.99 a neighbour list barely changes (top-10 overlap >= 0.9
in tests/test_export.py), while int8 with 8-bit weights on a non-VNNI CPU gave 0.954 on the
test's vit_tiny and 0.870 on a trained vit_tiny (issue 14).
"""
INPUT_NAME, FEATURES_NAME, OUTPUT_NAME = "images", "features", "embeddings"
L2_EPS = 1e-12
TAIL_PREFIX = "groco_l2norm"
HASH_KEY = META_PREFIX + "hash"


class ExportError(RuntimeError):
    """The export cannot be done or failed a check; ``str(err)`` is one line."""


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_encoder` wrote and measured.

    ``max_abs_diff``: fp32 ONNX Runtime vs PyTorch on the parity images (measured for every
    precision). ``cosine_min``/``cosine_mean``: per-image cosine of the fp16/int8 model's
    embedding to the fp32 model's on the parity images (``None`` for fp32). ``parity_source``
    and ``calibration_source`` say which images were used, ``parity_files`` and
    ``calibration_files`` name them (disjoint: int8 is checked on images it was not
    calibrated on; empty for random tensors / no calibration).
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

    def summary(self) -> str:
        """A few human-readable lines (what ``groco export`` prints)."""
        lines = [
            f"wrote {self.path} ({self.precision}, dim {self.embedding_dim}, "
            f"hash {self.hash}) in {self.seconds:.1f}s",
            f"parity vs PyTorch: max abs diff {self.max_abs_diff:.2e} on {self.parity_source}",
        ]
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
    normalisation is appended as plain ONNX nodes (:func:`append_l2_normalisation`) so
    fp16/int8 conversion never touches it.
    """

    def __init__(self, backbone: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.features = FeatureModel(backbone, mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(x), dim=1, eps=L2_EPS)


def _one_line(error: BaseException, limit: int = 400) -> str:
    return " ".join(str(error).split())[:limit]


def _require(config: dict[str, Any], key: str, run_dir: Path) -> Any:
    if config.get(key) is None:
        raise ExportError(f"{run_dir}: config.yaml has no {key!r}")
    return config[key]


def _channels(config: dict[str, Any], key: str, run_dir: Path) -> list[float]:
    value = _require(config, key, run_dir)
    try:
        floats = [float(v) for v in value]
    except (TypeError, ValueError):
        floats = []
    if len(floats) != 3 or (key == "std" and min(floats) <= 0):
        raise ExportError(f"{run_dir}: config {key!r} must be 3 numbers"
                          f"{' > 0' if key == 'std' else ''}, got {value!r}")
    return floats


def load_embedding_model(run_dir: str | Path) -> tuple[EmbeddingModel, dict[str, Any], int]:
    """Rebuild a run's backbone with its ``backbone.*`` weights, wrapped as :class:`EmbeddingModel`.

    Returns ``(model in eval mode, config, embedding_dim)``; :class:`ExportError` for a
    config the backbone cannot be built from or weights that do not fit it.
    """
    run_dir = Path(run_dir)
    try:
        config = checkpoint.load_config(run_dir)
        weights = checkpoint.load_weights(run_dir, prefix="backbone.")
    except checkpoint.RunError as error:
        raise ExportError(str(error)) from error
    name = str(_require(config, "backbone", run_dir))
    image_size = int(_require(config, "image_size", run_dir))
    try:
        backbone, dim = build_backbone(name, image_size, config.get("small_stem"))
    except (ValueError, RuntimeError) as error:
        raise ExportError(f"{run_dir}: cannot build backbone {name!r}: {error}") from error
    if not weights:
        raise ExportError(f"{run_dir}: the checkpoint has no backbone.* weights")
    try:
        backbone.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ExportError(f"{run_dir}: checkpoint does not fit {name!r} at {image_size} px "
                          f"({first})") from error
    model = EmbeddingModel(backbone, _channels(config, "mean", run_dir),
                           _channels(config, "std", run_dir))
    return model.eval(), config, dim


def to_onnx(model: nn.Module, image_size: int, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """``model`` as an ONNX graph ``images (batch, 3, S, S) -> features (batch, D)``.

    Uses the dynamo (torch.export) exporter with a symbolic ``batch`` dimension.
    """
    example = torch.rand(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                model, (example,), None, dynamo=True, opset_version=opset, verbose=False,
                input_names=[INPUT_NAME], output_names=[FEATURES_NAME],
                dynamic_shapes={"x": {0: batch}}, optimize=True,
            )
        except Exception as error:  # torch.export / onnxscript raise many error types
            raise ExportError(f"torch.onnx export failed: {type(error).__name__}: "
                              f"{_one_line(error)}") from error
    return program.model_proto


_TRACES: OrderedDict[str, bytes] = OrderedDict()
_TRACES_KEPT = 2


def _traced(model: EmbeddingModel, run_dir: Path, image_size: int, opset: int) -> onnx.ModelProto:
    """:func:`to_onnx` of ``model.features``, reusing this process's last traces of the run.

    Exporting one run at several precisions traces it once (tracing takes seconds). The key
    is the sha256 of the run's weights file and config, the opset and the torch version.
    """
    digest = hashlib.sha256(f"{opset} {torch.__version__}".encode())
    for name in (checkpoint.WEIGHTS, checkpoint.CONFIG):
        with open(run_dir / name, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    key = digest.hexdigest()
    if key in _TRACES:
        _TRACES.move_to_end(key)
        return onnx.ModelProto.FromString(_TRACES[key])
    body = to_onnx(model.features, image_size, opset)
    _TRACES[key] = body.SerializeToString()
    while len(_TRACES) > _TRACES_KEPT:
        _TRACES.popitem(last=False)
    return body


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def append_l2_normalisation(features_model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``features_model`` whose output ``features`` (float32) is L2-normalised.

    Appends ``embeddings = features / Max(ReduceL2(features, axis 1), 1e-12)`` in float32
    (``F.normalize``'s formula), with node names starting with :data:`TAIL_PREFIX`.
    """
    model = onnx.ModelProto.FromString(features_model.SerializeToString())
    graph = model.graph
    (features,) = graph.output
    if features.name != FEATURES_NAME:
        raise ExportError(f"expected the graph output {FEATURES_NAME!r}, found {features.name!r}")
    if features.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ExportError("the features output must be float32")
    helper, p = onnx.helper, TAIL_PREFIX
    graph.initializer.extend([
        onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), f"{p}_axes"),
        onnx.numpy_helper.from_array(np.array(L2_EPS, dtype=np.float32), f"{p}_eps"),
    ])
    if _opset(model) >= 18:
        reduce = helper.make_node("ReduceL2", [FEATURES_NAME, f"{p}_axes"], [f"{p}_norm"],
                                  name=f"{p}_reduce", keepdims=1)
    else:
        reduce = helper.make_node("ReduceL2", [FEATURES_NAME], [f"{p}_norm"],
                                  name=f"{p}_reduce", axes=[1], keepdims=1)
    graph.node.extend([
        reduce,
        helper.make_node("Max", [f"{p}_norm", f"{p}_eps"], [f"{p}_clamped"], name=f"{p}_max"),
        helper.make_node("Div", [FEATURES_NAME, f"{p}_clamped"], [OUTPUT_NAME], name=f"{p}_div"),
    ])
    dims = [d.dim_param or d.dim_value for d in features.type.tensor_type.shape.dim]
    graph.value_info.append(features)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, dims))
    return model


def groco_metadata(config: dict[str, Any], embedding_dim: int, precision: str) -> dict[str, str]:
    """The ``groco.*`` metadata of an encoder (all but ``groco.hash``), values as strings."""
    values: dict[str, Any] = {
        "embedding_dim": embedding_dim,
        "backbone": config["backbone"],
        "method": config.get("method", "unknown"),
        "epochs": config.get("epochs", "unknown"),
        "version": groco.__version__,
        "precision": precision,
    }
    return {**_preprocessing(config).metadata(),
            **{META_PREFIX + key: str(value) for key, value in values.items()}}


def _preprocessing(config: dict[str, Any]) -> Preprocessing:
    image_size = int(config["image_size"])
    return Preprocessing(image_size, int(config.get("eval_resize") or image_size),
                         tuple(config["mean"]), tuple(config["std"]))


def stamp(model: onnx.ModelProto, metadata: dict[str, str]) -> str:
    """Replace ``model``'s metadata with ``metadata`` plus ``groco.hash``; return the hash.

    The hash is the first 16 hex digits of the sha256 of the serialized model (graph,
    weights and the other metadata) before the hash entry is added, so the same export
    gives the same hash and any change to weights, graph or preprocessing facts changes it.
    """
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, metadata)
    digest = hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()[:16]
    entry = model.metadata_props.add()
    entry.key, entry.value = HASH_KEY, digest
    return digest


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


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _run(model: onnx.ModelProto, batch: np.ndarray) -> np.ndarray:
    return _session(model).run(None, {INPUT_NAME: batch})[0]


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Order ``graph``'s nodes topologically (stable), as ``onnx.checker`` requires."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError(f"graph has a cycle or an undefined input at node {rest[0].name!r}")
        pending = rest
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(nodes)


def to_fp16(features_model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute with float32 input and ``features`` output."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "value truncated to fp16" for tiny weights
        model = convert_float_to_float16(
            onnx.ModelProto.FromString(features_model.SerializeToString()), keep_io_types=True)
    _sort_nodes(model.graph)  # the converter appends its input Casts at the end
    return model


class CalibrationImages(CalibrationDataReader):
    """Feeds a preprocessed batch ``(N, 3, S, S)`` to the calibrator, ``batch_size`` at a time."""

    def __init__(self, images: np.ndarray, batch_size: int = 8) -> None:
        self.batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return {INPUT_NAME: self.batches[self.position - 1]}

    def rewind(self) -> None:
        self.position = 0


INT8_OP_TYPES = ("Conv", "MatMul", "Gemm")
"""Ops quantised in int8 exports: the ones that carry weights (and almost all the FLOPs)."""

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax,
                       "percentile": CalibrationMethod.Percentile}


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMuls whose inputs are both activations (attention's QK^T and PV)."""
    constants = {t.name for t in model.graph.initializer}
    constants.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in constants for i in n.input)]


def to_int8(features_model: onnx.ModelProto, calibration: np.ndarray,
            method: str = "minmax", reduce_range: bool = True) -> onnx.ModelProto:
    """Static QDQ int8 of the weight ops: per-channel int8 weights, uint8 activations.

    ``quant_pre_process`` (shape inference + basic graph optimisation) runs first. Only
    :data:`INT8_OP_TYPES` with a constant operand are quantised; activation ranges come from
    ``calibration`` (``method``: ``minmax`` or ``percentile``; their agreement with fp32
    differed by < 1e-4 in cosine on resnet18 and vit_tiny, so min-max, the cheaper one, is
    the default). Input and the ``features`` output stay float32.

    ``reduce_range`` (default on): weights use 7 bits, ``[-64, 64]``, instead of 8. ONNX
    Runtime's u8s8 kernels on x86 CPUs without VNNI (AVX2, AVX-512 before VNNI) multiply
    with ``VPMADDUBSW``, which adds two ``u8 x s8`` products into a saturating int16: with
    8-bit weights the pair sum can exceed 32767 and is clipped. ONNX Runtime's quantisation
    guide names ``reduce_range`` and U8U8 as the remedies and recommends ``reduce_range``
    for non-VNNI machines; with 7-bit weights a pair is at most ``2 * 255 * 64 < 32767``,
    so the result is exact on every CPU, VNNI ones included (there the int32 dot product
    never saturated; the 7-bit weights just round a little coarser). Measured on this
    2-core AVX2 EPYC (random-init networks, 32 px, 48 images not used for calibration,
    ORT 1.31): cosine min to fp32 without / with reduce_range / U8U8 was 0.9877 / 0.9993 /
    0.9994 for resnet18 and 0.9543 / 0.9980 / 0.9988 for vit_tiny, at 2.07x / 1.78x / 0.88x
    (resnet18) and 1.34x / 1.29x / 0.99x (vit_tiny) the speed of ORT fp32: U8U8 is exact
    too but loses all of int8's speed here, reduce_range keeps most of it.

    Why not every op ONNX Runtime can quantise (measured on random-init models, ORT 1.31,
    CPU): on ViTs, quantising the residual Adds, LayerNorms and Softmax too drops the
    per-image cosine to fp32 to 0.88 (vit_small, 224 px) / 0.92 (vit_tiny, 32 px) and is
    slower (12.8 vs 14.9 images/s for vit_small); and quantising attention's activation x
    activation MatMuls lets ORT's level-2 optimiser fuse ``DQ-Softmax-Q`` into
    ``QLinearSoftmax``, after which the cosine fell to 0.05-0.60, although the same QDQ
    graph gives 0.999 with optimisations at BASIC. Weight ops only: cosine >= 0.998 on
    both ViTs, and on resnet18 the same agreement (0.9997) at about the same speed.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {sorted(CALIBRATION_METHODS)}, "
                         f"got {method!r}")
    with tempfile.TemporaryDirectory(prefix="groco-int8-") as tmp:
        fp32_path, pre_path, out_path = (Path(tmp) / f for f in ("fp32.onnx", "pre.onnx",
                                                                   "int8.onnx"))
        onnx.save_model(features_model, fp32_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32_path), str(pre_path))
            prepared = onnx.load_model(pre_path)
            quantize_static(
                prepared, str(out_path), CalibrationImages(calibration),
                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CALIBRATION_METHODS[method],
                op_types_to_quantize=list(INT8_OP_TYPES),
                nodes_to_exclude=activation_matmuls(prepared),
            )
        return onnx.load_model(out_path)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return (a * b).sum(axis=1)


def export_encoder(
    run_dir: str | Path,
    out_path: str | Path,
    precision: str = "fp32",
    calibration_images: int = 64,
    parity_images: int = 16,
    opset: int = DEFAULT_OPSET,
    data: str | Path | None = None,
) -> ExportReport:
    """Export ``run_dir``'s backbone to ``out_path`` (written atomically) and check it.

    - ``precision``: ``fp32``; ``fp16`` (weights and compute in fp16, float32 I/O);
      ``int8`` (static QDQ, per-channel 7-bit weights, see :func:`to_int8`, calibrated on
      up to ``calibration_images`` images).
    - Parity: up to ``parity_images`` images of ``data`` (default: the run's ``data``
      folder) are embedded by PyTorch and by the fp32 ONNX model; a max abs diff above
      :data:`FP32_TOLERANCE` raises :class:`ExportError`. If the folder is gone, random
      tensors are used and the report says so (not for int8).
    - int8 calibrates on other files of the same folder than the parity images (these are
      held out: at most half the folder), so it needs two readable images at least.
    - fp16/int8: the per-image cosine to the fp32 model on the parity images must be
      >= :data:`MIN_COSINE`, else :class:`ExportError` and nothing is written.

    Raises :class:`ExportError` for a bad run directory, a failed export or check.
    """
    start = time.perf_counter()
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if parity_images < 1 or calibration_images < 1:
        raise ExportError("parity_images and calibration_images must be >= 1")
    model, config, dim = load_embedding_model(run_dir)
    image_size = int(config["image_size"])
    try:
        preprocessing = _preprocessing(config)
    except ValueError as error:
        raise ExportError(f"{run_dir}: {error}") from None
    folder = data if data is not None else config.get("data")

    log.info("exporting %s (%s, %d px) to ONNX", config["backbone"], precision, image_size)
    body = _traced(model, Path(run_dir), image_size, opset)
    fp32 = append_l2_normalisation(body)
    try:
        onnx.checker.check_model(fp32, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"exported graph fails onnx.checker: {_one_line(error)}") from error

    files = image_files(folder)
    # int8 calibrates on images of the folder too: the parity images are held out from it
    # (at most half the folder), so agreement is measured on images the quantiser never saw.
    n_parity = parity_images if precision != "int8" else min(parity_images, len(files) // 2)
    parity = sample_images(folder, n_parity, preprocessing, phase=0.5) if n_parity else None
    if parity is None:
        if precision == "int8":
            raise ExportError(f"int8 needs calibration images and held-out images to check "
                              f"them, but data folder {folder} has {len(files)} readable "
                              "image(s); pass another folder (groco export --data DIR)")
        rng = np.random.default_rng(0)
        batch = rng.random((parity_images, 3, image_size, image_size), dtype=np.float32)
        parity_source = f"{parity_images} random tensors (no images in data folder {folder})"
        parity_files: tuple[Path, ...] = ()
        log.warning("parity check on random tensors: no images in data folder %s", folder)
    else:
        batch, parity_files = parity.batch, parity.files
        parity_source = parity.describe("held-out images" if precision == "int8" else "images")
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    reference = _run(fp32, batch)
    max_abs_diff = float(np.abs(reference - expected).max())
    if not max_abs_diff <= FP32_TOLERANCE:  # also catches NaN
        raise ExportError(f"ONNX fp32 output differs from PyTorch by {max_abs_diff:.3g} "
                          f"(> {FP32_TOLERANCE:g}) on {parity_source}")

    final, calibration_source, calibration_files = fp32, None, ()
    if precision == "fp16":
        final = append_l2_normalisation(to_fp16(body))
    elif precision == "int8":
        assert parity is not None
        calib = sample_images(folder, calibration_images, preprocessing, phase=0.0,
                              exclude=frozenset(parity.files + parity.skipped))
        if calib is None:
            raise ExportError(f"int8 needs calibration images besides the {len(parity.files)} "
                              f"held-out ones, but data folder {folder} has no other readable "
                              "image; pass another folder (groco export --data DIR)")
        calibration_source = calib.describe("other images")
        calibration_files = calib.files
        final = append_l2_normalisation(to_int8(body, calib.batch))
    cosine_min = cosine_mean = None
    if precision != "fp32":
        cosines = _cosines(_run(final, batch), reference)
        cosine_min, cosine_mean = float(cosines.min()), float(cosines.mean())
        if not cosine_min >= MIN_COSINE:  # also catches NaN
            raise ExportError(
                f"{precision} embeddings agree too poorly with fp32 to be written: cosine min "
                f"{cosine_min:.4f} < {MIN_COSINE} on {parity_source}; export fp32 instead")
        try:
            onnx.checker.check_model(final, full_check=True)
        except onnx.checker.ValidationError as error:
            raise ExportError(f"{precision} graph fails onnx.checker: {_one_line(error)}") \
                from error

    digest = stamp(final, groco_metadata(config, dim, precision))
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        onnx.save_model(final, tmp)
    return ExportReport(
        path=out_path, precision=precision, max_abs_diff=max_abs_diff, cosine_min=cosine_min,
        cosine_mean=cosine_mean, hash=digest, embedding_dim=dim,
        seconds=time.perf_counter() - start, parity_source=parity_source,
        calibration_source=calibration_source, parity_files=parity_files,
        calibration_files=calibration_files,
    )


def export_untrained(config: dict[str, Any], run_dir: str | Path, out_path: str | Path,
                     seed: int = 0, **export_options: Any) -> ExportReport:
    """Write ``run_dir`` as a run whose weights are freshly initialised from ``config`` (a
    training configuration, as in ``config.yaml``) and export it like a trained one.

    The floor a trained encoder must beat, and an encoder for tests and benchmarks whose
    figures do not depend on the weights.
    """
    from groco.training import checkpoint
    from groco.training.models import build_model

    run_dir = Path(run_dir)
    torch.manual_seed(seed)
    checkpoint.save_config(run_dir, config)
    checkpoint.save_weights(run_dir, build_model(config).state_dict())
    return export_encoder(run_dir, out_path, **export_options)

