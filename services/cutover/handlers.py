"""Cutover: runs the runbook (steps.py) of a ready group on an operator's `cutover.requested`.

A prepared run (`--prepare`) lowers the TTLs and makes a first rsync pass; the group stays
ready. A full run moves the group to cutting_over, runs every step while a prober asks for the
site by name from outside, and ends `live` with the measured downtime in `cutover.completed`,
or rolls back (every step undone, the old site serving) and ends `ready` again with its VMs
`rolled_back`, announced as `cutover.failed`.

The run is recorded as it goes (cutover_runs, cutover_steps). A delivery that finds its run
`running` means the service died mid-run: it rolls that run back from the journal instead of
running it again.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from services.cutover.runbook import Journal, Outcome, run_steps, undo_recorded
from services.cutover.steps import GroupRunbook, Machine
from shared import events as ev
from shared import journey
from shared.dns import DnsError
from shared.host_keys import BadHostKey, HostKey, write_known_hosts
from shared.logging import get_logger
from shared.plan import Plan, Role
from shared.prober import Prober, ProbeReport
from shared.providers.base import ProviderError
from shared.service import Context, Router
from shared.ssh import RemoteError
from shared.states import GroupStatus, VmState
from shared.store.cutover_runs import FINISHED, PENDING

log = get_logger(__name__)
router = Router("cutover")

# How long a new VM may take to answer the first SSH connection of a run (a handshake under
# emulation takes seconds; ssh's own ConnectTimeout bounds the connection itself).
PINNED_CHECK_S = 60.0
# After the last step, how long the prober may take to see the new site answer by name.
PROBE_SETTLE_S = 30.0


class CannotStart(Exception):
    """The runbook cannot even be put together (nothing was changed); says why."""


@router.on(ev.CutoverRequested)
async def run_cutover(request: ev.CutoverRequested, ctx: Context) -> None:
    run_id = uuid.UUID(request.run_id)
    async with ctx.store.session() as db:
        group = await db.groups.get(ctx.group_id)
    if group is None:
        return
    plan = group.parsed_plan()
    runbook = None
    if group.status in (GroupStatus.READY, GroupStatus.CUTTING_OVER):  # else _begin refuses
        try:
            runbook = await _runbook(ctx, ctx.group_id, plan, request)
        except CannotStart as exc:
            await _cannot_start(ctx, run_id, str(exc))
            return
    interrupted = await _begin(ctx, run_id, request.prepare)
    if interrupted is None:
        return
    if runbook is None:  # the group became ready in between: a redelivery takes it from here
        raise RuntimeError("the group changed while the cutover started; retrying")
    steps = runbook.steps(request.prepare)
    journal = Journal(ctx.store, run_id, ctx.group_id, ctx.envelope)
    if interrupted:
        log.warning("cutover run was interrupted; rolling it back", run_id=str(run_id))
        try:
            outcome = await undo_recorded(steps, journal)
        finally:
            await runbook.close()
        await _finish(ctx, run_id, request.prepare, outcome, None)
        return
    prober = None if request.prepare else _prober(ctx, plan, runbook)
    probing = asyncio.create_task(prober.run()) if prober else None
    try:
        outcome = await run_steps(steps, journal)
    finally:
        await runbook.close()
    report = await _stop_probing(prober, probing, outcome.completed)
    await _finish(ctx, run_id, request.prepare, outcome, report)


async def _cannot_start(ctx: Context, run_id: uuid.UUID, reason: str) -> None:
    """The run fails before any step: nothing was changed, no VM moves."""
    async with ctx.transaction() as tx:
        status = await tx.cutover_runs.status(run_id, lock=True)
        if status == "running":
            # Interrupted, and what it did cannot be undone from here: the operator must look.
            # The group stays cutting_over, so nothing else moves it meanwhile.
            reason = f"interrupted, and it cannot be rolled back: {reason}"
        elif status not in PENDING:
            return
        await tx.cutover_runs.finish(run_id, "failed", reason, None)
        await tx.publish(ev.CutoverFailed(run_id=str(run_id), reason=reason),
                         group_id=ctx.group_id)


async def _begin(ctx: Context, run_id: uuid.UUID, prepare: bool) -> bool | None:
    """Mark the run running (and the group cutting over), or refuse it. None: nothing to run;
    True: the run was interrupted (roll it back); False: run it."""
    async with ctx.guarded_transaction() as tx:
        group = await tx.groups.get(ctx.group_id, lock=True)
        status = await tx.cutover_runs.status(run_id)
        if group is None or status is None or status in FINISHED:
            return None  # gone, or a redelivery of a run that ended
        if status == "running":
            return True
        if group.status != GroupStatus.READY:
            reason = f"group {group.name} is {group.status}, not ready"
            await tx.cutover_runs.finish(run_id, "refused", reason, None)
            await tx.publish(ev.CutoverFailed(run_id=str(run_id), reason=reason),
                             group_id=group.id)
            return None
        await tx.cutover_runs.set_running(run_id)
        if not prepare:
            await journey.set_group_status(tx, group, GroupStatus.CUTTING_OVER)
            for vm in await tx.vms.of_group(group.id):
                await journey.transition(tx, vm.id, VmState.CUTTING_OVER, step="cutover")
        return False


async def _runbook(ctx: Context, group_id: uuid.UUID, plan: Plan,
                   request: ev.CutoverRequested) -> GroupRunbook:
    settings = ctx.settings
    staging = settings.state_dir / "cutover" / plan.group
    # The new VMs' host keys as they reported them (pinned): written afresh for every run from
    # the store, so a VM reconfigured since the last run is held to the keys it reported last.
    new_known_hosts = staging / "known_hosts-new-vms"
    new_known_hosts.parent.mkdir(parents=True, exist_ok=True)
    new_known_hosts.unlink(missing_ok=True)
    # Short: a unix socket's path must fit in 108 bytes. Removed by runbook.close(), or here
    # if the runbook cannot be put together.
    control = Path(tempfile.mkdtemp(prefix="ferry-ssh-"))
    try:
        return await _assemble(ctx, group_id, plan, request, staging, new_known_hosts, control)
    except BaseException:
        shutil.rmtree(control, ignore_errors=True)
        raise


async def _assemble(ctx: Context, group_id: uuid.UUID, plan: Plan, request: ev.CutoverRequested,
                    staging: Path, new_known_hosts: Path, control: Path) -> GroupRunbook:
    reach = ctx.deps.cutover
    async with ctx.store.session() as db:
        members = {vm.name: vm for vm in await db.vms.of_group(group_id)}
        reported = await db.host_keys.of_group(group_id)
    machines = []
    pinned: dict[tuple[str, int], list[HostKey]] = {}
    for planned in plan.vms:
        vm = members[planned.name]
        try:
            found = await ctx.provider.addresses(vm.provider_ref) if vm.provider_ref else []
        except ProviderError as exc:
            raise CannotStart(f"the address of {vm.name}: {exc}") from None
        if not found:
            raise CannotStart(f"{vm.name} has no address this machine reaches (provider "
                              f"{ctx.provider.name}): the cutover needs the new VMs on a "
                              "network it can reach")
        keys = reported.get(vm.id, [])
        if not keys:
            raise CannotStart(f"{vm.name} at {found[0]} reported no SSH host keys (host keys: "
                              "none): the cutover reaches a new VM only with the keys its "
                              "configuration script reported; reconfigure it (ferry retry)")
        pinned[(found[0], 22)] = keys
        source = planned.source
        legacy = None
        if source is not None and source.kind == "ssh":
            legacy = reach.legacy(f"legacy {vm.name}", source, control)
        new = reach.new_vm(f"new {vm.name}", found[0], new_known_hosts, control, tuple(keys))
        machines.append(Machine(planned, vm.id, found[0], new, legacy))
    try:
        write_known_hosts(new_known_hosts, pinned)
    except BadHostKey as exc:
        raise CannotStart(f"the new VMs' host keys: {exc}") from None
    await _reach_pinned(machines)
    dns = None
    if plan.cutover.dns is not None:
        try:
            dns = reach.zone(plan.cutover.dns)
        except DnsError as exc:
            raise CannotStart(f"DNS: {exc} (set FERRY_DNS_KEY_FILE)") from None
    return GroupRunbook(plan, machines, ctx.provider, dns, staging / "staging",
                        request.rehearse_failure_at, control_dir=control,
                        database_mode=request.database_mode)


async def _reach_pinned(machines: list[Machine]) -> None:
    """Every new VM answers, presenting the key it reported, before anything is changed: a VM
    refused now fails the run with nothing to undo, rather than after the maintenance page
    went up. The connection stays open (ControlPersist) for the steps to reuse."""
    results = await asyncio.gather(
        *(m.new.run("true", what="reaching it with its pinned host key",
                    timeout=PINNED_CHECK_S) for m in machines), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if not failures:
        return
    await asyncio.gather(*(m.new.close() for m in machines))
    refused = [str(r) for r in failures if isinstance(r, RemoteError)]
    if len(refused) < len(failures):
        raise next(r for r in failures if not isinstance(r, RemoteError))
    raise CannotStart("; ".join(refused))


# --- the prober ------------------------------------------------------------------------------

def _prober(ctx: Context, plan: Plan, runbook: GroupRunbook) -> Prober | None:
    """A prober for the site's name: the first DNS record pointing at an app VM."""
    dns = plan.cutover.dns
    if dns is None:
        return None
    apps = {vm.name for vm in plan.vms if vm.role == Role.APP}
    name = next((n for n, vm in dns.records.items() if vm in apps), None)
    if name is None:
        return None
    path = next((c.path for c in plan.cutover.checks if c.host == name), "/")
    old = {str(vm.network.public_ip) for vm in plan.vms if vm.network.public_ip}
    new = {m.address for m in runbook.machines}

    def side(address: str) -> str | None:
        return "old" if address in old else "new" if address in new else None
    return ctx.deps.cutover.prober(name, dns.host, dns.port, path=path, side_of_address=side)


