"""Group coordinator: one VM's failure halts its group; a group whose VMs are all ready is ready."""

from __future__ import annotations

from shared import events as ev
from shared.events import Envelope
from shared.service import Context, Router
from shared.states import VmState
from shared.store import groups, vms

router = Router("coordinator")


@router.on("vm.failed")
async def halt_group(event: Envelope, ctx: Context) -> None:
    failure = ev.VmFailed.model_validate(event.payload)
    async with ctx.transaction() as tx:
        vm = await vms.get(tx.conn, event.vm_id)
        if vm is None:
            return
        where = f" at {failure.step}" if failure.step else ""
        reason = f"{vm.name} failed{where}: {failure.message or 'no message'}"
        await groups.halt(tx, event.group_id, vm, reason)


@router.on("vm.state_changed")
async def group_ready(event: Envelope, ctx: Context) -> None:
    change = ev.VmStateChanged.model_validate(event.payload)
    if change.to_state != VmState.READY:
        return
    async with ctx.transaction() as tx:
        await groups.mark_ready_if_complete(tx, event.group_id)
