"""The `groco` command: parses arguments and calls the components; no logic of its own."""

from __future__ import annotations

from pathlib import Path

import typer

from groco.index.faiss.spec import DEFAULT_TUNING
from groco.knn import KNN_K, KNN_TEMPERATURE

app = typer.Typer(
    name="groco",
    help="Turn a folder of unlabeled images into a visual search engine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
index_app = typer.Typer(help="Build, update and evaluate a FAISS index of a collection.",
                        no_args_is_help=True)
app.add_typer(index_app, name="index")


def _fail(error: Exception) -> None:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def _methods_help() -> tuple[str, str]:
    from groco.training.methods import METHODS

    names = "; ".join(f"{name}: {spec.summary}" for name, spec in METHODS.items())
    rates = ", ".join(f"{name} {spec.base_lr['sgd']:g}" for name, spec in METHODS.items())
    return (f"Training objective (default: groco). {names}.",
            f"Base LR per 256 images, scaled linearly (default: per method and optimizer; "
            f"with sgd: {rates}).")


_METHOD_HELP, _LR_HELP = _methods_help()


@app.command()
def train(
    images: Path = typer.Argument(..., help="Folder of images (searched recursively)."),
    out: Path = typer.Option(..., "--out", help="Run directory to write checkpoints and logs to."),
    method: str = typer.Option(None, help=_METHOD_HELP),
    backbone: str = typer.Option(None, help="Any timm model name, or an hf-hub: name with "
                                            "--pretrained (default: resnet18)."),
    image_size: int = typer.Option(None, help="Training and search resolution (default: 224). "
                                              "Compute grows with its square: on 2 CPU cores "
                                              "resnet18 trains ~4x faster at 64 than at 128 px;"
                                              " a pretrained start gains most from a larger "
                                              "size (see README)."),
    small_stem: bool = typer.Option(None, "--small-stem/--no-small-stem",
                                    help="3x3 stride-1 CNN stem: at <= 64 px keeps a 4x larger "
                                         "feature map, at the compute of a 2x larger input "
                                         "(default: on for untrained CNNs at <= 64 px and as "
                                         "a groco checkpoint given to --weights records it; "
                                         "a pretrained or ImageNet start keeps its stem, 4x "
                                         "cheaper: ~55 vs ~18 img/s for EfficientNet-Lite0 "
                                         "at 64 px on 2 CPU cores)."),
    pretrained: bool = typer.Option(None, "--pretrained/--no-pretrained",
                                    help="Start from timm's pretrained weights for --backbone, "
                                         "as timm gets them (Hugging Face cache; offline with "
                                         "HF_HUB_OFFLINE=1). Turns on --finetune."),
    pretrained_file: Path = typer.Option(None, help="A local file of timm's pretrained weights "
                                                    "for --backbone (implies --pretrained)."),
    weights: Path = typer.Option(None, help="Local backbone weights to start from (groco run "
                                            "or timm state dict). Turns on --finetune."),
    finetune: bool = typer.Option(None, "--finetune/--no-finetune",
                                  help="The fine-tuning recipe (default: on when starting "
                                       "from weights): BN statistics frozen, last 3 stages "
                                       "trainable, backbone at 1/3 of the head's LR, one head "
                                       "warm-up epoch, 5 epochs; GroCo at its from-scratch "
                                       "LR, other methods at 0.1x. A 4,000-image collection "
                                       "adapts in ~6 min at 64 px on 2 CPU cores "
                                       "(EfficientNet-Lite0)."),
    trainable_stages: int = typer.Option(None, help="Last backbone stages trained (timm's "
                                                    "coarse groups), 0 = all (default: 3 when "
                                                    "fine-tuning, else 0). More stages cost "
                                                    "more backward compute."),
    backbone_lr_scale: float = typer.Option(None, help="Backbone LR / head LR (default: 1/3 "
                                                       "when fine-tuning, else 1)."),
    head_warmup_epochs: int = typer.Option(None, help="Epochs training only the heads, "
                                                      "backbone frozen (default: 1 when "
                                                      "fine-tuning, else 0)."),
    freeze_bn: bool = typer.Option(None, "--freeze-bn/--no-freeze-bn",
                                   help="Keep the backbone's BatchNorm statistics (default: on "
                                        "when fine-tuning)."),
    epochs: int = typer.Option(None, help="Epochs (default: 100; 5 when fine-tuning)."),
    batch_size: int = typer.Option(None, help="Images per process and step (default: 256)."),
    views: int = typer.Option(None, help="Augmented views per image (default: 2)."),
    optimizer: str = typer.Option(None, help="sgd (default), lars or adamw."),
    lr: float = typer.Option(None, help=_LR_HELP),
    weight_decay: float = typer.Option(None, help="Weight decay (default: 1e-6 for sgd; "
                                                  "1e-4 for simsiam/byol(+gsg) with sgd)."),
    warmup_epochs: float = typer.Option(None, help="Linear warm-up epochs (default: 1)."),
    topk_neg: int = typer.Option(None, help="GroCo: hardest negatives sorted (default: 10)."),
    steepness: float = typer.Option(None, help="GroCo: sorter steepness (default: 1.0)."),
    network: str = typer.Option(None, help="GroCo: odd_even (default) or bitonic."),
    relaxation: str = typer.Option(None, help="GroCo: cauchy (default), logistic, "
                                              "logistic_phi, reciprocal, optimal."),
    temperature: float = typer.Option(None, help="simclr, nnclr, all4one, snclr: softmax "
                                                 "temperature (default: 0.1; all4one and "
                                                 "snclr 0.2)."),
    queue_size: int = typer.Option(None, help="nnclr, all4one, snclr: keys in the support "
                                              "queue / memory bank (default: images in "
                                              "IMAGES, at most 98304)."),
    num_neighbors: int = typer.Option(None, help="all4one, snclr: nearest queue keys per "
                                                 "sample (default: 5)."),
    momentum_base: float = typer.Option(None, help="byol, byol_gsg, all4one, snclr: EMA "
                                                   "momentum at the start (default: 0.99)."),
    momentum_final: float = typer.Option(None, help="EMA momentum at the end, cosine from "
                                                    "--momentum-base (default: 1.0)."),
    predictor_hidden: int = typer.Option(None, help="Predictor width (default: 4096; 512 "
                                                    "for simsiam, simsiam_gsg, byol_gsg)."),
    projector_dim: int = typer.Option(None, help="Projector output dim (default: 2048; 256 "
                                                 "for nnclr, all4one, snclr, byol)."),
    projector_hidden: int = typer.Option(None, help="Projector width (default: 2048)."),
    device: str = typer.Option(None, help="auto (default), cpu or cuda."),
    workers: int = typer.Option(None, help="Data-loading processes (default: 4)."),
    seed: int = typer.Option(None, help="Random seed (default: 0)."),
    eval_every: int = typer.Option(None, help="Score the encoder every N epochs and at the "
                                              "start, 0 = off (default: 1): k-NN top-1 when "
                                              "IMAGES has class subfolders, and the label-free "
                                              "copy-retrieval score (how often an image's "
                                              "augmented copy finds it) always. The best epoch, "
                                              "the start included, is kept as "
                                              "best.safetensors: by k-NN with labels, else by "
                                              "copy retrieval (must gain > 0.01). Measured "
                                              "Kendall tau of copy retrieval with k-NN over "
                                              "16 runs: +0.81 (digits), +0.32 (Fashion-"
                                              "MNIST): a guard against runs that make search "
                                              "worse, not a ranking (BENCHMARKS.md)."),
    eval_data: Path = typer.Option(None, help="Labelled folder for the k-NN monitor's queries "
                                              "(default: leave-one-out on IMAGES)."),
    max_steps_per_epoch: int = typer.Option(None, help="Cap on steps per epoch."),
    crop_min_scale: float = typer.Option(None, help="Smallest random crop, as a fraction of "
                                                    "the image (default: 0.14, the paper's)."),
    flip: bool = typer.Option(None, "--flip/--no-flip", help="Random horizontal flips "
                                                             "(default: on)."),
    config: Path = typer.Option(None, "--config", help="YAML file of settings; flags win."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
) -> None:
    """Pretrain an encoder on IMAGES with GroCo (or another self-supervised method)."""
    import logging

    from groco.training.config import TrainConfig
    from groco.training.trainer import train as run_training

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = {k: v for k, v in locals().items()
                if k not in ("images", "out", "config", "resume", "logging", "TrainConfig",
                             "run_training") and v is not None}
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()}
    try:
        if config is not None:
            cfg = TrainConfig.from_yaml(config, data=str(images), out=str(out), **settings)
        else:
            cfg = TrainConfig(data=str(images), out=str(out), **settings)
        result = run_training(cfg, resume=resume, asked={"data": str(images), **settings})
    except (ValueError, FileNotFoundError, NotADirectoryError, OSError,
            FloatingPointError) as error:
        _fail(error)
    knn = "" if result.knn_top1 is None else f", k-NN top-1 {result.knn_top1:.4f}"
    typer.echo(f"trained {result.epochs} epochs ({result.steps} steps) into {result.run_dir}: "
               f"loss {result.final_loss:.4f}{knn}")
    if result.kept_epoch is not None:
        start = " (no epoch improved on the start)" if result.kept_epoch == 0 else ""
        typer.echo(f"kept epoch {result.kept_epoch}{start}: {result.kept_reason}; "
                   "`groco export` takes it")


@app.command()
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
                                                              "(default: 224)."),
    pretrained: bool = typer.Option(False, "--pretrained", help="--backbone with timm's "
                                                                "pretrained weights."),
    weights: Path = typer.Option(None, "--weights", help="--backbone with this local weights "
                                                         "file (neither: untrained)."),
    raw_pixels: int = typer.Option(None, "--raw-pixels", help="Baseline: the raw-pixel "
                                   "encoder at N x N (resize, flatten, centre, L2)."),
    small_stem: bool = typer.Option(None, "--small-stem/--no-small-stem",
                                    help="--backbone's stem, as `groco train` takes it "
                                         "(default: the same automatic choice)."),
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
        _fail(ValueError("give one of RUN, --backbone NAME or --raw-pixels N"
                         + (f", not {' and '.join(given)}" if given else "")))
    if backbone is None and (pretrained or weights is not None or image_size is not None
                             or small_stem is not None):
        _fail(ValueError("--pretrained, --weights, --image-size and --small-stem go with "
                         "--backbone"))
    if run is None and last:
        _fail(ValueError("--last goes with a RUN directory"))
    try:
        if run is not None:
            report = export_encoder(run, out, precision=precision, data=data, last=last)
        elif backbone is not None:
            from groco.encoder.baselines import export_backbone

            report = export_backbone(backbone, image_size or 224, out, pretrained=pretrained,
                                     weights=weights, precision=precision, data=data,
                                     small_stem=small_stem)
        else:
            from groco.encoder.baselines import export_raw_pixels

            if precision != "fp32":
                raise ValueError("the raw-pixel encoder is fp32 only (it has no weights)")
            report = export_raw_pixels(raw_pixels, out, data=data)
    except (ExportError, ValueError, OSError) as error:
        _fail(error)
    typer.echo(report.summary())


