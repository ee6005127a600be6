"""Local weights files for a timm backbone: reading groco's, timm's and torch's formats,
and loading them strictly (:func:`load_backbone_weights`); never downloads."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

SMALL_STEM_KEY = "small_stem"
"""Metadata key of groco's checkpoints: ``"true"`` when the network had the small stem."""
_STATE_PREFIXES = ("module.", "_orig_mod.")


def _unwrap_state_dict(obj: Any) -> dict[str, Tensor]:
    """The tensors of a checkpoint, descending into ``state_dict``/``model`` entries."""
    while isinstance(obj, Mapping):
        inner = next(
            (obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None
        )
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a state dict, found {type(obj).__name__}")
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise ValueError("the file holds no tensors")
    return state


def _read_weights(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error type for bad files
            raise ValueError(f"cannot read {path} as safetensors: {err}") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several error types for non-checkpoints
        raise ValueError(f"cannot read {path} as a torch state dict: {err}") from err
    return _unwrap_state_dict(obj)


def _backbone_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip DDP/compile prefixes; keep only ``backbone.*`` keys (without it) when present."""
    clean = {}
    for key, value in state.items():
        for prefix in _STATE_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        clean[key] = value
    if any(k.startswith("backbone.") for k in clean):
        clean = {k[len("backbone.") :]: v for k, v in clean.items() if k.startswith("backbone.")}
    return clean


def recorded_small_stem(weights: str | Path) -> bool | None:
    """Whether the network saved in ``weights`` had the small-image stem, as a groco
    checkpoint records it (safetensors metadata :data:`SMALL_STEM_KEY`); ``None`` for any
    other file (timm's, ImageNet's, torch ``.pt``): its stem is kept as built."""
    path = Path(weights)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            value = (file.metadata() or {}).get(SMALL_STEM_KEY)
    except Exception:  # unreadable files fail with a clear message when loaded
        return None
    return None if value is None else value == "true"


def load_backbone_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a local weights file into a timm backbone, strictly; never downloads.

    Accepts ``.safetensors`` or a torch ``.pt``/``.pth`` state dict, possibly nested under
    ``state_dict``/``model``, possibly with ``module.``/``backbone.`` prefixes (so an
    ``SSLModel`` checkpoint works; its ``projector.*`` keys are ignored). Keys of the
    classifier head (timm's ``pretrained_cfg["classifier"]``) are dropped since the backbone
    has none. Every other key must match the backbone in name and shape, else ``ValueError``.
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state = _backbone_keys(_read_weights(path))
    own = model.state_dict()
    heads = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    state = {
        k: v
        for k, v in state.items()
        if k in own or not any(k == h or k.startswith(h + ".") for h in heads)
    }
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or wrong_shape:

        def few(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        problems = [
            f"{label}: {few(items)}"
            for label, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches (file vs model)", wrong_shape),
            )
            if items
        ]
        raise ValueError(
            f"weights file {path} does not fit this backbone ({'; '.join(problems)}). "
            "It must come from the same timm model with the same image_size and small_stem."
        )
    model.load_state_dict(state, strict=True)
