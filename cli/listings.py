"""Listings at fleet scale: the options a listing takes (`ferry status`, `ferry vms`), the
gateway path they ask for, every page at once with --all, and the line that says there is
more."""

from __future__ import annotations

import shlex
from typing import Callable
from urllib.parse import urlencode

import click
from rich.table import Table

from cli import session
from cli.output import emit, json_wanted, out, output_option, say
from cli.session import context_option


def listing_options(command: Callable) -> Callable:
    """--limit, --cursor, --status (repeatable), --name, --all."""
    for option in reversed([
        click.option("--limit", type=click.IntRange(1, 500), default=None,
                     help="At most this many on a page (the gateway's default: 50)."),
        click.option("--cursor", default=None, help="Start at this page (the cursor the page "
                     "before printed)."),
        click.option("--status", "statuses", multiple=True, help="Only these statuses "
                     "(repeat the option, or comma-separate them)."),
        click.option("--name", default=None, help="Only those whose name contains this text "
                     "(case-insensitive)."),
        click.option("--all", "every_page", is_flag=True, help="Every page, following the "
                     "cursors."),
    ]):
        command = option(command)
    return command


def listing_path(base: str, *, limit: int | None = None, cursor: str | None = None,
                 statuses: tuple[str, ...] = (), name: str | None = None, **more) -> str:
    """`base` with the listing's query; options left out are not sent."""
    query = [(k, v) for k, v in [("limit", limit), ("cursor", cursor), ("name", name),
                                 *more.items()] if v is not None]
    query += [("status", s) for s in statuses]
    return f"{base}?{urlencode(query)}" if query else base


def fetch(base: str, items: str, every_page: bool, **query) -> dict:
    """The gateway's page; with `every_page`, each page after it too, as one answer whose
    `items` hold them all (and next_cursor null)."""
    answer = session.call("GET", listing_path(base, **query))
    while every_page and answer.get("next_cursor"):
        following = session.call("GET", listing_path(base, **{**query,
                                                             "cursor": answer["next_cursor"]}))
        following[items] = answer[items] + following[items]
        answer = following
    return answer


def next_page(command: str, answer: dict, items: str, **query) -> str:
    """What to say under a page: how many there are, and when there is more, the command
    (with the same filter) that shows the next page."""
    total = answer.get("total", len(answer[items]))  # a gateway from before paging
    if not answer.get("next_cursor"):
        return f"{total} {items}"
    words = [command] + [f"--{k} {shlex.quote(str(v))}" for k, v in query.items()
                         if v is not None and k not in ("cursor", "statuses")]
    words += [f"--status {shlex.quote(s)}" for s in query.get("statuses", ())]
    words.append(f"--cursor {answer['next_cursor']}")
    return (f"showing {len(answer[items])} of {total} {items}; next page: {' '.join(words)} "
            "(or --all for every page)")


def show(answer: dict, items: str, table, command: str, **query) -> None:
    """The page as JSON, or as `table` with the count and the way to the next page."""
    if json_wanted():
        emit(answer)
        return
    out.print(table(answer[items]))
    say(next_page(command, answer, items, **query))


def vms_table(vms: list[dict]):
    from cli.status import _styled, system_cell  # status's table cells, the same colours

    table = Table(title="VMs")
    for column in ("group", "VM", "role", "legacy system", "state", "step", "message"):
        table.add_column(column)
    for vm in vms:
        state = vm["state"] + (f" (at {vm['held_state']})" if vm.get("held_state") else "")
        table.add_row(vm["group"], vm["name"], vm["role"], system_cell(vm.get("system")),
                      _styled(vm["state"], state), vm.get("step") or "",
                      (vm.get("message") or "")[:60])
    return table


@click.command()
@click.option("--group", default=None, help="Only this group's VMs (its name or id).")
@listing_options
@output_option
@context_option
def vms(group: str | None, every_page: bool, **query) -> None:
    """VMs across groups (or of one), a page at a time: newest group first, then in plan
    order; filtered by state and name."""
    query["group"] = group
    show(fetch("/v1/vms", "vms", every_page, **query), "vms", vms_table, "ferry vms", **query)
