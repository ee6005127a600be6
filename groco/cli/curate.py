"""`groco index graph`, `dupes` and `curate`: the index's neighbour graph, and what it
says about the collection (duplicates and their review list, outliers, a sample)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from groco.cli.app import INDEX_ERRORS, fail, index_app, index_logging


@index_app.command("graph")
def index_graph(
    index: Path = typer.Argument(..., help="Index directory."),
    neighbours: int = typer.Option(None, "--neighbours",
                                   help="Neighbours stored per item [default: 16].",
                                   min=1, max=1_000),
    force: bool = typer.Option(False, "--force", help="Rebuild a graph that is current."),
    as_json: bool = typer.Option(False, "--json", help="Print the graph's facts as JSON."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Compute and store the index's neighbour graph: each item's nearest others.

    `groco index map` and `groco index dupes` build it when it is missing and then share
    it; `groco index update` keeps it current. Exact up to 20,000 items; above, each
    item is compared with the items of the few partition cells nearest it, as many as
    reach recall@k 0.95 on a sample of 1,000 (the recall reached is printed and stored).
    A killed run resumes.
    """
    index_logging(verbose=False)
    from groco.index.neighbours import DEFAULT_K, ensure_graph

    try:
        report = ensure_graph(index, neighbours or DEFAULT_K, force=force, progress=progress)
    except INDEX_ERRORS as error:
        fail(error)
    if as_json:
        typer.echo(json.dumps({"built": report.built, "seconds": round(report.seconds, 2),
                               **report.info}, indent=1))
    else:
        typer.echo(report.summary())


