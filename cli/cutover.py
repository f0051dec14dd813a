"""The cutover from the CLI: `ferry verify` and `ferry cutover`, a run followed step by step."""

from __future__ import annotations

import time
from typing import Callable

import click

from cli import session
from cli.client import GatewayError
from cli.confirm import confirm_cutover
from cli.exits import CliError, Exit
from cli.output import emit, err, json_wanted, output_option, say
from cli.session import context_option

POLL_S = 0.5
TIMEOUT_S = 3 * 3600.0
# A gateway restarting (or a VPN hiccup) mid-run is waited out this long before the command
# gives up following; the run itself goes on in the cutover service either way.
LOST_GRACE_S = 15.0
ENDED = ("completed", "rolled_back", "failed", "refused")


class LostRun(Exception):
    """The gateway stopped answering while a run was followed; the run's outcome is unknown
    here (it goes on in the cutover service)."""

    def __init__(self, run_id: str, reason: str):
        self.run_id = run_id
        self.reason = reason
        super().__init__(reason)


def step_line(step: dict) -> str:
    seconds = f"{step['seconds']:.1f}s" if step.get("seconds") is not None else "-"
    line = f"  {step['status']:<11} {step['name']:<24} {seconds:>8}"
    if step.get("detail"):
        line += f"  {step['detail']}"
    if step.get("error"):
        line += f"  error: {step['error']}"
    if step.get("undo_error"):
        line += f"  undo failed: {step['undo_error']}"
    return line


def follow_cutover(runs: Callable[[], dict], run_id: str, say: Callable[[str], None], *,
                   timeout_s: float | None = None, lost_grace_s: float | None = None) -> dict:
    """Print each step of run `run_id` as it finishes (and again when undone); the ended run.

    TimeoutError after `timeout_s` (TIMEOUT_S); LostRun when `runs` (the gateway) has not
    answered for `lost_grace_s` (LOST_GRACE_S)."""
    timeout_s = TIMEOUT_S if timeout_s is None else timeout_s
    lost_grace_s = LOST_GRACE_S if lost_grace_s is None else lost_grace_s
    shown: dict[int, str] = {}
    deadline = time.monotonic() + timeout_s
    run = None
    silent_since: float | None = None
    while True:
        try:
            listed = runs()["runs"]
        except GatewayError as exc:
            if not exc.unavailable:
                raise
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since >= lost_grace_s:
                raise LostRun(run_id, str(exc)) from None
        else:
            silent_since = None
            run = next((r for r in listed if r["id"] == run_id), None)
            for step in (run or {}).get("steps", []):
                if step["status"] != "running" and shown.get(step["position"]) != step["status"]:
                    shown[step["position"]] = step["status"]
                    say(step_line(step))
            if run and run["status"] in ENDED:
                break
        if time.monotonic() > deadline:
            raise TimeoutError(f"cutover run {run_id} still {run and run['status']} after "
                               f"{timeout_s:g} s")
        time.sleep(POLL_S)
    if run["status"] == "completed":
        downtime = run.get("downtime_s")
        say("cutover completed" + (f": downtime {downtime:.1f}s, measured by a prober from "
                                   "outside" if downtime is not None else
                                   " (prepared)" if run["prepare"] else ""))
    else:
        say(f"cutover {run['status'].replace('_', ' ')}: {run.get('reason')}")
    return run


def print_verification(answer: dict, say: Callable[[str], None]) -> None:
    say(f"{answer['group']} ({answer['status']}): the new VMs, before DNS moves. "
        "Add to /etc/hosts:")
    for site in answer["sites"]:
        say(f"  {site['hosts_line']}")
    say("or ask for a name at its new address:")
    for site in answer["sites"]:
        for line in site["curl"]:
            say(f"  {line}")
    say("checks:" if answer["checks"] else "checks: none in the plan")
    for check in answer["checks"]:
        say(f"  {'pass' if check['ok'] else 'FAIL'} {check['vm']} {check['url']} at "
            f"{check['address']}: {check['detail']}")


# -- the commands ----------------------------------------------------------------------------

@click.command()
@click.argument("group")
@click.option("--prepare", is_flag=True, help="Only the steps ahead of the window (lower the "
              "DNS TTLs, a first rsync pass), at least a TTL before the cutover.")
@click.option("--rehearse-failure-at", "rehearse", metavar="STEP",
              help="Rehearse the rollback: STEP fails after doing its work.")
@click.option("--database-mode", type=click.Choice(["dump-and-restore", "replication"]),
              help="This run's database cutover instead of the plan's cutover.mode.")
