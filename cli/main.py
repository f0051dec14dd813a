"""ferry: the operator's command line."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.live import Live

from cli.client import Gateway, GatewayError
from cli.cutover import follow_cutover, print_verification
from cli.status import group_table, group_watch, groups_table, groups_watch
from shared.plan import PlanError, load_plan_file
from shared.settings import Settings

console = Console()
TERMINAL_STATUSES = {"ready", "live"}


def _gateway() -> Gateway:
    return Gateway.from_settings(Settings())


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/bold red] {message}", highlight=False)
    sys.exit(code)


def _call(method: str, path: str, body=None, content_type: str = "application/json") -> dict:
    try:
        return _gateway().call(method, path, body, content_type)
    except GatewayError as exc:
        lines = [str(exc)] + [
            f"  {p['location']}: {p['message']}" for p in exc.body.get("problems", [])
        ]
        _fail("\n".join(lines))


def _load(plan: Path):
    try:
        return load_plan_file(plan)
    except PlanError as exc:
        _fail(f"{plan} is not valid:\n{exc}")


def legacy_system_of(vm) -> str:
    """What `validate` can say of a VM's legacy system before anything is archived."""
    if vm.source is None:
        return "a new VM: the base image (Debian 12, systemd, ifupdown)"
    if vm.source.system is not None:
        return f"legacy system {vm.source.system.summary()} (named in the plan)"
    if any(spec.path == "/" for spec in vm.archives):
        return "legacy system: read from its root when archived"
    return "no root archive: the base image (Debian 12, systemd, ifupdown)"


@click.group()
def main() -> None:
    """Move whole groups of Linux VMs to new infrastructure."""


