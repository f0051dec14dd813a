"""ferry: the operator's command line.

Its parts: cli/session.py (which gateway, its calls), cli/config.py (the config file's
contexts), cli/output.py (text or -o json), cli/exits.py (what the exit status says),
cli/cutover.py (verify and cutover), cli/status.py (status's tables).
"""

from __future__ import annotations

import time
from importlib import metadata
from pathlib import Path

import click

from cli import session
from cli.access import audit, token
from cli.config_commands import config
from cli.cutover import cutover, verify
from cli.exits import CliError, epilog
from cli.listings import vms
from cli.output import emit, emit_line, json_wanted, out, output_option
from cli.session import context_option
from cli.status import status
from shared.plan import PlanError, load_plan_file
from shared.settings import Settings

def package_version() -> str:
    try:
        return metadata.version("ferryman")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (the ferryman package is not installed)"


def _load(plan: Path):
    try:
        return load_plan_file(plan)
    except PlanError as exc:
        if json_wanted():
            emit({"plan": str(plan), "valid": False, "group": None, "vms": [],
                  "problems": [{"location": p.location, "message": p.message, "line": p.line,
                                "column": p.column} for p in exc.problems]})
        raise CliError(f"{plan} is not valid:\n{exc}") from None


def legacy_system_of(vm) -> str:
    """What `validate` can say of a VM's legacy system before anything is archived."""
    if vm.source is None:
        return "a new VM: the base image (Debian 12, systemd, ifupdown)"
    if vm.source.system is not None:
        return f"legacy system {vm.source.system.summary()} (named in the plan)"
    if any(spec.path == "/" for spec in vm.archives):
        return "legacy system: read from its root when archived"
    return "no root archive: the base image (Debian 12, systemd, ifupdown)"


@click.group(epilog=epilog())
@click.version_option(package_version(), "--version", prog_name="ferry",
                      message="%(prog)s %(version)s")
@output_option
@context_option
def main() -> None:
    """Move whole groups of Linux VMs to new infrastructure."""


@main.command()
@click.argument("plan", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@output_option
def validate(plan: Path) -> None:
    """Check a plan without submitting it."""
    parsed = _load(plan)
    vms = [{"name": vm.name, "role": vm.role.value, "legacy_system": legacy_system_of(vm)}
           for vm in parsed.vms]
    if json_wanted():
        emit({"plan": str(plan), "valid": True, "group": parsed.group, "vms": vms,
              "problems": []})
        return
    out.print(f"{plan}: group {parsed.group!r} with {len(parsed.vms)} VMs is valid")
    for vm in vms:
        out.print(f"  {vm['name']}: {vm['legacy_system']}", highlight=False)


@main.command()
@click.argument("plan", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@output_option
@context_option
def submit(plan: Path) -> None:
    """Validate a plan and submit it; its group starts its journey."""
    parsed = _load(plan)
    # Sent as JSON with source paths resolved against the plan's folder.
    answer = session.call("POST", "/v1/groups", parsed.model_dump(mode="json"))
    if json_wanted():
        emit(answer)
    else:
        out.print(f"submitted group {answer['name']} ({answer['id']})")


@main.command()
@click.argument("vm", metavar="GROUP/VM")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new messages.")
@output_option
@context_option
def logs(vm: str, follow: bool) -> None:
    """A VM's log messages (with -o json: one JSON line per message)."""
    vm_id = _vm_id(vm)
    after = 0
    while True:
        for message in session.call("GET", f"/v1/vms/{vm_id}/messages?after={after}")["messages"]:
            if json_wanted():
                emit_line(message)
            else:
                out.print(f"{message['at'][:19]} {message['level']:<7} {message['text']}",
                          highlight=False, markup=False)
            after = message["id"]
        if not follow:
            return
        time.sleep(1)


@main.command()
@click.argument("group")
@output_option
@context_option
def resume(group: str) -> None:
    """Lift a halted group's halt."""
    session.call("POST", f"/v1/groups/{group}/resume")
    if json_wanted():
        emit({"group": group, "resumed": True})
    else:
        out.print(f"group {group} resumed")


@main.command()
@click.argument("vm", metavar="GROUP/VM")
@output_option
@context_option
def retry(vm: str) -> None:
    """Send a failed VM back to redo the phase that failed."""
    answer = session.call("POST", f"/v1/vms/{_vm_id(vm)}/retry")
    if json_wanted():
        emit(answer)
    else:
        out.print(f"{vm} will redo from {answer.get('held_state') or answer['state']}")


main.add_command(status)
main.add_command(vms)
main.add_command(cutover)
main.add_command(verify)
main.add_command(config)
main.add_command(token)
main.add_command(audit)


@main.command("dlq")
@click.argument("service")
@click.option("--replay", is_flag=True, help="Put them back on the service's queue.")
@output_option
@context_option
def dead_letters(service: str, replay: bool) -> None:
    """A service's dead letters (events its handler failed on for good)."""
    if replay:
        answer = session.call("POST", f"/v1/dead-letters/{service}/replay")
        if json_wanted():
            emit(answer)
        else:
            out.print(f"{answer['replayed']} replayed")
        return
    answer = session.call("GET", f"/v1/dead-letters/{service}")
    if json_wanted():
        emit(answer)
        return
    for letter in answer["messages"]:
        replays = f", replayed {letter['replays']}x" if letter.get("replays") else ""
        out.print(f"{letter['failed_at']} {letter['type']} {letter['message_id']}\n"
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

for command in lifecycle():
    main.add_command(command)


def _vm_id(ref: str) -> str:
    group, _, name = ref.partition("/")
    if not name:
        return ref  # an id
    detail = session.call("GET", f"/v1/groups/{group}")
    for vm in detail["vms"]:
        if vm["name"] == name:
            return vm["id"]
    raise CliError(f"group {group} has no VM {name!r}; it has "
                   f"{', '.join(vm['name'] for vm in detail['vms'])}")


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
    out.print("the lab is down: no VM, network, filter or legacy host left")


if __name__ == "__main__":
    main(prog_name="ferry")
