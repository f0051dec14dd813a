"""`ferry status`: the groups, or one group's VMs, as a table; `--watch` shows them live with
a progress bar per group and per VM."""

from __future__ import annotations

import time

import click
from rich.console import Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from cli import session
from cli.exits import CliError, Exit
from cli.listings import fetch, listing_options, listing_path, show
from cli.output import emit, emit_line, json_wanted, out, output_option
from cli.session import context_option
from shared.states import VmState

# The journey, in order: a VM's progress is where its state stands on it (a database VM goes
# through loading and replicating, an app VM skips them).
JOURNEY: tuple[str, ...] = tuple(s.value for s in (
    VmState.PLANNED, VmState.ARCHIVING, VmState.ARCHIVED, VmState.CREATING, VmState.CREATED,
    VmState.CONFIGURING, VmState.CONFIGURED, VmState.PROVISIONING, VmState.PROVISIONED,
    VmState.LOADING, VmState.REPLICATING, VmState.READY, VmState.CUTTING_OVER, VmState.LIVE))

STATE_STYLE = {
    "failed": "bold red", "halted": "yellow", "ready": "green", "live": "bold green",
    "cancelling": "yellow", "cancelled": "dim", "finalizing": "green", "finalized": "bold green",
}
# Ready, or past it: what --until-ready waits for.
TERMINAL_STATUSES = {"ready", "live", "finalizing", "finalized"}
# A group on its way out before its cutover: it will never be ready.
CANCELLED_STATUSES = {"cancelling", "cancelled"}
# A group whose VMs are simulated (provider sim) says so wherever it is shown: its states are
# those of processes playing VMs, not of machines.
SIMULATED = "SIMULATED VMs"


def groups_table(groups: list[dict]) -> Table:
    table = Table(title="Groups")
    for column in ("group", "status", "VMs", "states", "since"):
        table.add_column(column)
    for g in groups:
        states = ", ".join(f"{k}={v}" for k, v in sorted(g["states"].items()))
        table.add_row(g["name"], _group_status(g), str(g["vm_count"]), states,
                      g["created_at"][:19])
    return table


def _group_status(group: dict) -> str:
    status = _styled(group["status"])
    return f"{status} [magenta]({SIMULATED})[/magenta]" if group.get("simulated") else status


def group_table(group: dict) -> Table:
    title = f"{group['name']}  [{group['status']}]"
    if group.get("simulated"):
        title += f"  {SIMULATED}: nothing real is migrated"
    if group.get("halted_reason"):
        title += f"\nHALTED: {group['halted_reason']}"
    table = Table(title=title)
    for column in ("VM", "role", "legacy system", "state", "step", "in state", "message"):
        table.add_column(column)
    for vm in group["vms"]:
        state = vm["state"] + (f" (at {vm['held_state']})" if vm.get("held_state") else "")
        table.add_row(vm["name"], vm["role"], system_cell(vm.get("system")),
                      _styled(vm["state"], state), vm.get("step") or "",
                      f"{vm['seconds_in_state']:.0f}s", note(vm, 60))
    return table


def note(vm: dict, width: int) -> str:
    """What the VM says: why it waits (for a slot: docs/operations.md, "Limits"), which goes
    whole, else its message, cut to `width`."""
    if vm.get("waiting"):
        return f"[yellow]{escape(vm['waiting'])}[/yellow]"
    return (vm.get("message") or "")[:width]


def system_cell(system: dict | None) -> str:
    """The legacy host's system, short (`debian 11 sysvinit/ifupdown`); blank until archived."""
    if not system:
        return ""
    release = f"{system.get('family', '?')} {system.get('release', '')}".strip()
    return f"{release} {system.get('init', '?')}/{system.get('network', '?')}"


def _styled(state: str, text: str | None = None) -> str:
    style = STATE_STYLE.get(state)
    text = text or state
    return f"[{style}]{text}[/{style}]" if style else text


def progress(state: str, held_state: str | None = None, failed_from: str | None = None) -> float:
    """How far along the journey a VM is, 0 to 1: a failed VM where it failed, a halted one
    where it is held, a rolled-back one back at ready."""
    where = {"failed": failed_from, "halted": held_state, "rolled_back": "ready"}.get(state, state)
    if where not in JOURNEY:
        return 0.0
    return JOURNEY.index(where) / (len(JOURNEY) - 1)


def group_progress(states: dict[str, int]) -> float:
    """The mean progress of a group's VMs, from its count of VMs by state."""
    total = sum(states.values())
    return sum(progress(state) * n for state, n in states.items()) / total if total else 0.0


def _bar(fraction: float, state: str | None = None, width: int = 24) -> RenderableType:
    style = {"failed": "red", "halted": "yellow"}.get(state or "", "green")
    bar = ProgressBar(total=100, completed=round(fraction * 100), width=width,
                      complete_style=style, finished_style="bold green")
    table = Table.grid(padding=(0, 1))
    table.add_row(bar, Text(f"{fraction * 100:3.0f}%"))
    return table


def duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def groups_watch(groups: list[dict]) -> Table:
    """The groups, each with a progress bar (`ferry status --watch`)."""
    table = Table(title="Groups")
    for column in ("group", "status", "progress", "VMs", "states"):
        table.add_column(column)
    for g in groups:
        states = ", ".join(f"{k}={v}" for k, v in sorted(g["states"].items()))
        table.add_row(g["name"], _group_status(g),
                      _bar(group_progress(g["states"]), g["status"]), str(g["vm_count"]), states)
    return table


def group_watch(group: dict) -> RenderableType:
    """One group live (`ferry status GROUP --watch`): its progress, then each VM's progress bar,
    current step and time in its phase."""
    fractions = [progress(vm["state"], vm.get("held_state"), vm.get("failed_from"))
                 for vm in group["vms"]]
    overall = sum(fractions) / len(fractions) if fractions else 0.0
    head = Table.grid(padding=(0, 2))
    head.add_row(Text(group["name"], style="bold"), _styled(group["status"]),
                 _bar(overall, group["status"], width=40))
    parts: list[RenderableType] = [head]
    if group.get("simulated"):
        parts.append(Text(f"{SIMULATED}: nothing real is migrated", style="magenta"))
    if group.get("halted_reason"):
        parts.append(Text(f"HALTED: {group['halted_reason']}", style="yellow"))
    table = Table()
    for column in ("VM", "role", "state", "progress", "step", "in phase", "message"):
        table.add_column(column)
    for vm, fraction in zip(group["vms"], fractions):
        state = vm["state"] + (f" (at {vm['held_state']})" if vm.get("held_state") else "")
        if vm["state"] == "failed" and vm.get("failed_from"):
            state += f" (in {vm['failed_from']})"
        table.add_row(vm["name"], vm["role"], _styled(vm["state"], state),
                      _bar(fraction, vm["state"]), vm.get("step") or "",
                      duration(vm["seconds_in_state"]), note(vm, 50))
    parts.append(table)
    return Group(*parts)


@click.command()
@click.argument("group", required=False)
@click.option("--watch", is_flag=True, help="Refresh until stopped (Ctrl-C); with -o json, "
              "one JSON line per refresh.")
@click.option("--until-ready", is_flag=True, help="Watch GROUP until it is ready (exit 0), "
              "halted (exit 3) or --timeout passes (exit 4).")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between refreshes.")
@click.option("--timeout", default=0.0, help="With --watch: give up after this many seconds.")
@listing_options
@output_option
@context_option
def status(group: str | None, watch: bool, until_ready: bool, interval: float,
           timeout: float, every_page: bool, **query) -> None:
    """The groups (a page at a time, newest first), or one group's VMs with their states, steps
    and messages (exit 3 when the group is halted)."""
    if until_ready and not group:
        raise click.UsageError("--until-ready watches one group: name it")
    if group and (every_page or any(v not in (None, ()) for v in query.values())):
        raise click.UsageError("--limit, --cursor, --status, --name and --all page through "
                               "the groups: leave GROUP out (`ferry vms --group GROUP` pages "
                               "through a group's VMs)")
    if watch and every_page:
        raise click.UsageError("--watch shows one page: use --limit (up to 500) rather than "
                               "--all")
    watch = watch or until_ready
    if not group and not watch:
        show(fetch("/v1/groups", "groups", every_page, **query), "groups", groups_table,
             "ferry status", **query)
        return
    path = f"/v1/groups/{group}" if group else listing_path("/v1/groups", **query)
    if not watch:
        answer = session.call("GET", path)
        if json_wanted():
            emit(answer)
        else:
            out.print(group_table(answer))
        if answer["status"] == "halted":
            raise click.exceptions.Exit(Exit.HALTED)
        return
    _watch(group, path, until_ready, interval, timeout)


def _watch(group: str | None, path: str, until_ready: bool, interval: float,
           timeout: float) -> None:
    def view(answer: dict):
        if group:
            return group_watch(answer)
        return groups_watch(answer["groups"])

    started = time.monotonic()
    live = None if json_wanted() else Live(console=out, refresh_per_second=4)
    try:
        if live:
            live.start()
        while True:
            answer = session.call("GET", path)
            if live:
                live.update(view(answer))
            else:
                emit_line(answer)
            state = answer.get("status") if group else None
            if until_ready and state in TERMINAL_STATUSES:
                return
            if until_ready and state in CANCELLED_STATUSES:
                raise CliError(f"group {group} is {state}: it will not be ready")
            if until_ready and state == "halted":
                raise CliError(f"group {group} halted: {answer.get('halted_reason')}",
                               Exit.HALTED)
            if timeout and time.monotonic() - started > timeout:
                raise CliError(f"group {group} not ready after {timeout:g} s (it is {state})"
                               if until_ready else f"stopped watching after {timeout:g} s",
                               Exit.TIMED_OUT)
            time.sleep(interval)
    finally:
        if live:
            live.stop()
