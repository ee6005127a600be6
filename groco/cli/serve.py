"""`groco serve` (the web UI over an index) and `groco demo` (the whole flow on a built-in
collection, ending in the web UI)."""

from __future__ import annotations

from pathlib import Path

import typer

from groco.cli.app import fail
from groco.knn import KNN_K


def serve(
    index: Path = typer.Argument(..., help="Index directory."),
    host: str = typer.Option("127.0.0.1", help="Address to bind to."),
    port: int = typer.Option(7860, min=1, max=65535, help="Port to listen on."),
    encoder: Path = typer.Option(None, help="Encoder file [default: the index's]."),
) -> None:
    """Serve the visual search web UI over INDEX (on 127.0.0.1 unless --host says else)."""
    from groco.app.web import launch_app

    try:
        launch_app(index, host=host, port=port, encoder=encoder, block=True)
    except (ValueError, OSError) as error:
        fail(error)


def demo(
    data: Path | None = typer.Option(None, "--data", help="Image folder with class subfolders "
                                                          "[default: scikit-learn's digits]."),
    work: Path = typer.Option(Path("groco-demo"), help="Folder for the demo's run, encoder "
                                                       "and index."),
    epochs: int = typer.Option(None, help="Training epochs [default: 6]."),
    serve_ui: bool = typer.Option(True, "--serve/--no-serve", help="Open the web UI at the end."),
    port: int = typer.Option(7860, min=1, max=65535, help="Port of the web UI."),
) -> None:
    """Train, export and index a small collection, report k-NN accuracy, open the web UI."""
    import logging

    from groco.demo import RAW_PIXELS_SIZE, run_demo

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        result = run_demo(work, data, epochs, log=typer.echo)
    except (ValueError, OSError) as error:
        fail(error)
    typer.echo(f"k-NN top-1 (k={KNN_K}, leave-one-out, folder labels): {result.knn_top1:.1%} with "
               f"the trained encoder, {result.raw_knn_top1:.1%} raw pixels "
               f"({RAW_PIXELS_SIZE} px), {result.random_knn_top1:.1%} untrained; "
               f"{result.seconds:.0f} s from images to index")
    if not result.beats_baselines:
        typer.echo("the trained encoder does not beat what you have without training on "
                   "this collection: train longer, or start from pretrained weights "
                   "(`groco train --pretrained`)")
    if serve_ui:
        from groco.app.web import launch_app, tab_urls

        typer.echo(f"serving {result.index} (Ctrl-C to stop):")
        for name, url in tab_urls(f"http://127.0.0.1:{port}").items():
            if name != "map" or result.mapped:
                typer.echo(f"  {name:<10} {url}")
        launch_app(result.index, port=port, block=True)
