"""Every numeric option of every command declares its range, and a value outside it (or NaN,
or an infinity) is a one-line usage error naming the option, before any work starts."""

from __future__ import annotations

import math
import typing

import pytest
import typer
from typer.testing import CliRunner

from groco.cli import app


def _numeric_kind(param) -> type | None:
    annotation = param.type_descriptor.annotation
    kinds = {a for a in (annotation, *typing.get_args(annotation)) if a in (int, float)}
    return kinds.pop() if kinds else None


def _commands(command, path: list[str]):
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _commands(sub, path + [name])
    else:
        yield path, command


def numeric_options() -> list[tuple[list[str], object, type, list[str]]]:
    """(command path, option, kind, a dummy value per required argument)."""
    found = []
    for path, command in _commands(typer.main.get_command(app), []):
        arguments = [p for p in command.params if not p.opts[0].startswith("-")]
        dummies = ["x" for p in arguments if p.required]
        for param in command.params:
            kind = _numeric_kind(param)
            if kind is not None and param.opts[0].startswith("-"):
                found.append((path, param, kind, dummies))
    return found


OPTIONS = numeric_options()


def _out_of_range(param, kind: type) -> list[str]:
    values = []
    if param.min is not None:
        values.append(str(param.min - 1 if kind is int else param.min - max(1.0, abs(param.min))))
    if param.max is not None:
        values.append(str(param.max + 1 if kind is int else param.max * 2 + 1))
    if kind is float:
        values += ["nan", "inf", "-inf"]
    return values


def test_the_walk_covers_every_command():
    commands = {" ".join(path) for path, _, _, _ in OPTIONS}
    assert {"train", "export", "embed", "search", "serve", "demo", "index build",
            "index update", "index merge", "index eval", "index dupes", "index map"} <= commands
    assert len(OPTIONS) >= 60


@pytest.mark.parametrize("path,param,kind,dummies", OPTIONS,
                         ids=[f"{' '.join(p)} {o.opts[0]}" for p, o, _, _ in OPTIONS])
def test_an_out_of_range_value_is_a_one_line_usage_error(path, param, kind, dummies):
    assert param.min is not None or param.max is not None, \
        f"{' '.join(path)} {param.opts[0]} declares no range"
    if kind is float and param.min is not None and param.max is not None:
        assert math.isfinite(param.min) and math.isfinite(param.max)
    for value in _out_of_range(param, kind):
        result = CliRunner().invoke(app, [*path, param.opts[0], value, *dummies])
        output = result.output
        assert result.exit_code == 2, (value, output)
        assert "Traceback" not in output and isinstance(result.exception, SystemExit)
        assert f"Invalid value for '{param.opts[0]}" in output or \
            f"Invalid value for '{'/'.join(param.opts)}" in output, (value, output)
