"""Provisioner: moves configured VMs to their group's final network and boots them from disk;
takes their first-boot check-in; announces a database master's completion, which releases
the replicas that hold for it."""

from __future__ import annotations

import uuid

from shared import events as ev
from shared.events import Envelope
from shared.providers.base import BootSource, ProviderError, group_network
from shared.service import Context, Router
from shared.states import GroupStatus, VmState
from shared.store import groups, vms

router = Router("provisioner")

MOVING = "final-network"


@router.on("vm.configured")
async def provision_configured(event: Envelope, ctx: Context) -> None:
    assert event.vm_id
    await _provision(ctx, event.vm_id)


@router.on("group.resumed")
async def provision_resumed(event: Envelope, ctx: Context) -> None:
    """Pick up what the halt held: configured VMs, and app VMs that checked in meanwhile."""
    async with ctx.store.pool.acquire() as conn:
        configured = await vms.ids_in(conn, event.group_id, VmState.CONFIGURED)
        checked_in = await vms.ids_in(conn, event.group_id, VmState.PROVISIONED, role="app")
    for vm_id in configured:
        await _provision(ctx, vm_id)
    for vm_id in checked_in:
        await _app_ready(ctx, vm_id)


async def _provision(ctx: Context, vm_id: uuid.UUID) -> None:
    # The VM is recorded as provisioning (step final-network) and committed BEFORE it is
    # booted from disk: its first boot checks in (provisioned) as soon as it is up, and must
    # find it provisioning even if this process dies before its next commit. (tests/chaos
    # found it: with the boot inside the transaction that recorded provisioning, a provisioner
    # killed between the boot and the commit left a running VM whose check-in was refused as
    # configured -> provisioned, which failed the VM and halted its group.)
    async with ctx.step() as tx:
        vm = await vms.lock_if(tx.conn, vm_id, VmState.CONFIGURED)
        if vm is not None:
            await vms.transition(tx, vm, VmState.PROVISIONING, step=MOVING)
    # Provider calls run under the VM's row lock, in the transaction that records them done
    # (step first-boot): a concurrent duplicate waits and finds them done; a crash rolls back
    # to step final-network and the calls (each safe to repeat) are made again on redelivery.
    # The VM's check-in locks the row too, so it is recorded after this commit.
    async with ctx.step() as tx:
        vm = await vms.get(tx.conn, vm_id, lock=True)
        if vm is None or vm.state != VmState.PROVISIONING or vm.step != MOVING:
            return
        group = await groups.get(tx.conn, vm.group_id)
        try:
            await ctx.provider.power_off(vm.provider_ref)
            await ctx.provider.attach(vm.provider_ref, group_network(group.name))
            await ctx.provider.boot(vm.provider_ref, BootSource.DISK)
        except ProviderError as exc:
            await vms.transition(tx, vm, VmState.FAILED, step=MOVING, message=str(exc))
            return
        await vms.transition(tx, vm, VmState.PROVISIONING, step="first-boot")


@router.on("vm.provisioned")
async def checked_in(event: Envelope, ctx: Context) -> None:
    """An app VM is done once it checks in; database VMs go on to load their dumps."""
    assert event.vm_id
    await _app_ready(ctx, event.vm_id)


async def _app_ready(ctx: Context, vm_id: uuid.UUID) -> None:
    async with ctx.transaction() as tx:
        vm = await vms.get(tx.conn, vm_id, lock=True)
        if vm and vm.role == "app" and vm.state == VmState.PROVISIONED \
                and vm.group_status == GroupStatus.ACTIVE:
            await vms.transition(tx, vm, VmState.READY, step="checked-in")


@router.on("vm.state_changed")
async def master_loaded(event: Envelope, ctx: Context) -> None:
    """A database master that reached ready has loaded its dumps: it is complete."""
    change = ev.VmStateChanged.model_validate(event.payload)
    if change.to_state != VmState.READY or event.vm_id is None:
        return
    async with ctx.transaction() as tx:
        row = await tx.conn.fetchrow("SELECT role, detail FROM vms WHERE id = $1", event.vm_id)
        if row and row["role"] == "db-master":
            detail = row["detail"] or {}
            await tx.publish(
                ev.DbMasterComplete(log_file=detail.get("log_file"), log_pos=detail.get("log_pos")),
                group_id=event.group_id, vm_id=event.vm_id,
            )


@router.on("db.master.complete")
async def release_replicas(event: Envelope, ctx: Context) -> None:
    """Record the master's completion: the gateway's hold for its replicas reads this."""
    complete = ev.DbMasterComplete.model_validate(event.payload)
    async with ctx.transaction() as tx:
        name = await tx.conn.fetchval("SELECT name FROM vms WHERE id = $1", event.vm_id)
        await tx.conn.execute(
            "UPDATE groups SET master_complete = coalesce(master_complete, '{}'::jsonb)"
            " || jsonb_build_object($2::text, $3::jsonb) WHERE id = $1",
            event.group_id, name, complete.model_dump(mode="json"),
        )
