"""The `groco` command: one module per command group, each thin (options, then one call into
a component). ``app`` is the entry point; the commands are registered here, in the order
``groco --help`` lists them."""

from groco.cli import index

# isort: split
from groco.cli import curate  # its commands listed after index's
from groco.cli.app import app
from groco.cli.export import embed, export
from groco.cli.search import search
from groco.cli.serve import demo, passwd, serve
from groco.cli.train import train

for command in (train, export, embed, search, serve, passwd, demo):
    app.command()(command)

__all__ = ["app", "curate", "index"]
