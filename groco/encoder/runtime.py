"""Run an exported encoder with ONNX Runtime: images in, unit-norm embeddings out.

No torch here: the index and the web app embed with ONNX Runtime, NumPy and PIL alone.

An encoder file (written by :func:`groco.encoder.export.export_encoder`) takes float RGB in
[0, 1], NCHW, at ``groco.input_size`` with a dynamic batch axis; mean/std normalisation is
inside the graph, and the output is L2-normalised ``(N, groco.embedding_dim)`` float32. Its
facts live in the ONNX ``metadata_props`` under ``groco.*`` keys (see :data:`REQUIRED_KEYS`).
The preprocessing is the file's :class:`groco.preprocessing.Preprocessing`, read from that
metadata: the same value the training monitor and the exporter's parity check use.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from groco.images import load_image
from groco.prefetch import prefetch
from groco.preprocessing import META_PREFIX, Preprocessing

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("input_size", "resize_to", "embedding_dim", "hash")
"""Keys (without the prefix) an encoder file must carry to be used."""

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

ImageInput = str | Path | Image.Image | bytes


class EncoderError(ValueError):
    """An encoder file that cannot be used; ``str(err)`` is one line naming the file."""


def default_threads() -> int:
    """Cores this process may run on (the default intra-op thread count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def cuda_possible() -> bool:
    """False when CUDA surely cannot work (no CUDA provider in this build, or no NVIDIA driver).

    Asking ONNX Runtime for CUDA without a driver logs a long error and falls back to CPU;
    this check spares that on CPU-only machines. Anything else is decided by trying.
    """
    if CUDA not in ort.get_available_providers():
        return False
    return not (sys.platform.startswith("linux") and not os.path.exists("/proc/driver/nvidia"))


def default_providers(device_id: int | None = None) -> list[str | tuple[str, dict[str, Any]]]:
    """The providers to ask for: CUDA (device ``device_id`` when given) then CPU where
    :func:`cuda_possible`, else CPU alone."""
    if not cuda_possible():
        return [CPU]
    return [CUDA if device_id is None else (CUDA, {"device_id": int(device_id)}), CPU]


@functools.cache
def preload_cuda_libraries() -> bool:
    """Load the CUDA and cuDNN libraries of the NVIDIA pip packages (those torch runs on)
    into this process once, before the first CUDA session: otherwise ONNX Runtime's CUDA
    provider looks for them on the loader's path alone and, not finding them, runs on the
    CPU without an error (``onnxruntime.preload_dlls``, ONNX Runtime 1.21 and later). True
    when the libraries were loaded."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return False
    try:
        preload()
    except Exception as error:  # missing packages: the provider's own search still runs
        log.info("CUDA libraries not preloaded: %s", error)
        return False
    return True


def _int_meta(meta: dict[str, str], key: str, path: Path) -> int:
    try:
        value = int(meta[key])
    except ValueError:
        raise EncoderError(f"{path}: metadata groco.{key} is not an integer: "
                           f"{meta[key]!r}") from None
    if value < 1:
        raise EncoderError(f"{path}: metadata groco.{key} must be positive, got {value}")
    return value


class Encoder:
    """An ONNX Runtime session over a groco encoder file.

    ``Encoder(path, providers=None, batch_size=64, threads=None, spinning=True)``:

    - ``providers``: ONNX Runtime execution providers to ask for, in order of preference
      (names, or ``(name, options)`` pairs as ONNX Runtime takes them). ``None``: CUDA
      when this ONNX Runtime build has it and an NVIDIA driver is present, then CPU. A
      provider that fails to start is dropped silently by ONNX Runtime, so
      :attr:`provider` is read back from the session: it is what really runs.
    - ``batch_size``: images per ``session.run`` in :meth:`embed` and :meth:`embed_arrays`.
    - ``threads``: intra-op threads (default: the cores this process may use).
      Graph optimisation level ALL.
    - ``spinning``: whether those threads spin after a run, waiting for the next one (ONNX
      Runtime's default, best for back-to-back batches) or block at once (``False``: a
      server whose cores also decode, search and answer requests gets that CPU back;
      BENCHMARKS.md, "Serving many users").

    Raises :class:`EncoderError` (one line) for a missing file, a file that is not a
    readable ONNX model, a model without the groco metadata, or metadata that disagrees
    with the graph.
    """

    def __init__(
        self,
        path: str | Path,
        providers: list[str | tuple[str, dict[str, Any]]] | None = None,
        batch_size: int = 64,
        threads: int | None = None,
        spinning: bool = True,
    ) -> None:
        self.path = Path(path)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.threads = int(threads) if threads else default_threads()
        if not self.path.exists():
            raise EncoderError(f"{self.path}: encoder file not found")
        if not self.path.is_file():
            raise EncoderError(f"{self.path}: not a file")

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if spinning else "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        wanted = list(providers) if providers else (default_providers())
        if any((p[0] if isinstance(p, tuple) else p) == CUDA for p in wanted):
            preload_cuda_libraries()
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=wanted)
        except Exception as error:  # ORT raises Fail/InvalidProtobuf/InvalidGraph/...
            reason = " ".join(str(error).split())[:300]
            raise EncoderError(f"{self.path}: not a readable ONNX model ({reason})") from error
        used = self.session.get_providers()
        self.provider: str = used[0]
        """The execution provider that really runs the model (e.g. ``CPUExecutionProvider``)."""
        first = wanted[0][0] if isinstance(wanted[0], tuple) else wanted[0]
        if first != self.provider:
            log.info("%s: %s did not start; running on %s", self.path, first, self.provider)

        custom = self.session.get_modelmeta().custom_metadata_map
        meta = {k[len(META_PREFIX):]: v for k, v in custom.items() if k.startswith(META_PREFIX)}
        if not meta:
            raise EncoderError(
                f"{self.path}: not a groco encoder (no groco.* metadata); "
                "write one with `groco export RUN --out encoder.onnx`"
            )
        missing = [f"groco.{k}" for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise EncoderError(f"{self.path}: groco metadata lacks {', '.join(missing)}")
        self._meta = meta
        try:
            self.preprocessing: Preprocessing = Preprocessing.from_metadata(meta)
            """How images become this encoder's input (from the file's metadata)."""
        except ValueError as error:
            raise EncoderError(f"{self.path}: {error}") from None
        self._image_size = self.preprocessing.image_size
        self._resize_to = self.preprocessing.resize_to
        self._dim = _int_meta(meta, "embedding_dim", self.path)
        self._check_graph()

    def _check_graph(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise EncoderError(f"{self.path}: expected one input and one output, found "
                               f"{len(inputs)} and {len(outputs)}")
        self._input_name = inputs[0].name
        shape, out_shape = inputs[0].shape, outputs[0].shape
        size = self._image_size
        if len(shape) != 4 or list(shape[1:]) != [3, size, size]:
            raise EncoderError(f"{self.path}: input shape {shape} does not match groco.input_size "
                               f"{size} (expected [batch, 3, {size}, {size}])")
        if len(out_shape) != 2 or out_shape[1] != self._dim:
            raise EncoderError(f"{self.path}: output shape {out_shape} does not match "
                               f"groco.embedding_dim {self._dim}")

    @property
    def dim(self) -> int:
        """Embedding dimension (``groco.embedding_dim``)."""
        return self._dim

    @property
    def hash(self) -> str:
        """Content hash of the encoder (``groco.hash``): indexes refuse another one."""
        return self._meta["hash"]

    @property
    def image_size(self) -> int:
        """Side of the square input (``groco.input_size``)."""
        return self._image_size

    @property
    def resize_to(self) -> int:
        """Shorter side before the centre crop (``groco.resize_to``)."""
        return self._resize_to

    @property
    def backbone(self) -> str:
        """timm name of the backbone (``groco.backbone``), ``""`` if absent."""
        return self._meta.get("backbone", "")

    @property
    def metadata(self) -> dict[str, str]:
        """All ``groco.*`` metadata with the prefix removed (a copy), values as strings."""
        return dict(self._meta)

    def __repr__(self) -> str:
        return (f"Encoder({str(self.path)!r}, backbone={self.backbone!r}, dim={self.dim}, "
                f"image_size={self.image_size}, provider={self.provider!r})")

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """``(3, image_size, image_size)`` float32 in [0, 1]: :meth:`Preprocessing.array`."""
        return self.preprocessing.array(image)

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Embed preprocessed images ``(N, 3, H, W)`` float32 -> ``(N, dim)`` float32, unit norm.

        Runs in chunks of ``batch_size``; ``N == 0`` gives ``(0, dim)``. ``ValueError`` for
        another shape than ``(N, 3, image_size, image_size)``.
        """
        batch = np.asarray(batch)
        size = self._image_size
        if batch.ndim != 4 or batch.shape[1:] != (3, size, size):
            raise ValueError(f"expected a batch of shape (N, 3, {size}, {size}), "
                             f"got {batch.shape}")
        return self._run(np.ascontiguousarray(batch, dtype=np.float32), self.batch_size)

    def _run(self, batch: np.ndarray, batch_size: int) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, self._dim), dtype=np.float32)
        parts = [
            self.session.run(None, {self._input_name: batch[i:i + batch_size]})[0]
            for i in range(0, len(batch), batch_size)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _load(self, item: ImageInput) -> np.ndarray:
        image = item if isinstance(item, Image.Image) else load_image(item)
        return self.preprocess(image)

    def embed(self, images: Sequence[ImageInput], batch_size: int | None = None) -> np.ndarray:
        """Decode, preprocess and embed ``images`` (paths, bytes or PIL images) -> ``(N, dim)``.

        Decoding runs in a thread pool (:func:`groco.prefetch.prefetch`) and overlaps
        inference: up to one batch ahead of the batch being embedded. Row ``j`` is
        ``images[j]``. A bad image raises :class:`groco.images.ImageError` (callers that
        skip bad images use :meth:`preprocess` and :meth:`embed_arrays` themselves).
        """
        size = int(batch_size or self.batch_size)
        if size < 1:
            raise ValueError(f"batch_size must be >= 1, got {size}")
        items = list(images)
        if not items:
            return np.zeros((0, self._dim), dtype=np.float32)
        workers = min(4, default_threads(), size, len(items))
        out: list[np.ndarray] = []
        arrays: list[np.ndarray] = []
        stream = prefetch(self._load, items, workers, window=2 * size)
        with contextlib.closing(stream):  # an error stops the decoding threads now
            for array in stream:
                arrays.append(array)
                if len(arrays) == size:
                    out.append(self._run(np.stack(arrays), size))
                    arrays = []
        if arrays:
            out.append(self._run(np.stack(arrays), size))
        return np.concatenate(out)
