"""Group coordinator: one VM's failure halts its group; a group whose VMs are all ready is ready."""

from __future__ import annotations

from shared import events as ev
from shared import journey, rules
from shared.service import Context, Router
from shared.states import VmState

router = Router("coordinator")


@router.on(ev.VmFailed)
async def halt_group(event: ev.VmFailed, ctx: Context) -> None:
    async with ctx.transaction() as tx:
        vm = await tx.vms.get(ctx.vm_id)
        if vm is None:
            return
        await journey.halt(tx, ctx.group_id, vm,
                           rules.halt_reason(vm.name, event.step, event.message))


@router.on(ev.VmStateChanged, to_state=VmState.READY)
async def group_ready(event: ev.VmStateChanged, ctx: Context) -> None:
    async with ctx.transaction() as tx:
        await journey.mark_ready_if_complete(tx, ctx.group_id)
