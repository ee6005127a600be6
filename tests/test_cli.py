"""The command line as a user meets it: every command's help is short, plain where boxes do
not fit, and free of stray punctuation; `groco train`'s options are the training settings;
`--ray` is a flag with an optional address."""

import dataclasses
import re

import click
import pytest
import typer.main
from typer.testing import CliRunner

from groco.cli import app
from groco.training.config import TrainConfig

MAX_HELP = 140
"""Characters of one option's help: two lines beside the option column at 100 columns."""


def _commands():
    root = typer.main.get_command(app)
    found = []

    def walk(command, path):
        found.append((path, command))
        if hasattr(command, "list_commands"):
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                walk(command.get_command(ctx, name), [*path, name])

    walk(root, [])
    return found


COMMANDS = _commands()


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "groco")
def test_every_help_is_plain_short_and_clean(path):
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert not set("╭╮╰╯│") & set(result.output), "boxes outside a wide terminal"
    assert max(len(line) for line in result.output.splitlines()) <= 100
    command = dict((tuple(p), c) for p, c in COMMANDS)[tuple(path)]
    for param in command.params:
        text = param.help or ""
        if param.param_type_name != "option" or param.name == "help":
            continue
        assert text, f"{param.opts} has no help"
        assert len(text) <= MAX_HELP, f"{param.opts}: {len(text)} characters"
        assert not re.search(r"\s[.,;:)](\s|$)|\(\s|\s{2}|\.\.$", text), f"{param.opts}: {text!r}"


def test_train_options_are_the_training_settings():
    train = dict((tuple(p), c) for p, c in COMMANDS)[("train",)]
    options = {p.name for p in train.params if p.param_type_name == "option"}
    settings = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["cli"]}
    assert settings <= options and options - settings == {"out", "config", "resume"}
    help_of = {p.name: p.help for p in train.params}
    assert all(help_of[f.name] == f.metadata["help"] for f in dataclasses.fields(TrainConfig)
               if f.metadata["cli"])


@pytest.mark.parametrize("given, environment, expected", [
    (["--ray"], None, "local"),
    (["--ray"], "ray://head:10001", "ray://head:10001"),
    (["--ray", "auto"], "ray://head:10001", "auto"),
    (["--ray", "head:6379"], None, "head:6379"),
    ([], None, None),
])
def test_ray_is_a_flag_with_an_optional_address(given, environment, expected, monkeypatch,
                                                tmp_path):
    import groco.index.build

    seen = {}

    def build(images, encoder, out, **options):
        seen.update(images=images, address=options["ray_address"])
        raise ValueError("stop here")

    monkeypatch.setattr(groco.index.build, "build_index_dir", build)
    if environment is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", environment)
    images = tmp_path / "photos"
    for args in ([str(images), *given, "--encoder", "e.onnx", "--out", "i"],
                 [*given, str(images), "--encoder", "e.onnx", "--out", "i"]):
        seen.clear()
        result = CliRunner().invoke(app, ["index", "build", *args])
        assert result.output.strip() == "error: stop here", result.output
        assert seen == {"images": images, "address": expected}
