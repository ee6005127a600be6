"""The `groco` command: parses arguments and calls the components; no logic of its own."""

from __future__ import annotations

from pathlib import Path

import typer

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


def _not_implemented(command: str) -> None:
    typer.echo(f"groco {command}: not implemented yet", err=True)
    raise typer.Exit(code=2)


@app.command()
def train(
    images: Path = typer.Argument(..., help="Folder of images (searched recursively)."),
    out: Path = typer.Option(..., "--out", help="Run directory to write checkpoints and logs to."),
) -> None:
    """Pretrain an encoder on IMAGES with GroCo (or another self-supervised method)."""
    _not_implemented("train")


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run directory written by `groco train`."),
    out: Path = typer.Option(..., "--out", help="ONNX file to write."),
) -> None:
    """Export a run's encoder to ONNX."""
    _not_implemented("export")


@index_app.command("build")
def index_build(
    images: Path = typer.Argument(..., help="Folder of images to index."),
    encoder: Path = typer.Option(..., "--encoder", help="ONNX encoder from `groco export`."),
    out: Path = typer.Option(..., "--out", help="Index directory to write."),
) -> None:
    """Embed IMAGES and build a FAISS index."""
    _not_implemented("index build")


@index_app.command("update")
def index_update(index: Path = typer.Argument(..., help="Index directory.")) -> None:
    """Embed new files, drop deleted ones, re-embed changed ones."""
    _not_implemented("index update")


@index_app.command("eval")
def index_eval(index: Path = typer.Argument(..., help="Index directory.")) -> None:
    """k-NN accuracy from folder labels, recall against exact search, latency."""
    _not_implemented("index eval")


@app.command()
def search(
    index: Path = typer.Argument(..., help="Index directory."),
    image: Path = typer.Argument(..., help="Query image."),
    k: int = typer.Option(10, "-k", help="Number of neighbours."),
) -> None:
    """Print the nearest neighbours of IMAGE in INDEX."""
    _not_implemented("search")


@app.command()
def serve(
    index: Path = typer.Argument(..., help="Index directory."),
    host: str = typer.Option("127.0.0.1", help="Address to bind to."),
    port: int = typer.Option(7860, help="Port to listen on."),
) -> None:
    """Serve the visual search web UI over INDEX."""
    _not_implemented("serve")


@app.command()
def demo(
    data: Path | None = typer.Option(None, "--data", help="Image folder (default: bundled)."),
) -> None:
    """Run the whole flow on a small collection and open the web UI."""
    _not_implemented("demo")


if __name__ == "__main__":
    app()
