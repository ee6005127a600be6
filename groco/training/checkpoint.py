"""The run directory: what `groco train` writes and `groco export` / `--resume` read.

    RUN/config.yaml              the full training configuration (``TrainConfig`` as a dict)
    RUN/epochs/000003/           one checkpoint *generation*: the run as it was after epoch 3
        last.safetensors         model weights (``backbone.*``, ``projector.*``, method heads),
                                 ``parity.*`` (:data:`PARITY_IMAGES`), the epoch and the
                                 network's facts in its metadata
        best.safetensors         the kept epoch's weights (epoch 0 = the start), its epoch,
                                 criterion and scores in the metadata; a hard link to the
                                 previous generation's file when the kept epoch did not change
        last.state.safetensors   optimiser tensors
        metrics.csv              one row per finished epoch, up to this one
        last.json                epoch, step, optimiser hyper-parameters, the sha256 of every
                                 other file of the generation; written last
    RUN/checkpoint -> epochs/000003          the current generation (a symbolic link)
    RUN/last.safetensors -> checkpoint/last.safetensors   (and best.safetensors, metrics.csv,
                                 last.json, last.state.safetensors the same way)

A generation is written whole into a staging folder, renamed into ``epochs/``, and made
current by replacing the one ``checkpoint`` link (:func:`os.replace`, atomic); older
generations are removed after. So whenever a process is killed, every name under ``RUN/``
describes the same finished epoch: the previous generation or the new one, never a mix.
:func:`load_generation` checks that the parts agree (epochs, checksums) and refuses a set
that does not with a one-line :class:`RunError`.

Run directories written before generations existed (the same five names as plain files)
are read as they are; resuming one checks that its weights and state name the same epoch,
and its first new generation replaces the plain files by the links.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save, save_file

from groco.fileio import atomic_path, atomic_write_text, fsync_dir

CONFIG = "config.yaml"
WEIGHTS = "last.safetensors"
BEST = "best.safetensors"
STATE_TENSORS = "last.state.safetensors"
STATE = "last.json"
METRICS = "metrics.csv"
GENERATION_FILES = (WEIGHTS, BEST, STATE_TENSORS, METRICS, STATE)
"""The names a generation holds, :data:`STATE` last; each is linked from the run folder."""
CURRENT = "checkpoint"
GENERATIONS = "epochs"
EPOCH_KEY = "epoch"
"""Metadata key of a weights file: the epoch its weights are from."""
PARITY = "parity."
PARITY_IMAGES = PARITY + "images"
PARITY_FEATURES = PARITY + "features"
"""Tensors of a weights file beside the network's: a few of the run's images as the encoder
sees them (uint8 ``(n, 3, S, S)``) and the unit-norm features the trained network gave them
(float32 ``(n, D)``); ``groco export`` checks the network it rebuilds against them."""
PARITY_COUNT = 4


class RunError(ValueError):
    """A run directory that is missing, incomplete, inconsistent or unreadable."""


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


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def save_weights(run_dir: Path, state_dict: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None, name: str = WEIGHTS) -> None:
    """Write ``state_dict`` to ``run_dir / name`` atomically, outside any generation (a run
    made of one weights file, as :func:`groco.encoder.export.export_untrained` writes)."""
    with atomic_path(run_dir / name) as tmp:
        save_file(_cpu(state_dict), str(tmp), metadata=metadata)


def load_weights(run_dir: str | Path, prefix: str | None = None,
                 name: str = WEIGHTS) -> dict[str, torch.Tensor]:
    """The run's weights (``name``: :data:`WEIGHTS` or :data:`BEST`); with ``prefix``
    (e.g. ``"backbone."``) only those, prefix removed, and only those read from disk."""
    from safetensors import safe_open

    path = Path(run_dir) / name
    if not path.is_file():
        raise RunError(f"{run_dir}: no checkpoint ({name}); has `groco train` finished "
                       "an epoch?")
    try:
        with safe_open(str(path), framework="pt") as file:
            names = file.keys()  # a safe_open handle: keys() is its listing
            keys = [k for k in names if prefix is None or k.startswith(prefix)]
            return {key[len(prefix or ""):]: file.get_tensor(key) for key in keys}
    except Exception as error:  # safetensors raises several types for a corrupt file
        raise RunError(f"{path}: unreadable checkpoint ({error})") from error


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
    epoch = meta.get(EPOCH_KEY, "?")
    what = "the start (epoch 0)" if epoch == "0" else f"epoch {epoch}"
    reason = meta.get("reason", "")
    return BEST, f"{what} from {BEST}" + (f": {reason}" if reason else "")


# ----------------------------------------------------------------------------- generations
@dataclass
class Generation:
    """Everything a run is after ``epoch``: what :func:`save_generation` writes as a whole.

    ``best``: the kept epoch's ``(weights, metadata)`` when this epoch changed it, else
    ``None`` (the previous generation's file is kept). ``state``: JSON-able resume state
    (``epoch`` and ``step`` at least); ``metrics``: every row up to this epoch.
    """

    epoch: int
    weights: dict[str, torch.Tensor]
    weights_metadata: dict[str, str]
    state_tensors: dict[str, torch.Tensor]
    state: dict[str, Any]
    metrics: list[dict[str, Any]]
    metric_fields: list[str]
    best: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None


def generation_name(epoch: int) -> str:
    return f"{epoch:06d}"


def _write_synced(path: Path, data: bytes) -> str:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    return hashlib.sha256(data).hexdigest()


def _metrics_bytes(rows: Iterable[dict[str, Any]], fields: list[str]) -> bytes:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _replace_link(link: Path, target: str) -> None:
    """Make ``link`` a symbolic link to ``target`` in one atomic step (``os.replace``)."""
    tmp = link.with_name(f".{link.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _link_names(run_dir: Path, replace_files: bool) -> None:
    """``RUN/<name> -> checkpoint/<name>`` for every generation file: made before the first
    generation becomes current (dangling until then), so the names appear with it; a plain
    file of an older run directory is replaced only when ``replace_files`` (after the
    generation that supersedes it is current)."""
    for name in GENERATION_FILES:
        link = run_dir / name
        target = f"{CURRENT}/{name}"
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if replace_files or not link.exists():
            _replace_link(link, target)


def save_generation(run_dir: Path, generation: Generation) -> None:
    """Write ``generation`` as ``RUN/epochs/NNNNNN`` and make it current (see the module
    docstring): staging folder, one fsynced file each (``last.json`` with the others'
    sha256 last), rename, then the ``checkpoint`` link replaced; older generations removed.
    """
    run_dir = Path(run_dir)
    folder = run_dir / GENERATIONS
    folder.mkdir(parents=True, exist_ok=True)
    name = generation_name(generation.epoch)
    staging = folder / f".{name}.tmp"
    final = folder / name
    previous = current_generation(run_dir)
    for stale in (staging, final):  # left by a kill before they became current
        if stale.exists() and previous != stale.resolve():
            shutil.rmtree(stale)
    staging.mkdir()
    sums = {
        WEIGHTS: _write_synced(staging / WEIGHTS, save(_cpu(generation.weights),
                                                       generation.weights_metadata)),
        STATE_TENSORS: _write_synced(staging / STATE_TENSORS,
                                     save(_cpu(generation.state_tensors))),
        METRICS: _write_synced(staging / METRICS, _metrics_bytes(generation.metrics,
                                                                 generation.metric_fields)),
    }
    if generation.best is not None:
        tensors, metadata = generation.best
        sums[BEST] = _write_synced(staging / BEST, save(_cpu(tensors), metadata))
    elif previous is not None and (previous / BEST).is_file():
        try:
            os.link(previous / BEST, staging / BEST)
        except OSError:  # a file system without hard links
            shutil.copyfile(previous / BEST, staging / BEST)
        sums[BEST] = _sha256(staging / BEST)
    state = {**generation.state, "files": sums}
    _write_synced(staging / STATE, json.dumps(state, indent=1).encode("utf-8"))
    fsync_dir(staging)
    os.rename(staging, final)
    fsync_dir(folder)
    _link_names(run_dir, replace_files=False)
    _replace_link(run_dir / CURRENT, f"{GENERATIONS}/{name}")
    _link_names(run_dir, replace_files=True)
    fsync_dir(run_dir)
    for old in folder.iterdir():
        if old.name != name:
            shutil.rmtree(old) if old.is_dir() else old.unlink()


def current_generation(run_dir: Path) -> Path | None:
    """The folder ``RUN/checkpoint`` points to, or None (no generation yet, or a run
    directory written before generations)."""
    link = Path(run_dir) / CURRENT
    if not link.is_symlink():
        return None
    return link.resolve()


def read_metrics(path: Path) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` (empty when there is none)."""
    if not path.is_file():
        return []
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@dataclass
class Restored:
    """A checkpoint as :func:`load_generation` read and checked it."""

    epoch: int
    state: dict[str, Any]
    state_tensors: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]
    metrics: list[dict[str, str]]
    best_metadata: dict[str, str] | None