@index_app.command("curate")
def index_curate(
    index: Path = typer.Argument(..., help="Index directory."),
    outliers: int = typer.Option(None, "--outliers", min=1, max=10_000_000,
                                 help="List the N most unusual items, most unusual first."),
    sample: int = typer.Option(None, "--sample", min=1, max=10_000_000,
                               help="Pick N items that cover the collection."),
    score: str = typer.Option(None, "--score",
                              help="Outlier score: global, lof, knn or weighted "
                                   "[default: global]."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**31 - 1,
                             help="The sample's first pick (same seed, same sample)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV, one row per file."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Outliers (items unlike the rest) or a representative sample of an index.

    --outliers N reads the index's neighbour graph (built and stored first when missing,
    as `groco index dupes` does) and lists each item with its nearest other. By default
    (global) an item is scored by its distance to the 16th nearest of a seeded sample of
    1,000 items of the whole collection, so a group of look-alike strays cannot hide in
    itself; lof, knn and weighted score it from its nearest others in the graph.
    --sample N picks items greedily, each the farthest from those picked so far (k-centre),
    and prints the coverage radius reached (the largest cosine distance from any item to
    its nearest pick) beside that of a random sample of the same size. Nothing is moved
    or deleted.
    """
    import csv
    import sys

    index_logging(verbose=False)
    from groco.index.curate import DEFAULT_SCORE, SCORES, find_outliers, pick_sample

    if (outliers is None) == (sample is None):
        fail(ValueError("give --outliers N or --sample N (one of them)"))
    if as_json and as_csv:
        fail(ValueError("give --json or --csv, not both"))
    if score is not None and score not in SCORES:
        fail(ValueError(f"--score must be one of {', '.join(SCORES)}, got {score!r}"))
    from groco.progress import progress_bar

    try:
        if outliers is not None:
            from groco.index.neighbours import DEFAULT_K, ensure_graph

            graph = ensure_graph(index, DEFAULT_K, progress=progress,
                                 command="groco index curate")
            typer.echo(graph.summary(), err=True)
            files = find_outliers(index, outliers, score or DEFAULT_SCORE, store_graph=False)
            facts = None
        else:
            with progress_bar(sample - 1, desc="sample", unit="pick",
                              disable=not progress) as bar:
                facts = pick_sample(index, sample, seed, progress=bar.update)
            files = facts.files
    except INDEX_ERRORS as error:
        fail(error)
    if as_json:
        typer.echo(json.dumps(facts.to_dict() if facts else [f.to_dict() for f in files],
                              indent=1))
        return
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["rank", "relpath", "score", "label", "nearest", "nearest_cosine",
                         "path"])
        for rank, f in enumerate(files, 1):
            writer.writerow([rank, f.relpath, "" if math.isinf(f.score) else f"{f.score:.6f}",
                             f.label or "", f.nearest_relpath or "",
                             "" if f.nearest_cosine is None else f"{f.nearest_cosine:.6f}",
                             f.path])
        return
    if facts is not None:
        typer.echo(f"{len(files)} of {facts.count} items; coverage radius {facts.radius:.4f} "
                   f"(a random sample of {len(files)}: {facts.random_radius:.4f})")
        for f in files:
            typer.echo(f"  {f.relpath}")
        return
    typer.echo(f"{len(files)} most unusual items ({score or DEFAULT_SCORE} score), most "
               "unusual first; nearest other item and its cosine")
    for f in files:
        typer.echo(f"  {f.score:8.4f}  {f.relpath}  (nearest {f.nearest_relpath}, "
                   f"{f.nearest_cosine:.4f})")


@index_app.command("dupes")
def index_dupes(
    index: Path = typer.Argument(..., help="Index directory."),
    threshold: float = typer.Option(None, "--threshold", min=-1.0, max=1.0,
                                    help="Cosine similarity from which two images are near "
                                         "copies [default: the index's calibration, else "
                                         "0.97]; same bytes always group."),
    review: bool = typer.Option(False, "--review",
                                help="Print the review list: per group the file to keep "
                                     "(--keep) and each other file's tier and action."),
    keep: str = typer.Option("pixels", "--keep",
                             help="Which file a group keeps: pixels, bytes, oldest or "
                                  "path [default: pixels]."),
    similar: float = typer.Option(None, "--similar", min=-1.0, max=1.0,
                                  help="With --review: the lowest cosine listed as similar "
                                       "[default: the calibration's, else the threshold]."),
    calibrate: bool = typer.Option(False, "--calibrate",
                                   help="Plant copies of 200 of the index's images, embed "
                                        "them with its encoder and store the thresholds "
                                        "they call for (then used by default)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV, one row per file."),
    neighbours: int = typer.Option(None, "--neighbours",
                                   help="Candidates searched per image [default: 16].",
                                   min=1, max=10_000),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Group exact duplicates (same content hash) and near-duplicates (cosine >= threshold),
    largest groups first, each file with its similarity to the group's first file.

    Reads the index's neighbour graph (`groco index graph`), built and stored first when
    missing or out of date, and shared with `groco index map`: never an N x N matrix.
    --review lists, per group, the file to keep and the others as exact, near or similar,
    with "remove?" or "review": groco never deletes or moves a file.
    """
    import csv
    import sys

    index_logging(verbose=False)
    from groco.index.curate.calibrate import calibrate as run_calibration
    from groco.index.curate.calibrate import current_calibration
    from groco.index.curate.review import KEEP_RULES, review_list
    from groco.index.dupes import DEFAULT_NEIGHBOURS, DEFAULT_THRESHOLD, scan_duplicates
    from groco.index.neighbours import ensure_graph

    if as_json and as_csv:
        fail(ValueError("give --json or --csv, not both"))
    if keep not in KEEP_RULES:
        fail(ValueError(f"--keep must be one of {', '.join(KEEP_RULES)}, got {keep!r}"))
    try:
        graph = ensure_graph(index, neighbours or DEFAULT_NEIGHBOURS, progress=progress,
                             command="groco index dupes")
        typer.echo(graph.summary(), err=True)
        found = run_calibration(index) if calibrate else current_calibration(index)
        if calibrate:
            typer.echo(found.summary(), err=True)
        near = threshold if threshold is not None else (
            found.near if found else DEFAULT_THRESHOLD)
        floor = near
        if review:
            floor = min(near, similar if similar is not None else (
                found.similar if found else near))
        scan = scan_duplicates(index, floor, neighbours=neighbours or DEFAULT_NEIGHBOURS)
        groups = scan.groups(near)
        entries = review_list(groups, keep, scan.groups(floor) if floor < near else None
                              ) if review else []
    except INDEX_ERRORS as error:
        fail(error)
    if review:
        _print_review(entries, near, floor, keep, as_json, as_csv)
        return
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


def _print_review(entries: list, near: float, floor: float, keep: str, as_json: bool,
                  as_csv: bool) -> None:
    from groco.index.curate.review import review_csv

    if as_json:
        typer.echo(json.dumps({"near": near, "similar": floor, "keep": keep,
                               "files": [e.to_dict() for e in entries]}, indent=1))
        return
    if as_csv:
        typer.echo(review_csv(entries), nl=False)
        return
    removable = sum(e.action == "remove?" for e in entries)
    typer.echo(f"{max((e.group for e in entries), default=0)} groups: keep one file each "
               f"(by {keep}); {removable} exact or near copies (cosine >= {near:.4f}) to "
               f"remove?, {sum(e.action == 'review' for e in entries)} similar "
               f"(>= {floor:.4f}) to review")
    for e in entries:
        if e.action == "keep":
            typer.echo(f"group {e.group}")
        of = f"  ({e.tier} copy of {e.copy_of})" if e.tier in ("exact", "near") else (
            f"  (like {e.copy_of})" if e.copy_of else "")
        typer.echo(f"  {e.action:8s} {e.tier:8s} {e.file.score:.4f}  {e.file.relpath}{of}")
