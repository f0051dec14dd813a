"""Moves along the journey, in a unit of work: a VM's change of state, a group's submission,
halt, resume and readiness, an operator's retry, and the end of a group (cancel, finalize).
Each asks the rules (`shared/rules.py`), writes through the store's repositories and announces
what changed through the outbox.

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
from shared.states import GroupStatus, IllegalTransition, VmState, check_group, group_may

if TYPE_CHECKING:  # the store's, or a test's fake of it
    from shared.store.session import Tx as UnitOfWork

log = get_logger(__name__)


class ResumeRefused(Exception):
    pass


class Refused(Exception):
    """An operator's request that the group's state does not allow; says why, and what to do
    instead."""


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


async def add_message(tx: UnitOfWork, vm_id: uuid.UUID, level: str, text: str, *,
                      step: str | None = None) -> int:
    """Store a log line of the VM and announce it (the live feed streams it to operators).
    `step`: the line starts this step (the last step a missed deadline names)."""
    message_id, group_id = await tx.messages.add(vm_id, level, text, step=step)
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
    at their next resting state. False if the group was halted already, cannot halt (it is
    live, or ending), or is gone."""
    group = await tx.groups.get(group_id, lock=True)
    # Halted already, or past halting: a failure reported while the group is cancelled or
    # finalized changes nothing there.
    if group is None or not group_may(group.status, GroupStatus.HALTED):
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


# --- the end of a group ------------------------------------------------------------------------

async def request_cancel(tx: UnitOfWork, group: Group) -> Group:
    """An operator's cancel of `group` (read with lock=True): it goes cancelling and the
    creator is told to delete its VMs. Asked again while cancelling, it is told again (what
    stopped it, a provider error, is forgotten). Raises Refused (rules.cancel_refusal)."""
    members = await tx.vms.of_group(group.id)
    refusal = rules.cancel_refusal(group, members, await tx.cutover_runs.in_progress(group.id))
    if refusal:
        raise Refused(refusal)
    if group.status == GroupStatus.CANCELLING:
        await tx.groups.record_closing_error(group.id, None)
    else:
        group = await set_group_status(tx, group, GroupStatus.CANCELLING)
        # A run requested and not started would find the group cancelling and refuse itself;
        # it ends now instead, so that `ferry cutover` following it says why.
        await tx.cutover_runs.refuse_pending(group.id, f"group {group.name} was cancelled")
    await tx.publish(ev.GroupCancelRequested(), group_id=group.id)
    return group


async def cancelled(tx: UnitOfWork, group_id: uuid.UUID, vms_deleted: list[str]) -> bool:
    """The cancel is done (VMs deleted, archive files removed): the group's archive records go,
    its VMs' tokens are revoked, it is cancelled. False if it was not cancelling (a repeat)."""
    group = await tx.groups.get(group_id, lock=True)
    if group is None or group.status != GroupStatus.CANCELLING:
        return False
    archives = await _release(tx, group_id)
    await set_group_status(tx, group, GroupStatus.CANCELLED)
    await tx.publish(ev.GroupCancelled(vms_deleted=vms_deleted, archives_removed=archives),
                     group_id=group_id)
    log.info("group cancelled", group=group.name, vms_deleted=vms_deleted)
    return True


async def request_finalize(tx: UnitOfWork, group: Group, forwarding: str) -> Group:
    """An operator's finalize of a live `group` (read with lock=True): it goes finalizing and
    the cutover service is told what to do with the forwarding ("keep" or "remove"). Asked
    again while finalizing, it is told again. Raises Refused (rules.finalize_refusal)."""
    refusal = rules.finalize_refusal(group)
    if refusal:
        raise Refused(refusal)
    if group.status == GroupStatus.FINALIZING:
        await tx.groups.record_closing_error(group.id, None)
    else:
        group = await set_group_status(tx, group, GroupStatus.FINALIZING)
    await tx.publish(ev.GroupFinalizeRequested(forwarding=forwarding), group_id=group.id)
    return group


async def finalized(tx: UnitOfWork, group_id: uuid.UUID, forwarding: str) -> bool:
    """The finalize is done: archive records and VM tokens go, the group is closed with what
    became of the forwarding ("kept" or "removed"). False if it was not finalizing."""
    group = await tx.groups.get(group_id, lock=True)
    if group is None or group.status != GroupStatus.FINALIZING:
        return False
    archives = await _release(tx, group_id)
    await tx.groups.record_legacy_forwarding(group_id, forwarding)
    await set_group_status(tx, group, GroupStatus.FINALIZED)
    await tx.publish(ev.GroupFinalized(forwarding=forwarding, archives_removed=archives),
                     group_id=group_id)
    log.info("group finalized", group=group.name, forwarding=forwarding)
    return True


async def ending_stopped(tx: UnitOfWork, group_id: uuid.UUID, reason: str) -> bool:
    """A cancel or finalize could not finish: the group stays where it is, with the reason,
    until the operator asks again. False if it is neither cancelling nor finalizing."""
    group = await tx.groups.get(group_id, lock=True)
    if group is None:
        return False
    if group.status == GroupStatus.CANCELLING:
        stopped = ev.GroupCancelFailed(reason=reason)
    elif group.status == GroupStatus.FINALIZING:
        stopped = ev.GroupFinalizeFailed(reason=reason)
    else:
        return False
    await tx.groups.record_closing_error(group_id, reason)
    await tx.publish(stopped, group_id=group_id)
    log.warning("group end stopped", group=group.name, status=group.status, reason=reason)
    return True


async def _release(tx: UnitOfWork, group_id: uuid.UUID) -> int:
    """What an ended group no longer needs: its archive records and its VMs' tokens. The number
    of archive records dropped."""
    await tx.tokens.revoke_group(group_id)
    return await tx.archives.forget_group(group_id)