def _refuse(run_dir: Path, what: str) -> RunError:
    return RunError(
        f"{run_dir}: the checkpoint cannot be resumed exactly ({what}); start a new run from "
        f"its weights (groco train IMAGES --out NEW --weights {run_dir / WEIGHTS})")


def load_generation(run_dir: str | Path) -> Restored | None:
    """The run's current checkpoint, checked, or None when it has none yet.

    Checks: every file the state lists has its recorded sha256 (generations), the weights
    and the state name the same epoch, the metrics end at that epoch and the kept epoch is
    not later; :class:`RunError` (one line, saying what to do) otherwise.
    """
    run_dir = Path(run_dir)
    current = current_generation(run_dir)
    folder = current if current is not None else run_dir
    if current is None and (run_dir / CURRENT).exists():
        raise _refuse(run_dir, f"{CURRENT} is not a link to a generation")
    if not (folder / STATE).is_file():
        if current is not None:
            raise _refuse(run_dir, f"{current.name} has no {STATE}")
        return None
    try:
        state = json.loads((folder / STATE).read_text())
    except (OSError, ValueError) as error:
        raise _refuse(run_dir, f"{STATE} unreadable: {error}") from None
    epoch = int(state.get("epoch", -1))
    for name, digest in state.get("files", {}).items():
        if not (folder / name).is_file() or _sha256(folder / name) != digest:
            raise _refuse(run_dir, f"{name} of epoch {epoch} is missing or changed")
    recorded = weights_metadata(folder, WEIGHTS).get(EPOCH_KEY)
    if recorded is None or int(recorded) != epoch:
        raise _refuse(run_dir, f"{WEIGHTS} holds epoch {recorded}, {STATE} epoch {epoch}")
    best = weights_metadata(folder, BEST) if (folder / BEST).is_file() else None
    if best is not None and int(best.get(EPOCH_KEY, -1)) > epoch:
        raise _refuse(run_dir, f"{BEST} holds epoch {best.get(EPOCH_KEY)}, later than {epoch}")
    metrics = read_metrics(folder / METRICS)
    if current is None:  # an older run directory appended rows before its checkpoint
        metrics = [row for row in metrics if int(row["epoch"]) <= epoch]
    if metrics and int(metrics[-1]["epoch"]) != epoch:
        raise _refuse(run_dir, f"{METRICS} ends at epoch {metrics[-1]['epoch']}, not {epoch}")
    try:
        tensors = load_file(str(folder / STATE_TENSORS))
        weights = load_file(str(folder / WEIGHTS))
    except Exception as error:  # safetensors raises several types for a corrupt file
        raise _refuse(run_dir, f"unreadable weights: {error}") from None
    return Restored(epoch, state, tensors, weights, metrics, best)
