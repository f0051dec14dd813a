"""Provisioner: moves configured VMs to their group's final network and boots them from disk;
takes their first-boot check-in; announces a database master's completion, which releases
the replicas that hold for it."""

from __future__ import annotations

import uuid

from shared import events as ev
from shared import journey, rules
from shared.providers.base import BootSource, ProviderError, group_network
from shared.service import Context, Router
from shared.states import VmState

router = Router("provisioner")

MOVING = "final-network"


@router.on(ev.VmConfigured)
async def provision_configured(event: ev.VmConfigured, ctx: Context) -> None:
    assert ctx.vm_id
    await _provision(ctx, ctx.vm_id)


@router.on(ev.GroupResumed)
async def provision_resumed(event: ev.GroupResumed, ctx: Context) -> None:
    """Pick up what the halt held: configured VMs, and app VMs that checked in meanwhile."""
    async with ctx.store.session() as db:
        configured = await db.vms.ids_in(ctx.group_id, VmState.CONFIGURED)
        checked_in = await db.vms.ids_in(ctx.group_id, VmState.PROVISIONED, role="app")
    for vm_id in configured:
        await _provision(ctx, vm_id)
    for vm_id in checked_in:
        await _app_ready(ctx, vm_id)


async def _provision(ctx: Context, vm_id: uuid.UUID) -> None:
    # The VM is recorded as provisioning (step final-network) and committed BEFORE it is
    # booted from disk: its first boot checks in (provisioned) as soon as it is up, and must
    # find it provisioning even if this process dies before its next commit. Booted inside the
    # transaction that records provisioning, a provisioner killed between the boot and the
    # commit would leave a running VM whose check-in is refused (configured -> provisioned),
    # which fails the VM and halts its group.
    async with ctx.guarded_transaction() as tx:
        vm = await tx.vms.get(vm_id, lock=True)
        if rules.may_move_on(vm, VmState.CONFIGURED):
            await journey.transition(tx, vm, VmState.PROVISIONING, step=MOVING)
    # Provider calls run under the VM's row lock, in the transaction that records them done
    # (step first-boot): a concurrent duplicate waits and finds them done; a crash rolls back
    # to step final-network and the calls (each safe to repeat) are made again on redelivery.
    # The VM's check-in locks the row too, so it is recorded after this commit.
    async with ctx.guarded_transaction() as tx:
        vm = await tx.vms.get(vm_id, lock=True)
        if vm is None or vm.state != VmState.PROVISIONING or vm.step != MOVING:
            return
        group = await tx.groups.get(vm.group_id)
        try:
            await ctx.provider.power_off(vm.provider_ref)
            await ctx.provider.attach(vm.provider_ref, group_network(group.name))
            await ctx.provider.boot(vm.provider_ref, BootSource.DISK)
        except ProviderError as exc:
            await journey.transition(tx, vm, VmState.FAILED, step=MOVING, message=str(exc))
            return
        await journey.transition(tx, vm, VmState.PROVISIONING, step="first-boot")


@router.on(ev.VmProvisioned)
async def checked_in(event: ev.VmProvisioned, ctx: Context) -> None:
    """An app VM is done once it checks in; database VMs go on to load their dumps."""
    assert ctx.vm_id
    await _app_ready(ctx, ctx.vm_id)


async def _app_ready(ctx: Context, vm_id: uuid.UUID) -> None:
    async with ctx.transaction() as tx:
        vm = await tx.vms.get(vm_id, lock=True)
        if rules.may_move_on(vm, VmState.PROVISIONED) and vm.role == "app":
            await journey.transition(tx, vm, VmState.READY, step="checked-in")


@router.on(ev.VmStateChanged, to_state=VmState.READY)
async def master_loaded(event: ev.VmStateChanged, ctx: Context) -> None:
    """A database master that reached ready has loaded its dumps: it is complete."""
    if ctx.vm_id is None:
        return
    async with ctx.transaction() as tx:
        vm = await tx.vms.get(ctx.vm_id)
        if vm and vm.role == "db-master":
            detail = vm.detail or {}
            await tx.publish(
                ev.DbMasterComplete(log_file=detail.get("log_file"),
                                    log_pos=detail.get("log_pos"), lsn=detail.get("lsn")),
                group_id=ctx.group_id, vm_id=ctx.vm_id,
            )


@router.on(ev.DbMasterComplete)
async def release_replicas(event: ev.DbMasterComplete, ctx: Context) -> None:
    """Record the master's completion: the gateway's hold for its replicas reads this."""
    async with ctx.transaction() as tx:
        master = await tx.vms.get(ctx.vm_id)
        await tx.groups.record_master_complete(ctx.group_id, master.name,
                                               event.model_dump(mode="json"))