@app.command()
def embed(
    images: list[Path] = typer.Argument(..., help="Image files and/or folders (recursive)."),
    encoder: Path = typer.Option(..., "--encoder", help="ONNX encoder from `groco export`."),
    out: Path = typer.Option(..., "--out", help=".npy file for the (N, dim) float32 rows, in "
                                                "argument order, folders in sorted order."),
    batch_size: int = typer.Option(64, help="Images per inference batch."),
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
        _fail(error)
    typer.echo(f"embedded {len(files)} images into {out} ({vectors.shape[1]} dims, "
               f"{model.provider})")


def _index_logging(verbose: bool = True) -> None:
    import logging

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)


_INDEX_ERRORS = (ValueError, KeyError, OSError, RuntimeError)
"""What index commands turn into one line on stderr and exit 1 (IndexDirError,
IndexMismatchError, EncoderError and ImageError are ValueErrors; FAISS raises RuntimeError)."""


def _summary(report, action: str) -> str:
    broken = f"{report.broken} broken" + (f" ({report.broken_total} in all)"
                                          if report.broken_total != report.broken else "")
    rate = f", {report.images_per_second:.1f} images/s" if report.embedded else ""
    if report.index_type is None:
        return (f"{action} {report.embedded} images into {report.index_dir} ({broken}, "
                f"{report.skipped} already done{rate}); slice {report.part[0]} of "
                f"{report.part[1]}: when all slices are done, run "
                f"`groco index merge {report.index_dir.parent} --out INDEX`")
    recall = ("" if report.recall_at_10 is None
              else f", recall@10 {report.recall_at_10:.3f}")
    params = "".join(f" {k}={v}" for k, v in report.search_params.items())
    return (f"{action} {report.embedded} images ({broken}, {report.skipped} already indexed"
            f"{rate}); {report.index_dir}: {report.count} vectors, "
            f"{report.index_type}{params}{recall}")


