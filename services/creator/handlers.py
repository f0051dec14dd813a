"""Creator: once the whole group is archived, one blank VM per plan entry, through the provider;
on an operator's cancel, the group's VMs deleted through it again.

Provider calls carry the VM's id as idempotency key, so a redelivered event or a restart
mid-creation never makes a second VM.

A cancel and a creation meet on the VM's row lock: a creation holds it while the provider
makes the VM and records it, and the cancel takes it before deleting the VM. So a VM is either
made and recorded before the cancel looks at it (then deleted), or looked at after the group
went cancelling (then never made)."""

from __future__ import annotations

import uuid

from shared import archive_store
from shared import events as ev
from shared import journey
from shared.logging import get_logger
from shared.model import Vm
from shared.plan import Plan
from shared.providers.base import ProviderError, VmSpec
from shared.service import Context, Router
from shared.states import ENDING, GroupStatus, VmState

router = Router("creator")
log = get_logger(__name__)


@router.on(ev.ArchiveReady)
async def note_archive(event: ev.ArchiveReady, ctx: Context) -> None:
    async with ctx.transaction() as tx:
        await tx.groups.get(ctx.group_id, lock=True)  # one archive.ready at a time
        if await journey.mark_archived_once(tx, ctx.group_id):
            await tx.publish(ev.GroupArchived(), group_id=ctx.group_id)


@router.on(ev.GroupResumed)
async def resume_creation(event: ev.GroupResumed, ctx: Context) -> None:
    async with ctx.guarded_transaction() as tx:
        group = await tx.groups.get(ctx.group_id, lock=True)
        if group and group.archived_at is None \
                and await journey.mark_archived_once(tx, group.id):
            await tx.publish(ev.GroupArchived(), group_id=group.id)
            return
    await _create_group_vms(ctx)


@router.on(ev.GroupArchived)
async def create_group_vms(event: ev.GroupArchived, ctx: Context) -> None:
    await _create_group_vms(ctx)


async def _create_group_vms(ctx: Context) -> None:
    async with ctx.store.session() as db:
        group = await db.groups.get(ctx.group_id)
        members = await db.vms.of_group(ctx.group_id)
    if group is None or group.archived_at is None or group.status != GroupStatus.ACTIVE:
        return
    plan = group.parsed_plan()
    for vm in members:
        if vm.state in (VmState.ARCHIVED, VmState.CREATING):
            await _create(ctx, plan, vm.id)


async def _create(ctx: Context, plan: Plan, vm_id: uuid.UUID) -> None:
    async with ctx.guarded_transaction() as tx:
        vm = await tx.vms.get(vm_id, lock=True)
        if vm and vm.state == VmState.ARCHIVED and not await _ending(tx, vm):
            await journey.transition(tx, vm, VmState.CREATING, step="create")
    # The provider is called under the VM's row lock, in the transaction that records the
    # result: a concurrent duplicate waits and then finds the VM created; a crash rolls back
    # and the call is made again with the same idempotency key, which returns the same VM.
    async with ctx.guarded_transaction() as tx:
        vm = await tx.vms.get(vm_id, lock=True)
        if vm is None or vm.state != VmState.CREATING or await _ending(tx, vm):
            return
        try:
            made = await ctx.provider.create_vm(_spec(plan, vm), idempotency_key=_key(vm))
        except ProviderError as exc:
            await journey.transition(tx, vm, VmState.FAILED, step="create", message=str(exc))
            return
        await tx.vms.record_made(vm.id, provider=ctx.provider.name, ref=made.ref,
                                 simulated=ctx.provider.simulated, mac=made.mac)
        await journey.transition(tx, vm, VmState.CREATED, step="create")
        await tx.publish(ev.VmCreated(provider=ctx.provider.name, provider_ref=made.ref),
                         group_id=vm.group_id, vm_id=vm.id)


def _spec(plan: Plan, vm: Vm) -> VmSpec:
    planned = plan.vm(vm.name)
    return VmSpec(
        vm_id=vm.id, group=plan.group, name=vm.name, role=vm.role, cpus=planned.cpus,
        memory_mb=planned.memory_mb, disks_gb=[d.size_gb for d in planned.disks],
        disk_buses=[d.bus for d in planned.disks],
        address=str(planned.network.address),
        gateway=str(planned.network.gateway) if planned.network.gateway else None,
    )


def _key(vm: Vm) -> str:
    return f"vm:{vm.id}"


async def _ending(tx, vm: Vm) -> bool:
    """The VM's group is being cancelled (read now, after the VM's lock was taken: the status
    that came with the VM may predate the wait): nothing more is made for it."""
    group = await tx.groups.get(vm.group_id)
    return group is None or group.status in ENDING


# --- cancel ------------------------------------------------------------------------------------

@router.on(ev.GroupCancelRequested)
async def cancel_group(event: ev.GroupCancelRequested, ctx: Context) -> None:
    """Delete every VM the provider made for the group, remove its archives, and close it. A
    provider error stops it there: the group stays cancelling with the reason, and the
    operator's next cancel carries on from the VMs not yet deleted."""
    async with ctx.store.session() as db:
        group = await db.groups.get(ctx.group_id)
        members = await db.vms.of_group(ctx.group_id)
    if group is None or group.status != GroupStatus.CANCELLING:
        return  # cancelled already (a repeated request), or never asked
    plan = group.parsed_plan()
    deleted, problems = [], []
    for vm in members:
        try:
            if await _delete(ctx, plan, vm.id):
                deleted.append(vm.name)
        except ProviderError as exc:
            problems.append(f"{vm.name}: {exc}")
    if problems:
        async with ctx.transaction() as tx:
            await journey.ending_stopped(
                tx, group.id, f"the provider did not delete {'; '.join(problems)}; the other "
                f"VMs are deleted. Cancel again to retry (`ferry cancel {group.name}`)")
        return
    # Files first: a crash after this leaves records whose files are gone, which the next
    # delivery removes again harmlessly.
    async with ctx.store.session() as db:
        files = [a.file for a in await db.archives.of_group(group.id)]
    archive_store.remove_group(ctx.settings.archive_root, group.id, files)
    async with ctx.transaction() as tx:
        await journey.cancelled(tx, group.id, deleted)


async def _delete(ctx: Context, plan: Plan, vm_id: uuid.UUID) -> bool:
    """Delete one VM through the provider and mark it cancelled; True if the provider had made
    it. Under the VM's row lock: a creation, boot or move of it in flight finishes first."""
    async with ctx.guarded_transaction() as tx:
        vm = await tx.vms.get(vm_id, lock=True)
        if vm is None or vm.state == VmState.CANCELLED:
            return False  # deleted by an earlier attempt
        ref = vm.provider_ref
        if ref is None and vm.state == VmState.CREATING:
            # A creation cut off before it was recorded may have made the VM: the provider
            # returns it for the same idempotency key (making it, if it had not), to delete.
            ref = (await ctx.provider.create_vm(_spec(plan, vm), idempotency_key=_key(vm))).ref
        if ref is not None:
            await ctx.provider.delete(ref)  # stops it first; one already gone is fine
        await journey.transition(tx, vm, VmState.CANCELLED, step="cancel")
        log.info("vm cancelled", vm=vm.name, deleted=ref is not None)
        return ref is not None