async def _stop_probing(prober: Prober | None, probing: asyncio.Task | None,
                        completed: bool) -> ProbeReport | None:
    """After a cutover, let the prober see the new site (or, after a rollback, the old one)."""
    if prober is None or probing is None:
        return None
    wanted = "new" if completed else "old"
    since = len(prober.probes)
    deadline = time.monotonic() + PROBE_SETTLE_S
    while time.monotonic() < deadline and not any(
            p.good and p.side == wanted for p in prober.probes[since:]):
        await asyncio.sleep(prober.interval)
    prober.stop()
    return await probing


# --- the end of a run ----------------------------------------------------------------------

async def _finish(ctx: Context, run_id: uuid.UUID, prepare: bool,
                  outcome: Outcome, report: ProbeReport | None) -> None:
    downtime = report.downtime_s if report and outcome.completed else None
    reason = outcome.reason
    if reason and outcome.undo_errors:
        reason += "; undo failed for " + ", ".join(f"{s}: {e}"
                                                   for s, e in outcome.undo_errors.items())
    if report is not None:
        log.info("cutover probed", summary=report.summary(), run_id=str(run_id))
    async with ctx.transaction() as tx:
        if outcome.completed:
            await tx.cutover_runs.finish(run_id, "completed", None, downtime)
        else:
            await tx.cutover_runs.finish(run_id, "rolled_back" if outcome.failed_step or
                                         outcome.undone else "failed", reason, None)
        if not prepare:
            await _settle_group(tx, ctx.group_id, outcome.completed,
                                None if outcome.completed else reason)
        if outcome.completed:
            await tx.publish(ev.CutoverCompleted(run_id=str(run_id), downtime_s=downtime,
                                                 prepare=prepare,
                                                 probe=report.summary() if report else None),
                             group_id=ctx.group_id)
        else:
            await tx.publish(ev.CutoverFailed(run_id=str(run_id), reason=reason or "failed"),
                             group_id=ctx.group_id)


async def _settle_group(tx, group_id: uuid.UUID, completed: bool, reason: str | None) -> None:
    """After a run: the group live, or ready again with its VMs rolled back. A group halted
    meanwhile (a VM reported a failure during the run) stays halted."""
    group = await tx.groups.get(group_id, lock=True)
    if group.status == GroupStatus.CUTTING_OVER:
        await journey.set_group_status(tx, group, GroupStatus.LIVE if completed
                                       else GroupStatus.READY)
    target = VmState.LIVE if completed else VmState.ROLLED_BACK
    for vm in await tx.vms.of_group(group_id):
        if vm.state == VmState.CUTTING_OVER:
            await journey.transition(tx, vm, target, step="cutover", message=reason)


@router.on(ev.GroupHalted)
async def cancel_pending(event: ev.GroupHalted, ctx: Context) -> None:
    """A halted group must not cut over: runs not started yet are refused."""
    async with ctx.transaction() as tx:
        await tx.cutover_runs.refuse_pending(ctx.group_id, "group halted")


# The group's end after its cutover (finalize), on this same router.
from services.cutover import finalize  # noqa: E402,F401 - registers its handlers