@click.option("--no-wait", is_flag=True, help="Return once the run is requested.")
@click.option("--follow", "follow_only", is_flag=True, help="Request nothing: follow the "
              "group's newest run (one whose following was lost or stopped).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (a script: "
              "needed when stdin is not a terminal).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=TIMEOUT_S,
              show_default=True, help="Stop following after this many seconds (exit 4); the "
              "run goes on.")
@output_option
@context_option
def cutover(group: str, prepare: bool, rehearse: str | None, database_mode: str | None,
            no_wait: bool, follow_only: bool, yes: bool, timeout: float) -> None:
    """Cut a ready group over (or prepare it), showing each step; ends with the downtime a
    prober measured from outside, or with the rollback and its reason. Asks first: type the
    group's name (y/N for --prepare), or give --yes."""
    where = session.target()
    if follow_only:
        if prepare or rehearse or database_mode or no_wait:
            raise click.UsageError("--follow requests nothing: it goes without --prepare, "
                                   "--rehearse-failure-at, --database-mode and --no-wait")
        runs = session.call("GET", f"/v1/groups/{group}/cutover")["runs"]
        if not runs:
            raise CliError(f"group {group} has no cutover run to follow")
        run_id = runs[0]["id"]
        say(f"following cutover run {run_id} of {group} ({runs[0]['status']})")
    else:
        run_id = _request(group, where, yes, {
            "prepare": prepare, **({"rehearse_failure_at": rehearse} if rehearse else {}),
            **({"database_mode": database_mode} if database_mode else {})})
        say(f"cutover of {group} requested (run {run_id})")
        if no_wait:
            if json_wanted():
                emit({"group": group, "run_id": run_id})
            return
    run = _follow(group, run_id, where, timeout)
    if json_wanted():
        emit(run)
    if run["status"] != "completed":
        raise click.exceptions.Exit(Exit.FAILED)


def _request(group: str, where: session.Target, yes: bool, body: dict) -> str:
    if not yes:
        detail = session.call("GET", f"/v1/groups/{group}")
        confirm_cutover(detail, prepare=body["prepare"], where=_describe(where))
    try:
        return where.gateway().call("POST", f"/v1/groups/{group}/cutover", body)["run_id"]
    except GatewayError as exc:
        if exc.kind == "lost":
            raise CliError(f"{exc}: the cutover of {group} may or may not have been requested; "
                           f"`ferry cutover {group} --follow` shows its newest run",
                           Exit.UNAVAILABLE) from None
        if exc.status == 409:
            halted = session.call("GET", f"/v1/groups/{group}")
            if halted["status"] == "halted":
                raise CliError(f"group {halted['name']} is halted: {halted['halted_reason']} "
                               "(`ferry status`, then `ferry retry` or `ferry resume`)",
                               Exit.HALTED) from None
        raise session.failure(exc, where) from None


def _describe(where: session.Target) -> str:
    return where.url + (f" (context {where.context})" if where.context else "")


def _follow(group: str, run_id: str, where: session.Target, timeout: float) -> dict:
    gateway = where.gateway()
    again = f"`ferry cutover {group} --follow` picks it up again"
    try:
        return follow_cutover(lambda: gateway.call("GET", f"/v1/groups/{group}/cutover"),
                              run_id, say, timeout_s=timeout)
    except LostRun as exc:
        raise CliError(f"lost cutover run {run_id} of {group}: {exc.reason}. The run goes on "
                       f"in the cutover service; {again}", Exit.UNAVAILABLE) from None
    except TimeoutError:
        raise CliError(f"cutover run {run_id} of {group} has not ended after {timeout:g} s; it "
                       f"goes on; {again}", Exit.TIMED_OUT) from None
    except GatewayError as exc:
        raise session.failure(exc, where) from None
    except KeyboardInterrupt:
        err.print(f"stopped following cutover run {run_id} of {group}; the run goes on; {again}",
                  highlight=False, markup=False, soft_wrap=True)
        raise click.exceptions.Exit(Exit.INTERRUPTED) from None


@click.command()
@click.argument("group")
@output_option
@context_option
def verify(group: str) -> None:
    """How to reach each site at its new address, and the plan's HTTP checks run against the
    new VMs (exit 1 if one fails)."""
    answer = session.call("GET", f"/v1/groups/{group}/verify")
    if json_wanted():
        emit(answer)
    else:
        print_verification(answer, say)
    if not answer["passed"]:
        raise click.exceptions.Exit(Exit.FAILED)
