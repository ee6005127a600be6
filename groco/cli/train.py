"""`groco train`: its options are :class:`~groco.training.config.TrainConfig`'s fields, made
from each field's type, default and help (one place for a setting), plus IMAGES, --out,
--config and --resume."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Any

import typer

from groco.cli.app import fail
from groco.training.config import TrainConfig

PATH_SETTINGS = {"weights", "pretrained_file", "eval_data"}
"""Settings given as paths on the command line (stored as strings in config.yaml)."""


def _option_type(annotation: Any) -> type:
    """The one concrete type of a field's annotation (``int | None`` -> ``int``)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def setting_options() -> list[inspect.Parameter]:
    """One keyword parameter per command-line field of :class:`TrainConfig`: a
    ``typer.Option`` named ``--field-name`` (``--x/--no-x`` for booleans) with the field's
    help and default ``None``, so an unset option leaves the config's default (or
    ``--config``'s value) in place."""
    hints = typing.get_type_hints(TrainConfig)
    params = []
    for field in dataclasses.fields(TrainConfig):
        if not field.metadata.get("cli"):
            continue
        kind = Path if field.name in PATH_SETTINGS else _option_type(hints[field.name])
        flag = "--" + field.name.replace("_", "-")
        names = (f"{flag}/--no-{flag[2:]}",) if kind is bool else (flag,)
        option = typer.Option(None, *names, help=field.metadata["help"], show_default=False,
                              min=field.metadata["low"], max=field.metadata["high"])
        params.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=option, annotation=kind | None))
    return params


def train(images: Path, out: Path, config: Path | None, resume: bool,
          **settings: Any) -> None:
    """Pretrain an encoder on IMAGES with GroCo (or another self-supervised method)."""
    import logging

    from groco.training.trainer import train as run_training

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    given = {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()
             if v is not None}
    try:
        if not resume:
            from groco.training.geometry import default_geometry

            named = {**(_file_settings(config) if config is not None else {}), **given}
            if default_geometry(named):
                given["geometry"] = default_geometry(named)
                typer.echo("a start from weights without --image-size or --geometry: "
                           "scoring its geometries on IMAGES (--geometry auto)")
        if config is not None:
            cfg = TrainConfig.from_yaml(config, data=str(images), out=str(out), **given)
        else:
            cfg = TrainConfig(data=str(images), out=str(out), **given)
        result = run_training(cfg, resume=resume, asked={"data": str(images), **given})
    except (ValueError, FileNotFoundError, NotADirectoryError, OSError,
            FloatingPointError) as error:
        fail(error)
    knn = "" if result.knn_top1 is None else f", k-NN top-1 {result.knn_top1:.4f}"
    typer.echo(f"trained {result.epochs} epochs ({result.steps} steps) into {result.run_dir}: "
               f"loss {result.final_loss:.4f}{knn}")
    if result.kept_epoch is not None:
        start = " (no epoch improved on the start)" if result.kept_epoch == 0 else ""
        typer.echo(f"kept epoch {result.kept_epoch}{start}: {result.kept_reason}; "
                   "`groco export` takes it")


def _file_settings(config: Path) -> dict[str, Any]:
    """The settings a ``--config`` YAML file names (empty when it cannot be read: building
    the run's config reports that)."""
    import yaml

    try:
        values = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return values if isinstance(values, dict) else {}


def _signature() -> list[inspect.Parameter]:
    keyword = inspect.Parameter.KEYWORD_ONLY
    help_of = {field.name: field.metadata["help"] for field in dataclasses.fields(TrainConfig)}
    return [
        inspect.Parameter("images", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Path,
                          default=typer.Argument(..., metavar="IMAGES", help=help_of["data"])),
        inspect.Parameter("out", keyword, annotation=Path, default=typer.Option(
            ..., "--out", help=help_of["out"])),
        *setting_options(),
        inspect.Parameter("config", keyword, annotation=Path | None, default=typer.Option(
            None, "--config", help="YAML file of settings; flags win.")),
        inspect.Parameter("resume", keyword, annotation=bool, default=typer.Option(
            False, "--resume", help="Continue the run in --out with its own settings.")),
    ]


train.__signature__ = inspect.Signature(_signature())
train.__annotations__ = {p.name: p.annotation for p in train.__signature__.parameters.values()}
