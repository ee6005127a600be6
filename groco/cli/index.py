"""`groco index`: build, update, merge, repair, eval, dupes and map of an index directory."""

from __future__ import annotations

import os
import re
from pathlib import Path

import typer
from typer.core import TyperCommand

from groco.cli.app import INDEX_ERRORS, fail, index_app, index_logging
from groco.index.faiss.spec import DEFAULT_TUNING
from groco.index.postprocess import DEFAULT_POSTPROCESS
from groco.knn import KNN_K, KNN_TEMPERATURE


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
_ON_DISK_HELP = ("IVF index whose inverted lists stay on disk (a memory-mapped .ivfdata "
                 "file), for collections larger than RAM.")
_POSTPROCESS_HELP = ("Search post-processing: none, or + joined centre, dbaK (stored "
                     "vectors averaged with K nearest), qeK (query expansion).")
RAY_ALONE = "RAY_ADDRESS"
"""What a lone ``--ray`` stands for until :func:`ray_address` reads it: the cluster named by
the ``RAY_ADDRESS`` environment variable, or Ray started on this machine without one."""
_RAY_HELP = ("Embed on Ray Data (the ray extra): alone, the cluster in RAY_ADDRESS or Ray "
             "started here; or that ADDRESS ('auto', ray://HEAD:10001).")


def looks_like_ray_address(token: str) -> bool:
    """True for what ``--ray`` takes as its address: ``local``, ``auto``, ``HOST:PORT`` or
    a ``scheme://`` address; anything else after a lone ``--ray`` is the next argument."""
    return (token in ("local", "auto") or "://" in token
            or re.fullmatch(r"[\w.-]+:\d+", token) is not None)


def ray_address(value: str | None) -> str | None:
    """The address ``--ray`` names: a lone ``--ray`` is ``$RAY_ADDRESS``, else ``local``."""
    if value == RAY_ALONE:
        return os.environ.get("RAY_ADDRESS") or "local"
    return value


