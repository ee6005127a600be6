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


def _fail(error: Exception) -> None:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


@app.command()
def train(
    images: Path = typer.Argument(..., help="Folder of images (searched recursively)."),
    out: Path = typer.Option(..., "--out", help="Run directory to write checkpoints and logs to."),
    method: str = typer.Option(None, help="groco (default) or simclr."),
    backbone: str = typer.Option(None, help="Any timm model name [default: resnet18]."),
    image_size: int = typer.Option(None, help="Training resolution [default: 224]."),
    small_stem: bool = typer.Option(None, "--small-stem/--no-small-stem",
                                    help="3x3 stride-1 CNN stem [default: on at <= 64 px]."),
    weights: Path = typer.Option(None, help="Local backbone weights to start from."),
    epochs: int = typer.Option(None, help="Epochs [default: 100]."),
    batch_size: int = typer.Option(None, help="Images per process and step [default: 256]."),
    views: int = typer.Option(None, help="Augmented views per image [default: 2]."),
    optimizer: str = typer.Option(None, help="sgd (default), lars or adamw."),
    lr: float = typer.Option(None, help="Base LR per 256 images (scaled linearly) "
                                        "[default: 6.0 for groco+sgd]."),
    weight_decay: float = typer.Option(None, help="Weight decay [default: 1e-6 for sgd]."),
    warmup_epochs: float = typer.Option(None, help="Linear warm-up epochs [default: 1]."),
    topk_neg: int = typer.Option(None, help="GroCo: hardest negatives sorted [default: 10]."),
    steepness: float = typer.Option(None, help="GroCo: sorter steepness [default: 1.0]."),
    network: str = typer.Option(None, help="GroCo: odd_even (default) or bitonic."),
    relaxation: str = typer.Option(None, help="GroCo: cauchy (default), logistic, "
                                              "logistic_phi, reciprocal, optimal."),
    temperature: float = typer.Option(None, help="SimCLR: temperature [default: 0.1]."),
    projector_dim: int = typer.Option(None, help="Projector output dim [default: 2048]."),
    projector_hidden: int = typer.Option(None, help="Projector width [default: 2048]."),
    device: str = typer.Option(None, help="auto (default), cpu or cuda."),
    workers: int = typer.Option(None, help="Data-loading processes [default: 4]."),
    seed: int = typer.Option(None, help="Random seed [default: 0]."),
    eval_every: int = typer.Option(None, help="k-NN monitor every N epochs, 0 = off "
                                              "[default: 1]; needs labels (subfolders)."),
    eval_data: Path = typer.Option(None, help="Labelled folder for the k-NN monitor's queries "
                                              "[default: leave-one-out on IMAGES]."),
    max_steps_per_epoch: int = typer.Option(None, help="Cap on steps per epoch."),
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
        result = run_training(cfg, resume=resume)
    except (ValueError, FileNotFoundError, NotADirectoryError, OSError,
            FloatingPointError) as error:
        _fail(error)
    knn = "" if result.knn_top1 is None else f", k-NN top-1 {result.knn_top1:.4f}"
    typer.echo(f"trained {result.epochs} epochs ({result.steps} steps) into {result.run_dir}: "
               f"loss {result.final_loss:.4f}{knn}")


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
