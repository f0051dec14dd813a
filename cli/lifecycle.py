"""`ferry cancel`, `ferry finalize` and `ferry prune`: the end of a migration, and the store's
housekeeping.

Cancel and finalize ask the gateway, then follow the group until it has ended (or say why it
did not), with the other commands' gateway (cli/session.py), output (-o json: the group as it
ended) and exit statuses (cli/exits.py).
"""

from __future__ import annotations

import time

import click

from cli.confirm import stdin_is_terminal
from cli.exits import CliError, Exit
from cli.output import emit, json_wanted, output_option, say
from cli.session import call, context_option

POLL_S = 0.5


def fail(message: str, code: Exit = Exit.FAILED) -> None:
    raise CliError(message, code)


def commands() -> list[click.Command]:
    """The commands, registered by cli/main.py."""

    @click.command()
    @output_option
    @context_option
    @click.argument("group")
    @click.option("--yes", is_flag=True, help="Do not ask for the group's name: cancel.")
    @click.option("--no-wait", is_flag=True, help="Return once the cancel is accepted.")
    @click.option("--timeout", default=600.0, show_default=True,
                  help="Seconds to wait for the group to be cancelled.")
    def cancel(group: str, yes: bool, no_wait: bool, timeout: float) -> None:
        """Cancel a group before its cutover: its VMs deleted through the provider, its
        archives removed, its VMs' tokens revoked; on the legacy hosts only what a prepared
        cutover set up is removed, and the group's name may be submitted again. Asks for the group's name to be typed, unless
        --yes. Run again to retry a cancel that stopped short."""
        if not yes and not stdin_is_terminal():
            fail("ferry cancel asks for the group's name to be typed, and there is no "
                 "terminal to ask on: pass --yes to cancel without asking", Exit.USAGE)
        detail = call("GET", f"/v1/groups/{group}")
        if not yes:
            _confirm(detail)
        # By id: the group just shown, even if a newer one takes its name meanwhile.
        call("POST", f"/v1/groups/{detail['id']}/cancel")
        say(f"cancelling group {detail['name']}: deleting its VMs")
        if no_wait:
            return
        ended = _wait_for(detail, "cancelled", timeout)
        _report(ended, f"group {detail['name']} cancelled: its VMs are deleted, its archives "
                "removed and its VMs' tokens revoked; on the legacy hosts only what a prepared "
                f"cutover set up was removed, and the name {detail['name']} is free again")

    @click.command()
    @output_option
    @context_option
    @click.argument("group")
    @click.option("--forwarding", type=click.Choice(["keep", "remove"]), required=True,
                  help="The legacy hosts' forwarding of the old public addresses to the new "
                  "VMs: keep it (clients that still use an old address reach the new site), "
                  "or remove it.")
    @click.option("--no-wait", is_flag=True, help="Return once the finalize is accepted.")
    @click.option("--timeout", default=600.0, show_default=True,
                  help="Seconds to wait for the group to be finalized.")
    def finalize(group: str, forwarding: str, no_wait: bool, timeout: float) -> None:
        """Close a live group after its cutover: the forwarding kept or removed, its archives
        and VM tokens removed. Run again to retry a finalize that stopped short."""
        detail = call("GET", f"/v1/groups/{group}")
        call("POST", f"/v1/groups/{detail['id']}/finalize", {"forwarding": forwarding})
        say(f"finalizing group {detail['name']}"
            + (": removing the forwarding on the legacy hosts" if forwarding == "remove" else ""))
        if no_wait:
            return
        ended = _wait_for(detail, "finalized", timeout)
        _report(ended, f"group {detail['name']} finalized: the forwarding on the legacy hosts "
                f"was {ended.get('legacy_forwarding')}, its archives and VM tokens removed; it "
                "is closed")

    @click.command()
    @output_option
    @context_option
    @click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
    def prune(dry_run: bool) -> None:
        """Delete now what the retention settings let go (FERRY_RETENTION_*: published outbox
        events, processed-event records, VM messages of groups closed long ago); the
        coordinator also does it periodically."""
        found = call("POST", "/v1/retention/prune", {"dry_run": dry_run})
        _report(found, ("would delete" if dry_run else "deleted")
                + f" {found['outbox']} published outbox events, {found['inbox']} inbox records, "
                f"{found['vm_messages']} VM messages of closed groups")

    return [cancel, finalize, prune]


def _report(data: dict, text: str) -> None:
    """What a command ends with: `data` as JSON with -o json, else `text` for a person."""
    if json_wanted():
        emit(data)
    else:
        say(text)


def _confirm(detail: dict) -> None:
    name = detail["name"]
    vms = ", ".join(f"{vm['name']} {vm['state']}" for vm in detail["vms"])
    say(f"Cancelling group {name} ({detail['status']}; {vms}) deletes its VMs through the "
        "provider and removes its archives; on the legacy hosts only what a prepared cutover "
        "set up is removed. It cannot be undone.")
    try:
        typed = click.prompt("Type the group's name to cancel it", default="",
                             show_default=False, err=True)
    except click.Abort:  # end of input, or Ctrl-C at the prompt
        typed = ""
    if typed.strip() != name:
        fail(f"you typed {typed.strip()!r}, not {name!r}: nothing was cancelled")


def _wait_for(detail: dict, status: str, timeout: float) -> dict:
    """Poll the group until it reaches `status`; fail with the group's own reason when its
    cancel or finalize stopped short, or when `timeout` passes."""
    name = detail["name"]
    deadline = time.monotonic() + timeout
    while True:
        now = call("GET", f"/v1/groups/{detail['id']}")
        if now["status"] == status:
            return now
        if now.get("closing_error"):
            fail(f"group {name} is still {now['status']}: {now['closing_error']}")
        if time.monotonic() > deadline:
            fail(f"group {name} is still {now['status']} after {timeout:.0f}s; `ferry status "
                 f"{name}` shows it, and running this again retries", Exit.TIMED_OUT)
        time.sleep(POLL_S)