class OptionalRayAddress(TyperCommand):
    """A command whose ``--ray`` takes an optional address: given alone (last, or before an
    option or a positional that is not an address) it means :data:`RAY_ALONE`."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        args = list(args)
        for i, arg in enumerate(args):
            if arg == "--ray" and (i + 1 == len(args) or not looks_like_ray_address(args[i + 1])):
                args.insert(i + 1, RAY_ALONE)
        return super().parse_args(ctx, args)


@index_app.command("build", cls=OptionalRayAddress)
def index_build(
    images: Path = typer.Argument(..., help="Folder of images to index (searched recursively)."),
    encoder: Path = typer.Option(..., "--encoder", help="ONNX encoder from `groco export`."),
    out: Path = typer.Option(..., "--out", help="Index directory to write (or resume)."),
    index_type: str = typer.Option("auto", "--index-type", help=_INDEX_TYPE_HELP),
    memory: str = typer.Option(None, "--memory", help=_MEMORY_HELP),
    target_recall: float = typer.Option(DEFAULT_TUNING.target_recall, "--target-recall",
                                        help="recall@10 the search parameters are tuned to.",
                                        min=0.01, max=1.0),
    shard: int = typer.Option(None, "--shard", help="Embed only slice I of --num-shards "
                                                    "[default: RANK under torchrun].",
                              min=0, max=1_000_000),
    num_shards: int = typer.Option(None, "--num-shards", help="Number of slices "
                                                              "[default: WORLD_SIZE].",
                                   min=1, max=1_000_000),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per encoder call.",
                                   min=1, max=65_536),
    shard_size: int = typer.Option(10_000, "--shard-size",
                                   help="Images per embedding file (the resume granularity).",
                                   min=1, max=1_000_000_000),
    workers: int = typer.Option(None, "--workers", help="Decoding threads [default: 4]; "
                                                        "with --ray, Ray workers [default: "
                                                        "one per CPU].", min=1, max=100_000),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    on_disk: bool = typer.Option(False, "--on-disk", help=_ON_DISK_HELP),
    ray: str = typer.Option(None, "--ray", metavar="[ADDRESS]", help=_RAY_HELP),
    ray_gpus: float = typer.Option(0.0, "--ray-gpus", help="GPUs per Ray worker (0: CPU).",
                                   min=0.0, max=64.0),
    postprocess: str = typer.Option(DEFAULT_POSTPROCESS.name, "--postprocess",
                                    help=_POSTPROCESS_HELP),
) -> None:
    """Embed IMAGES and build a FAISS index; rerun to resume an interrupted build."""
    index_logging()
    from groco.index.build import build_index_dir

    try:
        report = build_index_dir(images, encoder, out, index_type=index_type, memory=memory,
                                 target_recall=target_recall, shard=shard,
                                 num_shards=num_shards, batch_size=batch_size,
                                 shard_size=shard_size, workers=workers, progress=progress,
                                 on_disk=on_disk, ray_address=ray_address(ray),
                                 ray_gpus=ray_gpus, postprocess=postprocess)
    except INDEX_ERRORS as error:
        fail(error)
    typer.echo(_summary(report, "embedded"))


@index_app.command("update")
def index_update(
    index: Path = typer.Argument(..., help="Index directory."),
    encoder: Path = typer.Option(None, "--encoder", help="Encoder [default: the recorded one]."),
    index_type: str = typer.Option(None, "--index-type", help=_INDEX_TYPE_HELP +
                                   " [default: as built]"),
    memory: str = typer.Option(None, "--memory", help=_MEMORY_HELP),
    target_recall: float = typer.Option(None, "--target-recall",
                                        help="recall@10 target [default: as built].",
                                        min=0.01, max=1.0),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per encoder call.",
                                   min=1, max=65_536),
    shard_size: int = typer.Option(10_000, "--shard-size", help="Images per embedding file.",
                                   min=1, max=1_000_000_000),
    workers: int = typer.Option(None, "--workers", help="Decoding threads [default: 4].",
                                min=1, max=100_000),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    postprocess: str = typer.Option(None, "--postprocess",
                                    help=_POSTPROCESS_HELP + " [default: as built]"),
) -> None:
    """Embed new files, drop deleted ones, re-embed changed ones."""
    index_logging()
    from groco.index.build import update_index_dir

    try:
        report = update_index_dir(index, encoder_path=encoder, index_type=index_type,
                                  memory=memory, target_recall=target_recall,
                                  batch_size=batch_size, shard_size=shard_size,
                                  workers=workers, progress=progress,
                                  postprocess=postprocess)
    except INDEX_ERRORS as error:
        fail(error)
    typer.echo(f"{report.embedded} new, {report.changed} changed, {report.deleted} deleted, "
               f"{report.touched} touched (same content)")
    typer.echo(_summary(report, "updated:"))
    if report.graph is not None and any(report.graph.values()):
        typer.echo(f"neighbour graph: {report.graph['added']} items added, "
                   f"{report.graph['removed']} removed, {report.graph['searched']} rows "
                   "searched")
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
                                        help="recall@10 target.",
                                        min=0.01, max=1.0),
    shard_size: int = typer.Option(10_000, "--shard-size", help="Images per embedding file.",
                                   min=1, max=1_000_000_000),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    on_disk: bool = typer.Option(False, "--on-disk", help=_ON_DISK_HELP),
    postprocess: str = typer.Option(DEFAULT_POSTPROCESS.name, "--postprocess",
                                    help=_POSTPROCESS_HELP),
) -> None:
    """Merge the parts of a sharded `index build` into one index (ids by path)."""
    index_logging()
    from groco.index.build import merge_index_dirs

    try:
        report = merge_index_dirs(parts, out, index_type=index_type, memory=memory,
                                  target_recall=target_recall, shard_size=shard_size,
                                  progress=progress, on_disk=on_disk,
                                  postprocess=postprocess)
    except INDEX_ERRORS as error:
        fail(error)
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
    index_logging()
    from groco.index.repair import repair_index_dir

    try:
        report = repair_index_dir(index)
    except INDEX_ERRORS as error:
        fail(error)
    typer.echo(report.summary())


@index_app.command("eval")
def index_eval(
    indexes: list[Path] = typer.Argument(..., help="Index directories of one collection (the "
                                                   "same folder, e.g. built with several "
                                                   "encoders): one table row each."),
    k: int = typer.Option(KNN_K, "-k", help="Neighbours in the k-NN vote.", min=1, max=10_000),
    temperature: float = typer.Option(KNN_TEMPERATURE, "--temperature",
                                      help="k-NN vote temperature.",
                                      min=1e-6, max=100.0),
    max_queries: int = typer.Option(10_000, "--max-queries", help="Query sample size.",
                                    min=1, max=1_000_000_000),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per "
                                                       "index."),
) -> None:
    """k-NN top-1, precision@10 and mAP@R from folder labels, recall@10 against exact search,
    and latency, over one or more indexes of the same collection (others are refused)."""
    import json

    index_logging(verbose=False)
    from groco.index.evaluate import evaluate_indexes

    try:
        reports = evaluate_indexes(indexes, k=k, temperature=temperature,
                                   max_queries=max_queries)
    except INDEX_ERRORS as error:
        fail(error)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in reports], indent=2))
        return

    def fig(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    first = reports[0]
    typer.echo(f"{first.count} images, {first.labelled} labelled in {first.classes} classes, "
               f"{first.queries} queries; k-NN: k={first.k}, T={first.temperature}, "
               "leave-one-out; mAP@R and k-NN by exact search, precision@10 through the index; "
               "a '+' row: the same with the index's post-processing (what search returns)")
    if first.classes < 2:
        typer.echo("label figures n/a: they need 2+ labelled subfolders")
    header = ("index", "type", "k-NN top-1", "P@10", "mAP@R", "recall@10", "p50 ms", "p99 ms")
    rows = []
    for r in reports:
        rows.append((str(r.index_dir), r.index_type, fig(r.knn_top1),
                     fig(r.precision_at_10), fig(r.map_at_r), f"{r.recall_at_10:.4f}",
                     f"{r.latency_ms_p50:.3f}", f"{r.latency_ms_p99:.3f}"))
        if r.postprocess != "none":  # what search returns: the post-processed ranking
            rows.append((f"  + {r.postprocess}", "", fig(r.post_knn_top1),
                         fig(r.post_precision_at_10), fig(r.post_map_at_r), "", "", ""))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        typer.echo("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(row, widths, strict=True))))


@index_app.command("map")
def index_map(
    index: Path = typer.Argument(..., help="Index directory."),
    neighbors: int = typer.Option(15, "--neighbors", help="Neighbours per item in the "
                                                          "layout's k-NN graph (itself "
                                                          "included).", min=2, max=1000),
    clusters: int = typer.Option(None, "--clusters", help="k-means clusters (default: "
                                                          "sqrt(N/10), 2..50).",
                                 min=1, max=100_000),
    min_dist: float = typer.Option(0.1, "--min-dist", help="UMAP min_dist.",
                                   min=0.0, max=1.0),
    epochs: int = typer.Option(None, "--epochs", help="UMAP epochs (default: 200 above "
                                                      "10k items, else 500).", min=1, max=100_000),
    seed: int = typer.Option(None, "--seed", help="Fix the layout's randomness (UMAP then "
                                                  "runs on one core; default: random, on "
                                                  "all cores).", min=0, max=2**32 - 1),
    force: bool = typer.Option(False, "--force", help="Recompute an up-to-date map."),
    as_json: bool = typer.Option(False, "--json", help="Print each item's coordinates, "
                                                       "cluster and path, and the clusters."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
) -> None:
    """A 2D UMAP layout of every item over the index's neighbour graph, with k-means
    clusters, stored in the index directory (resumable; needs `pip install 'groco\\[map]'`).
    Above 100,000 items UMAP lays out 25,000 landmarks and the rest is placed from the
    graph, then refined. `groco index update` places new items on it."""
    import json

    index_logging(verbose=progress and not as_json)
    from groco.index.map import MapExtraMissing, compute_map, iter_map_items, read_map

    try:
        report = compute_map(index, n_neighbors=neighbors, clusters=clusters,
                             min_dist=min_dist, n_epochs=epochs, seed=seed,
                             progress=progress, force=force)
        data = read_map(index) if as_json else None
    except (*INDEX_ERRORS, MapExtraMissing) as error:
        fail(error)
    if not as_json:
        typer.echo(report.summary())
        return
    typer.echo(json.dumps({"index": str(index), "count": len(data.ids),
                           "clusters": data.clusters, "items": list(iter_map_items(index, data))}))
