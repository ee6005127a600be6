"""`groco serve` (the web UI over an index) and `groco demo` (the whole flow on a built-in
collection, ending in the web UI)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from groco.app.settings import AppSettings
from groco.cli.app import fail
from groco.demo import DEMO_SETTINGS
from groco.knn import KNN_K

if TYPE_CHECKING:
    from groco.app.auth import Credentials


def serve(
    index: list[Path] = typer.Argument(..., metavar="INDEX",
                                       help="Index directory; several (built with one "
                                            "encoder) are searched as one."),
    host: str = typer.Option("127.0.0.1", help="Address to bind to; any other than this "
                                                "machine's loopback needs --auth (or --no-auth)."),
    port: int = typer.Option(7860, min=1, max=65535, help="Port to listen on."),
    encoder: Path = typer.Option(None, help="Encoder file [default: the index's]."),
    auth: str = typer.Option(None, "--auth", metavar="FILE|env:NAME",
                             help="Sign-in for every request: user:HASH lines (`groco "
                                  "passwd FILE USER`), or env:NAME for user:password lines."),
    no_auth: bool = typer.Option(False, "--no-auth",
                                 help="Serve a non-loopback --host to anyone who can reach it."),
    ssl_certfile: Path = typer.Option(None, exists=True, dir_okay=False,
                                      help="TLS certificate (PEM): serve https."),
    ssl_keyfile: Path = typer.Option(None, exists=True, dir_okay=False,
                                     help="TLS private key (PEM) of --ssl-certfile."),
    queue_size: int = typer.Option(AppSettings.queue_size, min=1, max=100_000,
                                   help="Queries that may wait; past it one is refused at "
                                        "once (busy, HTTP 429)."),
    ray: str = typer.Option(None, "--ray", metavar="ADDRESS",
                            help="With several INDEX: every shard but the first in a Ray "
                                 "Serve replica (local, auto or ray://HOST:10001; "
                                 "groco[ray])."),
) -> None:
    """Serve the visual search web UI over INDEX (on 127.0.0.1 unless --host says else).

    With several index directories (the shards of a collection), a query is embedded once,
    searched in each and the best k kept; a shard that is missing or fails is left out and
    named on the page. Browsing, duplicates, the map and curation show the first shard.
    With --ray, the other shards are searched in Ray Serve replicas, each its own.
    """
    from groco.app.auth import is_loopback
    from groco.app.web import launch_app

    try:
        credentials = sign_in(host, auth, no_auth)
        if (ssl_certfile is None) != (ssl_keyfile is None):
            raise ValueError("--ssl-certfile and --ssl-keyfile go together")
        tls = {} if ssl_certfile is None else {
            "ssl_certfile": str(ssl_certfile), "ssl_keyfile": str(ssl_keyfile),
            "ssl_verify": False}
        if credentials is not None and not tls and not is_loopback(host):
            typer.echo("warning: without --ssl-certfile/--ssl-keyfile the password crosses "
                       "the network readable", err=True)
        launch_app(index if len(index) > 1 else index[0], host=host, port=port,
                   encoder=encoder, block=True,
                   settings=AppSettings(queue_size=queue_size, ray_address=ray),
                   credentials=credentials,
                   **tls)
    except (ValueError, OSError) as error:
        fail(error)


def sign_in(host: str, auth: str | None, no_auth: bool) -> Credentials | None:
    """The credentials every request must carry, or None; refuses a non-loopback host
    with neither ``--auth`` nor ``--no-auth``."""
    from groco.app.auth import Credentials, is_loopback
    if auth is not None and no_auth:
        raise ValueError("--auth and --no-auth contradict each other")
    if auth is not None:
        return Credentials.read(auth)
    if not no_auth and not is_loopback(host):
        raise ValueError(f"--host {host} serves the collection to the network: add --auth "
                         "FILE (`groco passwd FILE USER` makes one), or --no-auth to serve "
                         "it to anyone who can reach it")
    return None


def passwd(
    file: Path = typer.Argument(..., dir_okay=False, help="Credentials file for "
                                                          "`groco serve --auth`."),
    user: str = typer.Argument(..., help="User name (no colon)."),
    password_stdin: bool = typer.Option(False, "--password-stdin",
                                        help="Read the password from standard input's first "
                                             "line instead of asking twice."),
) -> None:
    """Add USER to FILE, or change their password: the line is user:HASH (PBKDF2-SHA256),
    so no password is kept at rest."""
    import sys

    from groco.app.auth import set_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        new = set_password(file, user, password)
    except (ValueError, OSError) as error:
        fail(error)
    typer.echo(f"{'added' if new else 'changed the password of'} {user} in {file}")


def demo(
    data: Path | None = typer.Option(None, "--data", help="Image folder with class subfolders "
                                                          "[default: the built-in roaming "
                                                          "digits]."),
    work: Path = typer.Option(Path("groco-demo"), help="Folder for the demo's run, encoder "
                                                       "and index."),
    epochs: int = typer.Option(None, help=f"Training epochs [default: "
                                          f"{DEMO_SETTINGS['epochs']}].", min=1, max=10_000),
    seed: int = typer.Option(0, help="Training seed.", min=0, max=2**32 - 1),
    serve_ui: bool = typer.Option(True, "--serve/--no-serve", help="Open the web UI at the end."),
    port: int = typer.Option(7860, min=1, max=65535, help="Port of the web UI."),
) -> None:
    """Train, export and index a small collection, report k-NN accuracy, open the web UI."""
    import logging

    from groco.demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        result = run_demo(work, data, epochs, log=typer.echo, seed=seed)
    except (ValueError, OSError) as error:
        fail(error)
    gain = 100 * (result.knn_top1 - result.best_baseline)
    typer.echo(f"on {result.collection}:\n"
               f"k-NN top-1 (k={KNN_K}, leave-one-out, folder labels): {result.knn_top1:.1%} with "
               f"the trained encoder, {result.raw_knn_top1:.1%} raw pixels (best size, "
               f"{result.raw_pixels_size} px), {result.random_knn_top1:.1%} untrained: "
               f"{gain:+.1f} points over the better of the two; "
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
