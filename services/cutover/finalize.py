"""The end of a cut-over group, on an operator's `group.finalize_requested`: the forwarding of
the old public addresses kept on the legacy hosts, or removed from them (the rollback's own
UNFORWARD script, over SSH as the cutover reached them), then the group's archives, VM tokens
and the cutover's staging copies removed, and the group closed.

A legacy host out of reach stops it there: the group stays finalizing with the reason until the
operator asks again (with the same choice, or with `keep` after removing it by hand).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

from services.cutover import logical, replication
from services.cutover.handlers import router
from services.cutover.scripts import UNFORWARD
from shared import archive_store, databases
from shared import events as ev
from shared import journey
from shared.logging import get_logger
from shared.plan import Plan, Role
from shared.service import Context
from shared.ssh import RemoteError
from shared.states import GroupStatus

log = get_logger(__name__)


class CannotRemove(Exception):
    """The forwarding of an old address cannot be removed from here; says which and why."""


@router.on(ev.GroupFinalizeRequested)
async def finalize_group(request: ev.GroupFinalizeRequested, ctx: Context) -> None:
    async with ctx.store.session() as db:
        group = await db.groups.get(ctx.group_id)
    if group is None or group.status != GroupStatus.FINALIZING:
        return  # finalized already (a repeated request), or never asked
    if request.forwarding == "remove":
        try:
            removed = await _remove_forwarding(ctx, group.parsed_plan())
        except (CannotRemove, RemoteError) as exc:
            async with ctx.transaction() as tx:
                await journey.ending_stopped(
                    tx, group.id, f"the forwarding was not removed: {exc}. Finalize again to "
                    f"retry (`ferry finalize {group.name} --forwarding remove`), or remove it "
                    "by hand (iptables' nat chains FERRY-FORWARD and FERRY-FORWARD-SNAT) and "
                    "finalize with --forwarding keep")
            return
        log.info("forwarding removed", group=group.name, addresses=removed)
    async with ctx.store.session() as db:
        files = [a.file for a in await db.archives.of_group(group.id)]
    archive_store.remove_group(ctx.settings.archive_root, group.id, files)
    await _remove_staging(ctx, group.id, group.name)
    async with ctx.transaction() as tx:
        await journey.finalized(tx, group.id,
                                "removed" if request.forwarding == "remove" else "kept")


async def _remove_forwarding(ctx: Context, plan: Plan) -> list[str]:
    """UNFORWARD on the legacy host of every VM whose old public address the cutover forwarded
    (safe to run again, and on a host where nothing is left); the addresses, as done."""
    forwarded = [vm for vm in plan.vms if vm.network.public_ip is not None]
    for vm in forwarded:
        if vm.source is None or vm.source.kind != "ssh":
            raise CannotRemove(f"{vm.name}'s legacy host has no SSH source in the plan, so it "
                               f"cannot be reached to stop forwarding {vm.network.public_ip}")
    control = Path(tempfile.mkdtemp(prefix="ferry-ssh-"))
    remotes = []
    try:
        for vm in forwarded:
            legacy = ctx.deps.cutover.legacy(f"legacy {vm.name}", vm.source, control)
            remotes.append(legacy)
            await legacy.run(UNFORWARD, what=f"removing the forwarding of {vm.network.public_ip}")
    finally:
        for legacy in remotes:
            await legacy.close()
        shutil.rmtree(control, ignore_errors=True)
    return [str(vm.network.public_ip) for vm in forwarded]


@router.on(ev.GroupCancelled)
async def forget_cancelled(event: ev.GroupCancelled, ctx: Context) -> None:
    """A cancelled group may have been prepared for its cutover: its staging copies go, and
    what a replication hand-off left on its legacy masters (a PostgreSQL slot there would keep
    every WAL file until the disk fills)."""
    async with ctx.store.session() as db:
        group = await db.groups.get(ctx.group_id)
        ran = await db.cutover_runs.ever_ran(ctx.group_id) if group else False
    if group is None:
        return
    await _remove_staging(ctx, group.id, group.name)
    if ran:
        await _release_handoffs(ctx, group.parsed_plan())


async def _release_handoffs(ctx: Context, plan: Plan) -> None:
    """On each legacy master reached over SSH, per engine family of its databases, the
    hand-off's tunnel and its replication user, or PostgreSQL's slots, publications and role,
    removed (nothing there when no run linked it: each removal is harmless then)."""
    control = Path(tempfile.mkdtemp(prefix="ferry-ssh-"))
    try:
        for vm in plan.vms:
            if vm.role != Role.DB_MASTER or not vm.databases or vm.source is None \
                    or vm.source.kind != "ssh":
                continue
            legacy = ctx.deps.cutover.legacy(f"legacy {vm.name}", vm.source, control)
            try:
                for specs in databases.by_family(vm.databases):
                    server = databases.engine(specs[0].engine)
                    if server.hands_off_logically:
                        await logical.release_on_legacy(legacy, [db.name for db in specs])
                    elif server.hands_off:
                        await replication.release_on_legacy(legacy, server)
                log.info("hand-off released on the legacy master", group=plan.group,
                         vm=vm.name)
            except (RemoteError, replication.HandoffError) as exc:
                # The group is cancelled whatever happens here; what is left is said, for a
                # person to remove (docs/operations.md names it).
                log.error("the hand-off's link on the legacy master was not removed",
                          group=plan.group, vm=vm.name, error=str(exc))
            finally:
                await legacy.close()
    finally:
        shutil.rmtree(control, ignore_errors=True)


async def _remove_staging(ctx: Context, group_id: uuid.UUID, name: str) -> None:
    """The cutover's folder of the group (the rsync staging copies of its shared paths, the new
    VMs' host keys). It is named by the group's name, which a newer group may hold by now:
    then it is that group's, and stays."""
    async with ctx.store.session() as db:
        newest = await db.groups.find(name)
    if newest is not None and newest.id == group_id:
        shutil.rmtree(ctx.settings.state_dir / "cutover" / name, ignore_errors=True)