@main.command()
@click.argument("plan", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def validate(plan: Path) -> None:
    """Check a plan without submitting it."""
    parsed = _load(plan)
    console.print(f"{plan}: group {parsed.group!r} with {len(parsed.vms)} VMs is valid")
    for vm in parsed.vms:
        console.print(f"  {vm.name}: {legacy_system_of(vm)}", highlight=False)


@main.command()
@click.argument("plan", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def submit(plan: Path) -> None:
    """Validate a plan and submit it; its group starts its journey."""
    parsed = _load(plan)
    # Sent as JSON with source paths resolved against the plan's folder.
    answer = _call("POST", "/v1/groups", parsed.model_dump(mode="json"))
    console.print(f"submitted group {answer['name']} ({answer['id']})")


@main.command()
@click.argument("group", required=False)
@click.option("--watch", is_flag=True, help="Refresh until stopped (Ctrl-C).")
@click.option("--until-ready", is_flag=True, help="With --watch: stop when the group is ready "
              "(exit 1 if it halts).")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between refreshes.")
@click.option("--timeout", default=0.0, help="With --until-ready: give up after this many seconds.")
def status(group: str | None, watch: bool, until_ready: bool, interval: float, timeout: float) -> None:
    """The groups, or one group's VMs with their states, steps and messages."""
    def render():
        if group:
            detail = _call("GET", f"/v1/groups/{group}")
            return (group_watch if watch else group_table)(detail), detail["status"]
        return (groups_watch if watch else groups_table)(_call("GET", "/v1/groups")["groups"]), None

    if not watch:
        console.print(render()[0])
        return
    started = time.monotonic()
    with Live(render()[0], console=console, refresh_per_second=4) as live:
        while True:
            table, state = render()
            live.update(table)
            if until_ready and state in TERMINAL_STATUSES:
                return
            if until_ready and state == "halted":
                sys.exit(1)
            if timeout and time.monotonic() - started > timeout:
                _fail(f"group {group} not ready after {timeout:.0f}s")
            time.sleep(interval)


@main.command()
@click.argument("vm", metavar="GROUP/VM")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new messages.")
def logs(vm: str, follow: bool) -> None:
    """A VM's log messages."""
    vm_id = _vm_id(vm)
    after = 0
    while True:
        for message in _call("GET", f"/v1/vms/{vm_id}/messages?after={after}")["messages"]:
            console.print(f"{message['at'][:19]} {message['level']:<7} {message['text']}",
                          highlight=False, markup=False)
            after = message["id"]
        if not follow:
            return
        time.sleep(1)


@main.command()
@click.argument("group")
def resume(group: str) -> None:
    """Lift a halted group's halt."""
    _call("POST", f"/v1/groups/{group}/resume")
    console.print(f"group {group} resumed")


@main.command()
@click.argument("vm", metavar="GROUP/VM")
def retry(vm: str) -> None:
    """Send a failed VM back to redo the phase that failed."""
    answer = _call("POST", f"/v1/vms/{_vm_id(vm)}/retry")
    console.print(f"{vm} will redo from {answer.get('held_state') or answer['state']}")


@main.command()
@click.argument("group")
@click.option("--prepare", is_flag=True, help="Only the steps ahead of the window (lower the "
              "DNS TTLs, a first rsync pass), at least a TTL before the cutover.")
@click.option("--rehearse-failure-at", "rehearse", metavar="STEP",
              help="Rehearse the rollback: STEP fails after doing its work.")
@click.option("--database-mode", type=click.Choice(["dump-and-restore", "replication"]),
              help="This run's database cutover instead of the plan's cutover.mode.")
@click.option("--no-wait", is_flag=True, help="Return once the run is requested.")
def cutover(group: str, prepare: bool, rehearse: str | None, database_mode: str | None,
            no_wait: bool) -> None:
    """Cut a ready group over (or prepare it), showing each step; ends with the downtime a
    prober measured from outside, or with the rollback and its reason."""
    body = {"prepare": prepare, **({"rehearse_failure_at": rehearse} if rehearse else {}),
            **({"database_mode": database_mode} if database_mode else {})}
    run_id = _call("POST", f"/v1/groups/{group}/cutover", body)["run_id"]
    console.print(f"cutover of {group} requested (run {run_id})")
    if no_wait:
        return
    run = follow_cutover(lambda: _call("GET", f"/v1/groups/{group}/cutover"), run_id,
                         console.print)
    if run["status"] != "completed":
        sys.exit(1)


@main.command()
@click.argument("group")
def verify(group: str) -> None:
    """How to reach each site at its new address, and the plan's HTTP checks run against the
    new VMs (exit 1 if one fails)."""
    answer = _call("GET", f"/v1/groups/{group}/verify")
    print_verification(answer, console.print)
    if not answer["passed"]:
        sys.exit(1)


@main.command("dlq")
@click.argument("service")
@click.option("--replay", is_flag=True, help="Put them back on the service's queue.")
def dead_letters(service: str, replay: bool) -> None:
    """A service's dead letters (events its handler failed on for good)."""
    if replay:
        moved = _call("POST", f"/v1/dead-letters/{service}/replay")["replayed"]
        console.print(f"{moved} replayed")
        return
    for letter in _call("GET", f"/v1/dead-letters/{service}")["messages"]:
        replays = f", replayed {letter['replays']}x" if letter.get("replays") else ""
        console.print(f"{letter['failed_at']} {letter['type']} {letter['message_id']}\n"
                      f"    after {letter['attempts']} attempt(s){replays}: {letter['error']}",
                      highlight=False, markup=False)


@main.command("run-all")
def run_all() -> None:
    """Run every service and the gateway in this one process (for development)."""
    from services.runtime import SERVICES
    from services.runtime import main as run

    run(list(SERVICES), gateway=True)


from cli.demo import demo  # noqa: E402 - registered last, it imports the services

main.add_command(demo)

from cli.lifecycle import commands as lifecycle  # noqa: E402 - cancel, finalize, prune

for command in lifecycle(_call, _fail, lambda text: console.print(text, highlight=False,
                                                                      markup=False)):
    main.add_command(command)


def _vm_id(ref: str) -> str:
    group, _, name = ref.partition("/")
    if not name:
        return ref  # an id
    detail = _call("GET", f"/v1/groups/{group}")
    for vm in detail["vms"]:
        if vm["name"] == name:
            return vm["id"]
    _fail(f"group {group} has no VM {name!r}")


@main.group()
def lab() -> None:
    """The lab on this machine: real VMs through libvirt and the example legacy hosts."""


@lab.command("down")
def lab_down() -> None:
    """Remove every lab VM (domain and disks), network and filter, and stop the legacy hosts
    (what `ferry demo --keep` leaves)."""
    import asyncio

    from lab.control import down

    asyncio.run(down(Settings()))
    console.print("the lab is down: no VM, network, filter or legacy host left")


if __name__ == "__main__":
    main()
