"""Creator: once the whole group is archived, one blank VM per plan entry, through the provider.

Provider calls carry the VM's id as idempotency key, so a redelivered event or a restart
mid-creation never makes a second VM."""

from __future__ import annotations

import uuid

from shared import events as ev
from shared import journey
from shared.plan import Plan
from shared.providers.base import ProviderError, VmSpec
from shared.service import Context, Router
from shared.states import GroupStatus, VmState

router = Router("creator")


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
        if vm and vm.state == VmState.ARCHIVED:
            await journey.transition(tx, vm, VmState.CREATING, step="create")
    # The provider is called under the VM's row lock, in the transaction that records the
    # result: a concurrent duplicate waits and then finds the VM created; a crash rolls back
    # and the call is made again with the same idempotency key, which returns the same VM.
    async with ctx.guarded_transaction() as tx:
        vm = await tx.vms.get(vm_id, lock=True)
        if vm is None or vm.state != VmState.CREATING:
            return
        planned = plan.vm(vm.name)
        spec = VmSpec(
            vm_id=vm.id, group=plan.group, name=vm.name, role=vm.role, cpus=planned.cpus,
            memory_mb=planned.memory_mb, disks_gb=[d.size_gb for d in planned.disks],
            disk_buses=[d.bus for d in planned.disks],
            address=str(planned.network.address),
            gateway=str(planned.network.gateway) if planned.network.gateway else None,
        )
        try:
            made = await ctx.provider.create_vm(spec, idempotency_key=f"vm:{vm.id}")
        except ProviderError as exc:
            await journey.transition(tx, vm, VmState.FAILED, step="create", message=str(exc))
            return
        await tx.vms.record_made(vm.id, provider=ctx.provider.name, ref=made.ref,
                                 simulated=ctx.provider.simulated, mac=made.mac)
        await journey.transition(tx, vm, VmState.CREATED, step="create")
        await tx.publish(ev.VmCreated(provider=ctx.provider.name, provider_ref=made.ref),
                         group_id=vm.group_id, vm_id=vm.id)
