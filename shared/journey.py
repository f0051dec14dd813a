"""Moves along the journey, in a unit of work: a VM's change of state, a group's submission,
halt, resume and readiness, an operator's retry. Each asks the rules (`shared/rules.py`),
writes through the store's repositories and announces what changed through the outbox.

Everything here takes the transaction (`tx`) and nothing else, so the handler tests run it on
an in-memory store (tests/unit/fakes.py).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

from shared import events as ev
from shared import rules
from shared.logging import get_logger
from shared.model import Group, Vm
from shared.plan import Plan
from shared.rules import Move
from shared.states import GroupStatus, IllegalTransition, VmState, check_group

if TYPE_CHECKING:  # the store's, or a test's fake of it
    from shared.store.session import Tx as UnitOfWork

log = get_logger(__name__)


class ResumeRefused(Exception):
    pass


# --- VMs ---------------------------------------------------------------------------------------

async def transition(
    tx: UnitOfWork, vm: Vm | uuid.UUID, target: VmState, *, step: str | None = None,
    message: str | None = None, detail: dict | None = None,
) -> Vm:
    """Move a VM to `target` (or park it, rules.move says when). Repeating the current state
    only updates the step. `vm` is its id, or the VM as read with `lock=True` in this same
    transaction (which spares reading it again). Returns the VM as it now is; raises
    IllegalTransition (nothing is written) if not allowed."""
    if isinstance(vm, uuid.UUID):
        vm_id = vm
        vm = await tx.vms.get(vm_id, lock=True)
        if vm is None:
            raise LookupError(f"no VM {vm_id}")
    if rules.repeats(vm, target):
        if step is not None and step != vm.step:
            await tx.vms.set_step(vm.id, step)
            vm = replace(vm, step=step)
        return vm
    try:
        change = rules.move(vm, target)
    except IllegalTransition:
        log.warning("illegal transition refused", vm=vm.name, from_state=vm.state,
                    to_state=target)
        raise
    moved = await _write(tx, vm, change, step=step, message=message, detail=detail)
    await _announce(tx, vm, change, step=step, message=message)
    return moved


async def _write(tx: UnitOfWork, vm: Vm, change: Move, *, step: str | None,
                 message: str | None, detail: dict | None = None) -> Vm:
    """Write the change and announce it; returns the VM as it now is."""
    changed_at = await tx.vms.write(vm, change, step=step, message=message, detail=detail)
    await tx.publish(ev.VmStateChanged(from_state=vm.state, to_state=change.state, step=step),
                     group_id=vm.group_id, vm_id=vm.id)
    log.info("vm state changed", vm=vm.name, from_state=vm.state, to_state=change.state,
             step=step)
    return replace(vm, state=change.state, held_state=change.held_state, step=step,
                   message=message, failed_from=change.failed_from,
                   state_changed_at=changed_at,
                   detail=detail if detail is not None else vm.detail)


async def _announce(tx: UnitOfWork, vm: Vm, change: Move, *, step: str | None,
                    message: str | None) -> None:
    """The events that tell the next service a VM reached a state it acts on."""
    where = dict(group_id=vm.group_id, vm_id=vm.id)
    if change.state == VmState.FAILED:
        await tx.publish(ev.VmFailed(failed_from=change.failed_from, step=step,
                                     message=message), **where)
    elif change.state == VmState.CONFIGURED:
        await tx.publish(ev.VmConfigured(), **where)
    elif change.state == VmState.PROVISIONED:
        await tx.publish(ev.VmProvisioned(), **where)


async def retry(tx: UnitOfWork, vm_id: uuid.UUID) -> Vm:
    """An operator's retry of a FAILED VM (rules.retry says where it goes)."""
    vm = await tx.vms.get(vm_id, lock=True)
    if vm is None:
        raise LookupError(f"no VM {vm_id}")
    change = rules.retry(vm)
    return await _write(tx, vm, change, step=f"retry from {change.held_state or change.state}",
                        message=None)


