"""A run's state in its files: the metrics row of an epoch, the optimiser state split for a
checkpoint and loaded back, and the check that a resumed run keeps its settings (the file
format itself is :mod:`groco.training.checkpoint`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from groco.training import checkpoint, labelfree
from groco.training.config import TrainConfig
from groco.training.trainer.setup import TrainError

METRIC_FIELDS = ["epoch", "step", "loss", "lr", "images_per_s", "broken", "knn_top1",
                 *labelfree.SCORES, "kept", "seconds"]


def check_resume_settings(run_dir: Path, saved: TrainConfig, asked: Mapping[str, Any]) -> None:
    """Refuse (:class:`TrainError`, one line) to resume ``run_dir`` when a setting ``asked``
    for differs from the run's saved one: a resumed run repeats the uninterrupted one, so it
    keeps its own settings (the LR schedule spans its ``epochs``). Training longer is a new
    run from its weights, which the message gives."""
    values = {**asked}
    if values.get("geometry") == "auto":  # the run recorded what auto chose
        values.pop("geometry")
    for key in ("data", "eval_data", "weights", "pretrained_file"):
        if values.get(key) is not None:
            values[key] = str(Path(values[key]).expanduser().resolve())
    differ = [(key, value) for key, value in values.items()
              if value is not None and getattr(saved, key, value) != value]
    if not differ:
        return
    key, value = differ[0]
    flag = "IMAGES" if key == "data" else "--" + key.replace("_", "-")
    more = f" (and {len(differ) - 1} more)" if len(differ) > 1 else ""
    longer = (f"; to train longer, start a new run from its weights: groco train IMAGES "
              f"--out NEW --weights {run_dir / checkpoint.BEST} --epochs {value}"
              if key == "epochs" else "")
    raise TrainError(f"--resume continues {run_dir} with its own settings, and {flag} {value} "
                     f"differs from its {getattr(saved, key)}{more}{longer}")


def split_optimizer_state(optimizer: torch.optim.Optimizer
                          ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimiser's state as (tensors named ``optimizer.<index>.<key>``, the JSON-able
    rest: ``param_groups`` and ``optimizer_scalars``)."""
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in opt["state"].items():
        scalars[str(index)] = {}
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars[str(index)][key] = value
    return tensors, {"param_groups": opt["param_groups"], "optimizer_scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         state: Mapping[str, Any], device: torch.device) -> None:
    """Load what :func:`split_optimizer_state` wrote (``state``: the checkpoint's JSON)."""
    opt_state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value.to(device)
    for index, scalars in state["optimizer_scalars"].items():
        opt_state.setdefault(int(index), {}).update(scalars)
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})


def epoch_row(epoch: int, step: int, lr: float, loss: float | None, speed: float | None,
              broken: int, knn: float | None, scores: dict[str, float], kept: bool,
              seconds: float) -> dict:
    """One ``metrics.csv`` row (:data:`METRIC_FIELDS`), numbers formatted as written."""
    row = {"epoch": epoch, "step": step, "loss": "" if loss is None else f"{loss:.6f}",
           "lr": f"{lr:.6g}", "images_per_s": "" if speed is None else f"{speed:.1f}",
           "broken": broken, "knn_top1": "" if knn is None else f"{knn:.4f}",
           "kept": int(kept), "seconds": f"{seconds:.1f}"}
    row.update({name: f"{scores[name]:.6g}" if name in scores else ""
                for name in labelfree.SCORES})
    return row
