"""The run directory: what `groco train` writes and `groco export` / `--resume` read.

    RUN/config.yaml          the full training configuration (``TrainConfig`` as a dict)
    RUN/last.safetensors     model weights (``backbone.*``, ``projector.*``, method heads)
    RUN/best.safetensors     the weights of the best epoch so far (epoch 0 = the start), with
                             the epoch, the criterion and the scores in its metadata
    RUN/last.state.safetensors  optimiser tensors and RNG states, for ``--resume``
    RUN/last.json            epoch, step, optimiser hyper-parameters, loss history
    RUN/metrics.csv          one row per epoch

Every file is written atomically; ``last.json`` is written last, so a checkpoint is
complete exactly when ``last.json`` names its epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from groco.fileio import atomic_path, atomic_write_text

CONFIG = "config.yaml"
WEIGHTS = "last.safetensors"
BEST = "best.safetensors"
STATE_TENSORS = "last.state.safetensors"
STATE = "last.json"


class RunError(ValueError):
    """A run directory that is missing, incomplete or unreadable."""


def save_config(run_dir: Path, config: dict[str, Any]) -> None:
    atomic_write_text(run_dir / CONFIG, yaml.safe_dump(config, sort_keys=False))


def load_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunError(f"{run_dir}: not a groco run directory (no {CONFIG})")
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise RunError(f"{path}: not a mapping")
    return config


def save_weights(run_dir: Path, state_dict: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None, name: str = WEIGHTS) -> None:
    """Write ``state_dict`` to ``run_dir / name`` (``last`` or ``best``) atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(run_dir / name) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_weights(run_dir: str | Path, prefix: str | None = None,
                 name: str = WEIGHTS) -> dict[str, torch.Tensor]:
    """The run's weights (``name``: :data:`WEIGHTS` or :data:`BEST`); with ``prefix``
    (e.g. ``"backbone."``) only those, prefix removed."""
    path = Path(run_dir) / name
    if not path.is_file():
        raise RunError(f"{run_dir}: no checkpoint ({name}); has `groco train` finished "
                       "an epoch?")
    try:
        weights = load_file(str(path))
    except Exception as error:  # safetensors raises several types for a corrupt file
        raise RunError(f"{path}: unreadable checkpoint ({error})") from error
    if prefix is None:
        return weights
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def weights_metadata(run_dir: str | Path, name: str = WEIGHTS) -> dict[str, str]:
    """The string metadata stored with a weights file (empty when it has none)."""
    from safetensors import safe_open

    path = Path(run_dir) / name
    try:
        with safe_open(str(path), framework="pt") as file:
            return dict(file.metadata() or {})
    except Exception as error:  # safetensors raises several types for a corrupt file
        raise RunError(f"{path}: unreadable checkpoint ({error})") from error


def export_choice(run_dir: str | Path) -> tuple[str, str]:
    """Which weights ``groco export`` takes by default, and a line saying why.

    :data:`BEST` when the run kept one (the best epoch by its ``criterion``, epoch 0 being
    the start), else :data:`WEIGHTS`, the last epoch.
    """
    run_dir = Path(run_dir)
    if not (run_dir / BEST).is_file():
        return WEIGHTS, f"the last epoch ({WEIGHTS}; the run kept no {BEST})"
    meta = weights_metadata(run_dir, BEST)
    epoch = meta.get("epoch", "?")
    what = "the start (epoch 0)" if epoch == "0" else f"epoch {epoch}"
    reason = meta.get("reason", "")
    return BEST, f"{what} from {BEST}" + (f": {reason}" if reason else "")


def save_state(run_dir: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    with atomic_path(run_dir / STATE_TENSORS) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    atomic_write_text(run_dir / STATE, json.dumps(state, indent=1))


def load_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The resume state, or None when the run has no complete checkpoint yet."""
    if not (run_dir / STATE).is_file():
        return None
    state = json.loads((run_dir / STATE).read_text())
    return load_file(str(run_dir / STATE_TENSORS)), state
