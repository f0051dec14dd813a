"""The journey's rules, as plain functions of the records: no I/O, so each is tested directly
(tests/unit/test_rules.py). The store writes what they decide; the handlers and the gateway
ask them before they act."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from shared.model import Group, Vm
from shared.states import RESTING, RETRY_FROM, GroupStatus, IllegalTransition, VmState, check

S = VmState
G = GroupStatus


@dataclass(frozen=True)
class Move:
    """What a VM's change of state writes: the state it is in afterwards, where it waits while
    parked (HALTED), and the state it failed from (FAILED)."""

    state: VmState
    held_state: VmState | None = None
    failed_from: VmState | None = None


def repeats(vm: Vm, target: VmState) -> bool:
    """Going to the state a VM is in (or is held at) is no change of state: at most its step
    changes. A script reports `configuring` at every step."""
    return vm.state == target or (vm.state == S.HALTED and vm.held_state == target)


def move(vm: Vm, target: VmState) -> Move:
    """The change a transition to `target` makes. A VM arriving where it would wait for a
    service while its group is halted is parked there as HALTED instead; a failure records
    where the VM was (where it was held, for a held VM). Raises IllegalTransition."""
    check(vm.state, target)
    if target == S.FAILED:
        return Move(S.FAILED, failed_from=vm.held_state if vm.state == S.HALTED else vm.state)
    if target in RESTING and vm.group_status == GroupStatus.HALTED:
        return Move(S.HALTED, held_state=target)
    return Move(target)


def hold(vm: Vm) -> Move | None:
    """A halt parks a VM that waits for a service; one in the middle of a phase is held at its
    next resting state instead (by `move`)."""
    return Move(S.HALTED, held_state=vm.state) if vm.state in RESTING else None


def release(vm: Vm) -> Move | None:
    """A resume puts a parked VM back where it was held."""
    return Move(vm.held_state) if vm.state == S.HALTED and vm.held_state else None


def retry(vm: Vm) -> Move:
    """An operator's retry sends a FAILED VM back to the resting state before the phase that
    failed, so that phase runs again (held there while its group is halted)."""
    if vm.state != S.FAILED:
        raise IllegalTransition(vm.state, S.PLANNED)
    back = RETRY_FROM.get(vm.failed_from or S.PLANNED, S.PLANNED)
    if vm.group_status == GroupStatus.HALTED:
        return Move(S.HALTED, held_state=back)
    return Move(back)


def may_move_on(vm: Vm | None, state: VmState) -> bool:
    """A service moves a VM on from `state` only while its group is active."""
    return vm is not None and vm.state == state and vm.group_status == GroupStatus.ACTIVE


def resume_refusal(group: Group, members: Iterable[Vm]) -> str | None:
    """Why a group cannot be resumed, or None: only a halted group, and only once no VM of it
    is still failed (a failed VM is retried first)."""
    if group.status != GroupStatus.HALTED:
        return f"group {group.name} is {group.status}, not halted"
    failed = [vm.name for vm in members if vm.state == S.FAILED]
    if failed:
        return f"group {group.name}: VM {', '.join(failed)} still failed; retry it first"
    return None


def cancel_refusal(group: Group, members: Iterable[Vm], cutover_running: bool) -> str | None:
    """Why a group cannot be cancelled, or None. A cancel deletes the new VMs: never once the
    cutover has moved anything to them (a live group is finalized instead), nor while a run
    is at work. Asking again while it is cancelling retries what is left."""
    name = group.name
    if group.status == G.CANCELLED:
        return f"group {name} is cancelled already: its VMs and archives are gone"
    if group.status in (G.FINALIZING, G.FINALIZED):
        return (f"group {name} is {group.status}: it was cut over and is being closed; "
                "there is nothing to cancel")
    states = {vm.state for vm in members}
    if group.status == G.LIVE or S.LIVE in states:
        return (f"group {name} is live (cut over): a cancel would delete the VMs that serve it; "
                f"close it with `ferry finalize {name} --forwarding keep|remove` instead")
    if group.status == G.CUTTING_OVER or cutover_running or S.CUTTING_OVER in states:
        return (f"group {name} has a cutover run in progress: wait for it to end (`ferry "
                f"cutover` follows it; a failed run rolls back to ready), then cancel")
    return None


def finalize_refusal(group: Group) -> str | None:
    """Why a group cannot be finalized, or None: only a live group (or one finalizing, which
    asking again retries)."""
    name = group.name
    if group.status in (G.LIVE, G.FINALIZING):
        return None
    if group.status == G.FINALIZED:
        return f"group {name} is finalized already: it is closed"
    if group.status in (G.CANCELLING, G.CANCELLED):
        return (f"group {name} is {group.status}: it never went live, so there is nothing to "
                "finalize")
    return (f"group {name} is {group.status}, not live: finalize closes a group after its "
            f"cutover; cut it over first (`ferry cutover {name}`), or cancel it "
            f"(`ferry cancel {name}`)")


def halt_reason(vm_name: str, step: str | None, message: str | None) -> str:
    where = f" at {step}" if step else ""
    return f"{vm_name} failed{where}: {message or 'no message'}"


def silence_reason(deadline_s: float, state: VmState, last_step: str | None) -> str:
    """Why the deadline watchdog failed a VM: how long it may be silent in its phase, and what
    it said it was doing last."""
    return f"no word for {deadline_s:g} s in {state}, last step: {last_step or 'none'}"


def all_ready(members: Iterable[Vm]) -> bool:
    return all(vm.state == S.READY for vm in members)


def all_archived(members: Iterable[Vm]) -> bool:
    """Every VM archived, held there by a halt or not: the group's VMs may be created."""
    return all(S.ARCHIVED in (vm.state, vm.held_state) for vm in members)


def replicating_too_early(target: VmState, master_complete: bool) -> bool:
    """A replica cannot report `replicating` before its master has loaded its dumps."""
    return target == S.REPLICATING and not master_complete


def answered_as_before(target: VmState, reported_before: bool) -> bool:
    """A report repeated because its answer was lost (the gateway died after the commit and
    the VM's curl retried) may find the VM moved on by a service (configured -> provisioning,
    provisioned -> ready). It is answered as the first one was, not refused: refusing it would
    fail the VM and halt its group. Only that very transition (same state and step, recorded
    before) counts, and never a failure."""
    return target != S.FAILED and reported_before
