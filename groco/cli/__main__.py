"""``python -m groco.cli``: the `groco` command (torchrun starts it this way)."""

from groco.cli import app

app()
