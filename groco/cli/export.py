"""`groco export` (a run's encoder or a baseline to ONNX) and `groco embed` (images to a
.npy file with an encoder)."""

from __future__ import annotations

from pathlib import Path

import typer

from groco.cli.app import fail
from groco.training.geometry import DEFAULT_MAX_COST


def export(
    run: Path = typer.Argument(None, help="Run directory written by `groco train` (or use "
                                          "--backbone / --raw-pixels for a baseline)."),
    out: Path = typer.Option(..., "--out", help="ONNX file to write."),
    precision: str = typer.Option("fp32", help="fp32, fp16 or int8 (static, calibrated)."),
    data: Path = typer.Option(None, "--data", help="Images for the parity check and int8 "
                                                   "calibration (default: the run's data)."),
    last: bool = typer.Option(False, "--last", help="Export the last epoch even when the run "
                                                    "kept a better one (best.safetensors)."),
    backbone: str = typer.Option(None, "--backbone", help="Baseline: export this timm network "
                                                          "as it is, without a run."),
    image_size: int = typer.Option(None, "--image-size", help="Input size of --backbone "
                                   "(default: measured on --data for a start from weights, "
                                   "as --geometry auto; else 224).", min=8, max=4096),
    pretrained: bool = typer.Option(False, "--pretrained", help="--backbone with timm's "
                                                                "pretrained weights."),
    weights: Path = typer.Option(None, "--weights", help="--backbone with this local weights "
                                                         "file (neither: untrained)."),
    raw_pixels: int = typer.Option(None, "--raw-pixels", help="Baseline: the raw-pixel "
                                   "encoder at N x N (resize, flatten, centre, L2).",
                                   min=1, max=1024),
    small_stem: bool = typer.Option(None, "--small-stem/--no-small-stem",
                                    help="--backbone's stem, as `groco train` takes it "
                                         "(default: the same automatic choice)."),
    pool: str = typer.Option(None, "--pool", help="--backbone's global pooling: avg or max "
                             "(default: avg; --geometry auto measures both)."),
    geometry: str = typer.Option(None, "--geometry", help="--backbone's size, stem and "
                                 "pooling: auto (scored on --data; raw pixels too with "
                                 "labels) or e.g. 96, 64s1, 96s1-max, raw32."),
    max_cost: float = typer.Option(DEFAULT_MAX_COST, "--max-cost", help="--geometry auto: "
                                   "FLOPs cap, relative to the network at its pretraining "
                                   "size.", min=0.001, max=1000.0),
) -> None:
    """Export a run's encoder, or a baseline, to ONNX (unit-norm embeddings; facts in the
    file's metadata).

    From a run, takes its best epoch (best.safetensors) when it kept one, else the last, and
    says which and why. Baselines index like any encoder: `--backbone NAME --image-size N
    [--pretrained | --weights FILE]` (the network as it is, with its own mean/std) and
    `--raw-pixels N`.
    """
    import logging

    from groco.encoder.export import ExportError, export_encoder

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    given = [name for name, value in (("RUN", run), ("--backbone", backbone),
                                      ("--raw-pixels", raw_pixels)) if value is not None]
    if len(given) != 1:
        fail(ValueError("give one of RUN, --backbone NAME or --raw-pixels N"
                         + (f", not {' and '.join(given)}" if given else "")))
    if backbone is None and (pretrained or weights is not None or image_size is not None
                             or small_stem is not None or geometry is not None
                             or pool is not None):
        fail(ValueError("--pretrained, --weights, --image-size, --small-stem, --pool and "
                         "--geometry go with --backbone"))
    if geometry is not None and (image_size is not None or small_stem is not None
                                 or pool is not None):
        fail(ValueError("--geometry sets the size, stem and pooling: give it, or "
                         "--image-size, --small-stem and --pool, not both"))
    if run is None and last:
        fail(ValueError("--last goes with a RUN directory"))
    try:
        if run is not None:
            from groco.training.geometry import raw_pixels_note

            report = export_encoder(run, out, precision=precision, data=data, last=last)
            note = raw_pixels_note(run)
            if note:
                typer.echo(note)
        elif backbone is not None:
            from groco.encoder.baselines import export_backbone
            from groco.training.geometry import default_geometry

            implicit = (data is not None and small_stem is None and geometry is None
                        and pool is None)
            if implicit:
                geometry = default_geometry({"pretrained": pretrained, "weights": weights,
                                             "image_size": image_size})
                if geometry:
                    typer.echo("a start from weights without --image-size or --geometry: "
                               "scoring its geometries on --data (--geometry auto)")
            if geometry is not None:
                from groco.training.geometry import resolve_geometry

                chosen = resolve_geometry(geometry, backbone, data, pretrained=pretrained,
                                          weights=weights, max_cost=max_cost,
                                          record=out.with_name(out.name + ".geometry.json"),
                                          networks_only=implicit or precision != "fp32",
                                          progress=typer.echo)
                image_size, small_stem = chosen.image_size, chosen.small_stem
                pool = chosen.pool
                if chosen.raw:
                    raw_pixels = chosen.image_size
                    typer.echo(f"geometry {chosen.name}: writing the raw-pixel encoder at "
                               f"{raw_pixels} px, not {backbone}")
            if raw_pixels is None:
                report = export_backbone(backbone, image_size or 224, out,
                                         pretrained=pretrained, weights=weights,
                                         precision=precision, data=data,
                                         small_stem=small_stem, pool=pool or "avg")
        if raw_pixels is not None:
            from groco.encoder.baselines import export_raw_pixels

            if precision != "fp32":
                raise ValueError("the raw-pixel encoder is fp32 only (it has no weights)")
            report = export_raw_pixels(raw_pixels, out, data=data)
    except (ExportError, ValueError, OSError) as error:
        fail(error)
    typer.echo(report.summary())


def embed(
    images: list[Path] = typer.Argument(..., help="Image files and/or folders (recursive)."),
    encoder: Path = typer.Option(..., "--encoder", help="ONNX encoder from `groco export`."),
    out: Path = typer.Option(..., "--out", help=".npy file for the (N, dim) float32 rows, in "
                                                "argument order, folders in sorted order."),
    batch_size: int = typer.Option(64, help="Images per inference batch.", min=1, max=65_536),
) -> None:
    """Embed images with an encoder into a .npy file (one unit-norm row per image)."""
    import numpy as np

    from groco.encoder.runtime import Encoder
    from groco.fileio import atomic_path
    from groco.images import find_images

    try:
        files = [f for p in images for f in (find_images(p) if p.is_dir() else [p])]
        model = Encoder(encoder, batch_size=batch_size)
        vectors = model.embed(files)
        with atomic_path(out) as tmp, open(tmp, "wb") as file:
            np.save(file, vectors)
    except (ValueError, OSError) as error:
        fail(error)
    typer.echo(f"embedded {len(files)} images into {out} ({vectors.shape[1]} dims, "
               f"{model.provider})")
