"""`groco search`: the nearest neighbours of a query image, as lines or JSON."""

from __future__ import annotations

from pathlib import Path

import typer

from groco.cli.app import INDEX_ERRORS, fail, index_logging


def search(
    index: Path = typer.Argument(..., help="Index directory."),
    image: Path = typer.Argument(..., help="Query image."),
    k: int = typer.Option(10, "-k", help="Number of neighbours.", min=1, max=10_000),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    encoder: Path = typer.Option(None, "--encoder", help="Encoder [default: the recorded one]."),
    distinct: bool = typer.Option(False, "--distinct",
                                  help="Near copies collapsed: each group once, with a count."),
    near_copy: float = typer.Option(None, "--near-copy",
                                    help="--distinct: the cosine from which two results are "
                                         "near copies [default: the index's calibration "
                                         "(groco index dupes --calibrate), else 0.97].",
                                    min=0.0, max=1.0),
    min_score: float = typer.Option(None, "--min-score",
                                    help="Leave out results below this cosine similarity "
                                         "(-1..1), so fewer than k may come back.",
                                    min=-1.0, max=1.0),
    shards: list[Path] = typer.Option(None, "--index",
                                      help="Another index directory built with the same "
                                           "encoder, searched with INDEX as one "
                                           "(repeatable: the shards of a collection)."),
    ray: str = typer.Option(None, "--ray", metavar="ADDRESS",
                            help="With --index: each --index shard searched in a Ray Serve "
                                 "replica (local, auto or ray://HOST:10001; groco[ray])."),
) -> None:
    """Print the nearest neighbours of IMAGE in INDEX (and in every --index with it)."""
    import json

    index_logging(verbose=False)
    from groco.index.api import IndexReader, ShardUnion

    union = None
    try:
        if shards:
            union = ShardUnion([index, *shards], encoder_path=encoder, ray_address=ray)
            reader = union.readers[min(union.readers)]
        else:
            if ray is not None:
                raise ValueError("--ray serves the --index shards: give at least one --index")
            reader = IndexReader(index, encoder_path=encoder)
        with union or reader:
            if near_copy is None:
                near_copy = reader.near_copy_threshold()
            results = (union or reader).search_image(image, k, min_score=min_score,
                                                     distinct=distinct, near_copy=near_copy)
            missing = union.missing if union else {}
            where = {r.id: str(union.shard_of(r.id)) for r in results} if union else {}
    except INDEX_ERRORS as error:
        fail(error)
    for path, why in missing.items():
        typer.echo(f"warning: shard {path} left out ({why}); results from the others",
                   err=True)
    if as_json:
        rows = [{"rank": i + 1, **r.to_dict(), **({"index": where[r.id]} if union else {})}
                for i, r in enumerate(results)]
        typer.echo(json.dumps({"query": str(image),
                               "index": [str(p) for p in union.index_dirs] if union
                               else str(index), "k": k,
                               "min_score": min_score, "distinct": distinct,
                               "near_copy": near_copy if distinct else None,
                               "missing": {str(p): why for p, why in missing.items()},
                               "results": rows}, indent=2))
        return
    for i, r in enumerate(results, 1):
        copies = f"  (+{r.copies} near copies)" if r.copies else ""
        typer.echo(f"{i:3d}  {r.score:.4f}  {r.label or '-':<16} {r.path}{copies}")