_INDEX_TYPE_HELP = "auto (by collection size and --memory) or any FAISS factory string."
_MEMORY_HELP = "Memory budget for --index-type auto, e.g. 8G [default: half the free RAM]."
_ON_DISK_HELP = ("IVF index with its inverted lists in a memory-mapped .ivfdata file "
                 "(IVF-Flat, or OPQ+IVF-PQ when --memory says so); search and serve map it "
                 "instead of loading it.")
_RAY_HELP = ("Embed on Ray Data: 'local' (Ray on this machine) or a cluster address "
             "('auto', ray://HEAD:10001); ONNX Runtime actors write the parts of a "
             "sharded build under OUT/parts, merged into OUT. Needs `pip install "
             "'groco\\[ray]'`.")


@index_app.command("build")
def index_build(
    images: Path = typer.Argument(..., help="Folder of images to index (searched recursively)."),
    encoder: Path = typer.Option(..., "--encoder", help="ONNX encoder from `groco export`."),
    out: Path = typer.Option(..., "--out", help="Index directory to write (or resume)."),
    index_type: str = typer.Option("auto", "--index-type", help=_INDEX_TYPE_HELP),
    memory: str = typer.Option(None, "--memory", help=_MEMORY_HELP),
    target_recall: float = typer.Option(DEFAULT_TUNING.target_recall, "--target-recall",
                                        help="recall@10 the search parameters are tuned to."),
    shard: int = typer.Option(None, "--shard", help="Embed only slice I of --num-shards "
                                                    "[default: RANK under torchrun]."),
    num_shards: int = typer.Option(None, "--num-shards", help="Number of slices "
                                                              "[default: WORLD_SIZE]."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per encoder call."),
    shard_size: int = typer.Option(10_000, "--shard-size",
                                   help="Images per embedding file (the resume granularity)."),
    workers: int = typer.Option(None, "--workers", help="Decoding threads [default: 4]; "
                                                        "with --ray, Ray workers [default: "
                                                        "one per CPU]."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    on_disk: bool = typer.Option(False, "--on-disk", help=_ON_DISK_HELP),
    ray: str = typer.Option(None, "--ray", metavar="ADDRESS", help=_RAY_HELP),
    ray_gpus: float = typer.Option(0.0, "--ray-gpus", help="GPUs per Ray worker (0: CPU)."),
) -> None:
    """Embed IMAGES and build a FAISS index; rerun to resume an interrupted build."""
    _index_logging()
    from groco.index.build import build_index_dir

    try:
        report = build_index_dir(images, encoder, out, index_type=index_type, memory=memory,
                                 target_recall=target_recall, shard=shard,
                                 num_shards=num_shards, batch_size=batch_size,
                                 shard_size=shard_size, workers=workers, progress=progress,
                                 on_disk=on_disk, ray_address=ray, ray_gpus=ray_gpus)
    except _INDEX_ERRORS as error:
        _fail(error)
    typer.echo(_summary(report, "embedded"))


@index_app.command("update")
def index_update(
    index: Path = typer.Argument(..., help="Index directory."),
    encoder: Path = typer.Option(None, "--encoder", help="Encoder [default: the recorded one]."),
    index_type: str = typer.Option(None, "--index-type", help=_INDEX_TYPE_HELP +
                                   " [default: as built]"),
    memory: str = typer.Option(None, "--memory", help=_MEMORY_HELP),
    target_recall: float = typer.Option(None, "--target-recall",
                                        help="recall@10 target [default: as built]."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per encoder call."),
    shard_size: int = typer.Option(10_000, "--shard-size", help="Images per embedding file."),
    workers: int = typer.Option(None, "--workers", help="Decoding threads [default: 4]."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Embed new files, drop deleted ones, re-embed changed ones."""
    _index_logging()
    from groco.index.build import update_index_dir

    try:
        report = update_index_dir(index, encoder_path=encoder, index_type=index_type,
                                  memory=memory, target_recall=target_recall,
                                  batch_size=batch_size, shard_size=shard_size,
                                  workers=workers, progress=progress)
    except _INDEX_ERRORS as error:
        _fail(error)
    typer.echo(f"{report.embedded} new, {report.changed} changed, {report.deleted} deleted, "
               f"{report.touched} touched (same content)")
    typer.echo(_summary(report, "updated:"))
    if report.map is not None:  # the index has a map: the update placed its new items
        typer.echo(report.map.summary())


@index_app.command("merge")
def index_merge(
    parts: list[Path] = typer.Argument(..., help="Part directories of a sharded build, or "
                                                 "the --out folder holding them."),
    out: Path = typer.Option(..., "--out", help="New index directory to write."),
    index_type: str = typer.Option("auto", "--index-type", help=_INDEX_TYPE_HELP),
    memory: str = typer.Option(None, "--memory", help=_MEMORY_HELP),
    target_recall: float = typer.Option(DEFAULT_TUNING.target_recall, "--target-recall",
                                        help="recall@10 target."),
    shard_size: int = typer.Option(10_000, "--shard-size", help="Images per embedding file."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    on_disk: bool = typer.Option(False, "--on-disk", help=_ON_DISK_HELP),
) -> None:
    """Merge the parts of a sharded `index build` into one index (ids by path)."""
    _index_logging()
    from groco.index.build import merge_index_dirs

    try:
        report = merge_index_dirs(parts, out, index_type=index_type, memory=memory,
                                  target_recall=target_recall, shard_size=shard_size,
                                  progress=progress, on_disk=on_disk)
    except _INDEX_ERRORS as error:
        _fail(error)
    typer.echo(_merge_summary(report))


def _merge_summary(report) -> str:
    recall = ("" if report.recall_at_10 is None
              else f", recall@10 {report.recall_at_10:.3f}")
    where = (f"{report.index_dir}: {report.count} vectors, {report.index_type}{recall}")
    if report.skipped:
        return (f"nothing to merge: {report.index_dir} already holds this merge "
                f"({report.skipped} files); {where}")
    return (f"merged {report.copied} files (embeddings copied from the parts, none "
            f"re-embedded; {report.broken_total} broken); {where}")


@index_app.command("repair")
def index_repair(
    index: Path = typer.Argument(..., help="Index directory."),
) -> None:
    """Rebuild the FAISS index and manifest from the stored embeddings (no re-embedding) and
    recover what SQLite can of a damaged meta.sqlite; says what could not come back."""
    _index_logging()
    from groco.index.repair import repair_index_dir

    try:
        report = repair_index_dir(index)
    except _INDEX_ERRORS as error:
        _fail(error)
    typer.echo(report.summary())


@index_app.command("eval")
def index_eval(
    indexes: list[Path] = typer.Argument(..., help="Index directories of one collection (the "
                                                   "same folder, e.g. built with several "
                                                   "encoders): one table row each."),
    k: int = typer.Option(KNN_K, "-k", help="Neighbours in the k-NN vote."),
    temperature: float = typer.Option(KNN_TEMPERATURE, "--temperature",
                                      help="k-NN vote temperature."),
    max_queries: int = typer.Option(10_000, "--max-queries", help="Query sample size."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per "
                                                       "index."),
) -> None:
    """k-NN top-1, precision@10 and mAP@R from folder labels, recall@10 against exact search,
    and latency, over one or more indexes of the same collection (others are refused)."""
    import json

    _index_logging(verbose=False)
    from groco.index.evaluate import evaluate_indexes

    try:
        reports = evaluate_indexes(indexes, k=k, temperature=temperature,
                                   max_queries=max_queries)
    except _INDEX_ERRORS as error:
        _fail(error)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in reports], indent=2))
        return

    def fig(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    first = reports[0]
    typer.echo(f"{first.count} images, {first.labelled} labelled in {first.classes} classes, "
               f"{first.queries} queries; k-NN: k={first.k}, T={first.temperature}, "
               "leave-one-out; mAP@R and k-NN by exact search, precision@10 through the index")
    if first.classes < 2:
        typer.echo("label figures n/a: they need 2+ labelled subfolders")
    header = ("index", "type", "k-NN top-1", "P@10", "mAP@R", "recall@10", "p50 ms", "p99 ms")
    rows = [(r.index_dir, r.index_type, fig(r.knn_top1), fig(r.precision_at_10),
             fig(r.map_at_r), f"{r.recall_at_10:.4f}", f"{r.latency_ms_p50:.3f}",
             f"{r.latency_ms_p99:.3f}") for r in reports]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        typer.echo("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(row, widths, strict=True))))


@index_app.command("dupes")
def index_dupes(
    index: Path = typer.Argument(..., help="Index directory."),
    threshold: float = typer.Option(None, "--threshold",
                                    help="Cosine similarity from which two images are near "
                                         "copies [default: 0.97, chosen on planted copies, "
                                         "see BENCHMARKS.md]; exact copies (same bytes) "
                                         "always group."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of groups."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV, one row per file."),
    neighbours: int = typer.Option(None, "--neighbours",
                                   help="Candidates searched per image [default: 16]."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Group exact duplicates (same content hash) and near-duplicates (cosine >= threshold),
    largest groups first, each file with its similarity to the group's first file.

    Searches each stored embedding's nearest neighbours in the index (a k-NN graph, in
    batches): never an N x N matrix; beyond the loaded index, memory holds the pairs found
    and one batch.
    """
    import csv
    import json
    import sys

    _index_logging(verbose=False)
    from tqdm import tqdm

    from groco.index.dupes import DEFAULT_NEIGHBOURS, DEFAULT_THRESHOLD, find_duplicate_groups

    if as_json and as_csv:
        _fail(ValueError("give --json or --csv, not both"))
    bars: list[tqdm] = []  # made at the first batch: an index that fails to open shows none

    def advance(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="neighbours", unit="img", disable=not progress,
                             file=sys.stderr))
        bars[0].update(done - bars[0].n)

    try:
        groups = find_duplicate_groups(
            index, DEFAULT_THRESHOLD if threshold is None else threshold,
            neighbours=neighbours or DEFAULT_NEIGHBOURS, progress=advance)
    except _INDEX_ERRORS as error:
        _fail(error)
    finally:
        for bar in bars:
            bar.close()
    if as_json:
        typer.echo(json.dumps([g.to_dict() for g in groups], indent=2))
        return
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["group", "group_size", "relpath", "score", "exact", "label", "hash",
                         "bytes", "path"])
        for number, group in enumerate(groups, 1):
            for f in group.files:
                writer.writerow([number, group.size, f.relpath, f"{f.score:.6f}",
                                 int(f.exact), f.label or "", f.hash, f.size, f.path])
        return
    copies = sum(g.size - 1 for g in groups)
    typer.echo(f"{len(groups)} groups, {copies} copies beyond the first file of each")
    for number, group in enumerate(groups, 1):
        kind = "exact" if group.exact else f"near, min score {group.min_score:.4f}"
        typer.echo(f"group {number}: {group.size} files ({kind})")
        for f in group.files:
            typer.echo(f"  {f.score:.4f}  {'=' if f.exact else ' '} {f.relpath}")


@index_app.command("map")
def index_map(
    index: Path = typer.Argument(..., help="Index directory."),
    neighbors: int = typer.Option(15, "--neighbors", help="Neighbours per item in the "
                                                          "layout's k-NN graph (itself "
                                                          "included)."),
    clusters: int = typer.Option(None, "--clusters", help="k-means clusters (default: "
                                                          "sqrt(N/10), 2..50)."),
    min_dist: float = typer.Option(0.1, "--min-dist", help="UMAP min_dist."),
    epochs: int = typer.Option(None, "--epochs", help="UMAP epochs (default: 200 above "
                                                      "10k items, else 500)."),
    seed: int = typer.Option(None, "--seed", help="Fix the layout's randomness (UMAP then "
                                                  "runs on one core; default: random, on "
                                                  "all cores)."),
    force: bool = typer.Option(False, "--force", help="Recompute an up-to-date map."),
    as_json: bool = typer.Option(False, "--json", help="Print each item's coordinates, "
                                                       "cluster and path, and the clusters."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
) -> None:
    """A 2D UMAP layout of every item over the index's own k-NN graph, with k-means
    clusters, stored in the index directory (resumable; needs `pip install 'groco\\[map]'`).
    `groco index update` places new items on it."""
    import json

    _index_logging(verbose=progress and not as_json)
    from groco.index.map import MapExtraMissing, compute_map, iter_map_items, read_map

    try:
        report = compute_map(index, n_neighbors=neighbors, clusters=clusters,
                             min_dist=min_dist, n_epochs=epochs, seed=seed,
                             progress=progress, force=force)
        data = read_map(index) if as_json else None
    except (*_INDEX_ERRORS, MapExtraMissing) as error:
        _fail(error)
    if not as_json:
        typer.echo(report.summary())
        return
    typer.echo(json.dumps({"index": str(index), "count": len(data.ids),
                           "clusters": data.clusters, "items": list(iter_map_items(index, data))}))


@app.command()
def search(
    index: Path = typer.Argument(..., help="Index directory."),
    image: Path = typer.Argument(..., help="Query image."),
    k: int = typer.Option(10, "-k", help="Number of neighbours."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    encoder: Path = typer.Option(None, "--encoder", help="Encoder [default: the recorded one]."),
    min_score: float = typer.Option(None, "--min-score",
                                    help="Leave out results below this cosine similarity "
                                         "(-1..1), so fewer than k may come back."),
) -> None:
    """Print the nearest neighbours of IMAGE in INDEX."""
    import json

    _index_logging(verbose=False)
    from groco.index.api import IndexReader

    try:
        with IndexReader(index, encoder_path=encoder) as reader:
            results = reader.search_image(image, k=k, min_score=min_score)
    except _INDEX_ERRORS as error:
        _fail(error)
    if as_json:
        rows = [{"rank": i + 1, **r.to_dict()} for i, r in enumerate(results)]
        typer.echo(json.dumps({"query": str(image), "index": str(index), "k": k,
                               "min_score": min_score, "results": rows}, indent=2))
        return
    for i, r in enumerate(results, 1):
        typer.echo(f"{i:3d}  {r.score:.4f}  {r.label or '-':<16} {r.path}")


@app.command()
def serve(
    index: Path = typer.Argument(..., help="Index directory."),
    host: str = typer.Option("127.0.0.1", help="Address to bind to."),
    port: int = typer.Option(7860, help="Port to listen on."),
    encoder: Path = typer.Option(None, help="Encoder file [default: the index's]."),
) -> None:
    """Serve the visual search web UI over INDEX (on 127.0.0.1 unless --host says else)."""
    from groco.app.web import launch_app

    try:
        launch_app(index, host=host, port=port, encoder=encoder, block=True)
    except (ValueError, OSError) as error:
        _fail(error)


@app.command()
def demo(
    data: Path | None = typer.Option(None, "--data", help="Image folder with class subfolders "
                                                          "[default: scikit-learn's digits]."),
    work: Path = typer.Option(Path("groco-demo"), help="Folder for the demo's run, encoder "
                                                       "and index."),
    epochs: int = typer.Option(None, help="Training epochs [default: 6]."),
    serve_ui: bool = typer.Option(True, "--serve/--no-serve", help="Open the web UI at the end."),
    port: int = typer.Option(7860, help="Port of the web UI."),
) -> None:
    """Train, export and index a small collection, report k-NN accuracy, open the web UI."""
    import logging

    from groco.demo import RAW_PIXELS_SIZE, run_demo

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        result = run_demo(work, data, epochs, log=typer.echo)
    except (ValueError, OSError) as error:
        _fail(error)
    typer.echo(f"k-NN top-1 (k={KNN_K}, leave-one-out, folder labels): {result.knn_top1:.1%} with "
               f"the trained encoder, {result.raw_knn_top1:.1%} raw pixels "
               f"({RAW_PIXELS_SIZE} px), {result.random_knn_top1:.1%} untrained; "
               f"{result.seconds:.0f} s from images to index")
    if not result.beats_baselines:
        typer.echo("the trained encoder does not beat what you have without training on "
                   "this collection: train longer, or start from pretrained weights "
                   "(`groco train --pretrained`)")
    if serve_ui:
        from groco.app.web import launch_app

        typer.echo(f"serving {result.index} on http://127.0.0.1:{port} (Ctrl-C to stop)")
        launch_app(result.index, port=port, block=True)


if __name__ == "__main__":
    app()
