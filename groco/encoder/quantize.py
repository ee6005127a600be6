"""Lower-precision encoder bodies: fp16 conversion and static int8 (QDQ) quantisation.

Both take a body graph ``images -> features`` (float32, see :mod:`groco.encoder.graph`)
and return one with the same float32 input and output; the L2 tail is appended after.
Whether the result is good enough is the exporter's call (it measures the cosine to fp32
on held-out images and refuses below :data:`groco.encoder.checked.MIN_COSINE`).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from groco.encoder.graph import INPUT_NAME, sort_nodes


def to_fp16(features_model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute with float32 input and ``features`` output."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "value truncated to fp16" for tiny weights
        model = convert_float_to_float16(
            onnx.ModelProto.FromString(features_model.SerializeToString()), keep_io_types=True)
    sort_nodes(model.graph)  # the converter appends its input Casts at the end
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
