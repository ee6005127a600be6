"""Encoder graphs: from a network to an ONNX graph, its L2-normalising tail, its stamp.

An encoder file's graph takes float RGB in [0, 1], NCHW, ``images (batch, 3, S, S)``, and
returns unit vectors ``embeddings (batch, D)``. It is built in two parts: a *body*
``images -> features`` (a PyTorch network through :func:`to_onnx`, or a graph written with
``onnx.helper`` such as the raw-pixel baseline), which fp16/int8 conversion may rewrite,
and the float32 tail :func:`append_l2_normalisation`, which they never touch. Then
:func:`stamp` writes the ``groco.*`` metadata (:func:`encoder_metadata`) and the content
hash that indexes check.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript). With torch
2.14 both exporters export resnet18 and ViTs with a dynamic batch at 1e-7 parity, but the
TorchScript one is deprecated (it warns that it will be removed), and the dynamo one writes
a cleaner graph (LayerNormalization as one op, no Identity/Constant clutter: 509 vs 963
nodes for vit_small), which is what fp16 conversion and QDQ quantisation then work on. It
costs a few seconds more per export (about 5-10 s instead of 2-4 s on two cores).

torch is imported by :func:`to_onnx` only: the rest works on ONNX protos alone.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort

import groco
from groco.preprocessing import META_PREFIX, Preprocessing

if TYPE_CHECKING:
    from torch import nn

DEFAULT_OPSET = 18
INPUT_NAME, FEATURES_NAME, OUTPUT_NAME = "images", "features", "embeddings"
L2_EPS = 1e-12
TAIL_PREFIX = "groco_l2norm"
HASH_KEY = META_PREFIX + "hash"


class ExportError(RuntimeError):
    """The export cannot be done or failed a check; ``str(err)`` is one line."""


def one_line(error: BaseException, limit: int = 400) -> str:
    """``str(error)`` on one line, at most ``limit`` characters."""
    return " ".join(str(error).split())[:limit]


def to_onnx(model: nn.Module, image_size: int, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """``model`` as an ONNX graph ``images (batch, 3, S, S) -> features (batch, D)``.

    Uses the dynamo (torch.export) exporter with a symbolic ``batch`` dimension.
    """
    import torch

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
                              f"{one_line(error)}") from error
    return program.model_proto


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain opset ``model`` imports."""
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
    if opset_of(model) >= 18:
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


def encoder_metadata(preprocessing: Preprocessing, embedding_dim: int, precision: str,
                     backbone: str, method: str, pool: str = "avg",
                     **facts: Any) -> dict[str, str]:
    """The ``groco.*`` metadata of an encoder (all but ``groco.hash``), values as strings.

    ``preprocessing``'s entries (input size, resize, mean/std, policy), ``embedding_dim``,
    ``backbone`` (a timm name, or e.g. ``raw-pixels``), ``method`` (how the weights came
    to be: a training method, ``pretrained``, ``untrained``, ...), ``precision``, the groco
    version, ``pool`` when the network's global pooling is not timm's default ``avg``, and
    any further ``facts`` (e.g. ``epochs``, ``weights``).
    """
    pooled = {} if pool == "avg" else {"pool": pool}
    values: dict[str, Any] = {"embedding_dim": embedding_dim, "backbone": backbone,
                              "method": method, **facts, **pooled,
                              "version": groco.__version__, "precision": precision}
    return {**preprocessing.metadata(),
            **{META_PREFIX + key: str(value) for key, value in values.items()}}


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


def sort_nodes(graph: onnx.GraphProto) -> None:
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


def check(model: onnx.ModelProto, what: str = "exported") -> None:
    """``onnx.checker.check_model(full_check=True)``; :class:`ExportError` (one line) if not."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"{what} graph fails onnx.checker: {one_line(error)}") from error


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU ONNX Runtime session of ``model`` (optimisation level ALL, as the Encoder)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, batch: np.ndarray) -> np.ndarray:
    """``model``'s single output for ``batch`` (fed as :data:`INPUT_NAME`), on CPU."""
    return session(model).run(None, {INPUT_NAME: batch})[0]
