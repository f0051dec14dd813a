"""`ferry config`: the contexts of the config file (cli/config.py), and which one is current."""

from __future__ import annotations

import os

import click
from rich.table import Table

from cli import config as config_file
from cli.exits import CliError, Exit
from cli.output import emit, json_wanted, out, output_option


def _load() -> config_file.Config:
    try:
        return config_file.load(os.environ)
    except config_file.ConfigError as exc:
        raise CliError(str(exc), Exit.USAGE) from None


@click.group("config")
def config() -> None:
    """The gateways this CLI knows (contexts of ~/.config/ferry/config.yaml, or FERRY_CONFIG)."""


@config.command("get-contexts")
@output_option
def get_contexts() -> None:
    """List the contexts; the current one is marked with *."""
    found = _load()
    rows = [{"name": c.name, "current": c.name == found.current, "gateway": c.gateway,
             "token_file": str(c.token_file) if c.token_file else None,
             "ca_file": str(c.ca_file) if c.ca_file else None, "insecure": c.insecure}
            for c in found.contexts.values()]
    if json_wanted():
        emit({"config": str(found.path), "current_context": found.current, "contexts": rows})
        return
    if not found.exists:
        out.print(f"no config file at {found.path} (docs/cli.md shows one)", highlight=False,
                  soft_wrap=True)
        return
    table = Table(title=str(found.path))
    for column in ("", "context", "gateway", "token file", "TLS"):
        table.add_column(column)
    for row in rows:
        tls = ("-" if not row["gateway"].startswith("https://") else
               "not checked (insecure)" if row["insecure"] else row["ca_file"] or "system CAs")
        table.add_row("*" if row["current"] else "", row["name"], row["gateway"],
                      row["token_file"] or "(the state dir's)", tls)
    out.print(table)


@config.command("current-context")
@output_option
def current_context() -> None:
    """Print the current context's name."""
    found = _load()
    if found.current is None:
        raise CliError(f"no current-context in {found.path}"
                       + ("" if found.exists else " (the file does not exist)"))
    if json_wanted():
        emit({"current_context": found.current})
    else:
        click.echo(found.current)


@config.command("use-context")
@click.argument("name")
def use_context(name: str) -> None:
    """Make NAME the current context (written into the config file)."""
    found = _load()
    try:
        config_file.use_context(found, name)
    except config_file.ConfigError as exc:
        raise CliError(str(exc), Exit.USAGE) from None
    except OSError as exc:
        raise CliError(f"cannot write {found.path}: {exc}") from None
    click.echo(f"current context: {name} ({found.contexts[name].gateway})")
