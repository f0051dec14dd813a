"""Where `ferry` writes: data on stdout (tables and text, or JSON with -o json), errors,
prompts and progress on stderr, so that `ferry ... -o json | jq` always reads clean JSON."""

from __future__ import annotations

import json
from typing import Any, Callable

import click
from rich.console import Console

out = Console()  # stdout (rich looks sys.stdout up when it prints, so tests can capture it)
err = Console(stderr=True)

OUTPUT = "ferry.output"  # in click's context meta, shared by the group and its commands
FORMATS = ("text", "json")


def _remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    # Given before the command (`ferry -o json status`) or after it (`ferry status -o json`):
    # the one given last wins, an absent one changes nothing.
    if value is not None:
        ctx.meta[OUTPUT] = value


def output_option(command: Callable) -> Callable:
    return click.option(
        "-o", "--output", type=click.Choice(FORMATS), expose_value=False, callback=_remember,
        help="text (tables, the default) or json (data on stdout; errors on stderr).",
    )(command)


def json_wanted() -> bool:
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.meta.get(OUTPUT) == "json"


def emit(data: Any) -> None:
    """One JSON document on stdout."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def emit_line(data: Any) -> None:
    """One JSON document on one line (JSON Lines: what `--watch`, `logs` and followed runs
    print, one per record, readable with `jq` as they come)."""
    click.echo(json.dumps(data, ensure_ascii=False, default=str, separators=(",", ":")))


def say(text: str) -> None:
    """A line for the operator: on stdout as text, on stderr beside JSON (it is not data)."""
    (err if json_wanted() else out).print(text, highlight=False, markup=False, soft_wrap=True)