async def add_message(tx: UnitOfWork, vm_id: uuid.UUID, level: str, text: str) -> int:
    """Store a log line of the VM and announce it (the live feed streams it to operators)."""
    message_id, group_id = await tx.messages.add(vm_id, level, text)
    await tx.publish(ev.VmMessageLogged(message_id=message_id, level=level, text=text),
                     group_id=group_id, vm_id=vm_id)
    return message_id


# --- groups ------------------------------------------------------------------------------------

async def submit(tx: UnitOfWork, plan: Plan) -> uuid.UUID:
    """Store a validated plan as a new group of planned VMs and announce it. Raises
    GroupExists (shared.store.groups) while a group of that name is being migrated."""
    group_id = uuid.uuid4()
    await tx.groups.add(group_id, plan, secrets.token_urlsafe(24))
    await tx.vms.add_planned(group_id, plan)
    await tx.publish(ev.GroupSubmitted(group_name=plan.group, vm_count=len(plan.vms)),
                     group_id=group_id)
    return group_id


async def set_group_status(tx: UnitOfWork, group: Group, status: GroupStatus, *,
                           halted_vm_id: uuid.UUID | None = None,
                           halted_reason: str | None = None) -> Group:
    """Move a group to `status` (checked by the group state machine)."""
    check_group(group.status, status)
    await tx.groups.set_status(group, status, halted_vm_id=halted_vm_id,
                               halted_reason=halted_reason)
    return replace(group, status=status, halted_vm_id=halted_vm_id,
                   halted_reason=halted_reason)


async def halt(tx: UnitOfWork, group_id: uuid.UUID, failed: Vm, reason: str) -> bool:
    """Halt a group because `failed` erred: its resting VMs are held where they are, the others
    at their next resting state. False if the group was halted already (or is gone)."""
    group = await tx.groups.get(group_id, lock=True)
    if group is None or group.status == GroupStatus.HALTED:
        return False
    await set_group_status(tx, group, GroupStatus.HALTED, halted_vm_id=failed.id,
                           halted_reason=reason)
    for vm in await tx.vms.of_group(group_id):
        change = rules.hold(vm)
        if change is not None:
            await _write(tx, vm, change, step=vm.step, message=vm.message)
    await tx.publish(ev.GroupHalted(vm_id=str(failed.id), vm_name=failed.name, step=failed.step,
                                    reason=reason), group_id=group_id)
    return True


async def resume(tx: UnitOfWork, group_id: uuid.UUID) -> None:
    """Lift a halt: held VMs go back where they were and the services pick them up again.
    Raises ResumeRefused with the reason rules.resume_refusal gives."""
    group = await tx.groups.get(group_id, lock=True)
    if group is None:
        raise LookupError(f"no group {group_id}")
    members = await tx.vms.of_group(group.id)
    refusal = rules.resume_refusal(group, members)
    if refusal:
        raise ResumeRefused(refusal)
    await set_group_status(tx, group, GroupStatus.ACTIVE)
    for vm in members:
        change = rules.release(vm)
        if change is not None:
            await _write(tx, vm, change, step=vm.step, message=None)
    await tx.publish(ev.GroupResumed(), group_id=group.id)


async def mark_ready_if_complete(tx: UnitOfWork, group_id: uuid.UUID) -> bool:
    """If every VM of an active group is ready, the group is ready: announced once."""
    group = await tx.groups.get(group_id, lock=True)
    if group is None or group.status != GroupStatus.ACTIVE:
        return False
    if not rules.all_ready(await tx.vms.of_group(group_id)):
        return False
    await set_group_status(tx, group, GroupStatus.READY)
    await tx.publish(ev.GroupReady(), group_id=group_id)
    return True


async def mark_archived_once(tx: UnitOfWork, group_id: uuid.UUID) -> bool:
    """True exactly once: when every VM of the group is archived and nobody said so before."""
    if not rules.all_archived(await tx.vms.of_group(group_id)):
        return False
    return await tx.groups.mark_archived(group_id)
