"""Asking before a cutover: it changes production (DNS, the old site, the databases), so a
person types the group's name at a terminal, or a script says --yes."""

from __future__ import annotations

import sys

import click

from cli.exits import CliError, Exit


def stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def confirm_cutover(group: dict, *, prepare: bool, where: str) -> None:
    """Ask at the terminal; CliError if not confirmed, or if there is no terminal to ask at.
    `group`: the gateway's view of it (name, status, VMs); `where`: the gateway and context."""
    name = group["name"]
    if not stdin_is_terminal():
        raise CliError(f"not requesting the cutover of {name}: stdin is not a terminal, so "
                       "nobody can confirm it; add --yes to request it from a script",
                       Exit.USAGE)
    vms = len(group.get("vms", []))
    about = f"group {name} ({group['status']}, {vms} VMs) at {where}"
    try:
        if prepare:
            answer = click.prompt(f"Prepare the cutover of {about}: lower its DNS TTLs, a first "
                                  "rsync pass? [y/N]", default="", show_default=False, err=True)
            confirmed = answer.strip().lower() in ("y", "yes")
        else:
            answer = click.prompt(f"Cut over {about}: its sites go down for the window and DNS "
                                  f"moves to the new VMs. Type the group's name ({name}) to go on",
                                  default="", show_default=False, err=True)
            confirmed = answer.strip() == name
    except click.Abort:  # end of input, or Ctrl-C at the prompt
        confirmed = False
    if not confirmed:
        raise CliError(f"cutover of {name} not confirmed: nothing was requested")
