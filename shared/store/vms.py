"""VM rows and their transitions. Every state change goes through `transition` (or the
operator's `retry` and a group's resume), which checks it and announces it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime

import asyncpg

from shared import events as ev
from shared.logging import get_logger
from shared.states import RESTING, RETRY_FROM, GroupStatus, IllegalTransition, VmState, check
from shared.store.tx import Tx

log = get_logger(__name__)


@dataclass(frozen=True)
class Vm:
    id: uuid.UUID
    group_id: uuid.UUID
    name: str
    role: str
    position: int
    state: VmState
    held_state: VmState | None
    failed_from: VmState | None
    step: str | None
    message: str | None
    provider_ref: str | None
    group_status: GroupStatus
    state_changed_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Vm:
        return cls(
            id=row["id"], group_id=row["group_id"], name=row["name"], role=row["role"],
            position=row["position"], state=VmState(row["state"]),
            held_state=VmState(row["held_state"]) if row["held_state"] else None,
            failed_from=VmState(row["failed_from"]) if row["failed_from"] else None,
            step=row["step"], message=row["message"], provider_ref=row["provider_ref"],
            group_status=GroupStatus(row["group_status"]),
            state_changed_at=row["state_changed_at"],
        )


_SELECT = (
    "SELECT v.*, g.status AS group_status FROM vms v JOIN groups g ON g.id = v.group_id"
)


async def get(conn: asyncpg.Connection, vm_id: uuid.UUID, *, lock: bool = False) -> Vm | None:
    row = await conn.fetchrow(
        f"{_SELECT} WHERE v.id = $1" + (" FOR UPDATE OF v" if lock else ""), vm_id
    )
    return Vm.from_row(row) if row else None


async def lock_if(conn: asyncpg.Connection, vm_id: uuid.UUID, state: VmState) -> Vm | None:
    """The VM, row-locked for this transaction, if it is in `state` and its group is active
    (a service moves a VM on only then); else None."""
    vm = await get(conn, vm_id, lock=True)
    if vm is None or vm.state != state or vm.group_status != GroupStatus.ACTIVE:
        return None
    return vm


async def of_group(conn: asyncpg.Connection, group_id: uuid.UUID) -> list[Vm]:
    rows = await conn.fetch(f"{_SELECT} WHERE v.group_id = $1 ORDER BY v.position", group_id)
    return [Vm.from_row(r) for r in rows]


async def ids_in(conn: asyncpg.Connection, group_id: uuid.UUID, *states: VmState,
                 role: str | None = None) -> list[uuid.UUID]:
    """The group's VMs in one of `states` (and of `role`), in plan order."""
    rows = await conn.fetch(
        "SELECT id FROM vms WHERE group_id = $1 AND state = ANY($2::text[])"
        " AND ($3::text IS NULL OR role = $3) ORDER BY position",
        group_id, [str(s) for s in states], role,
    )
    return [r["id"] for r in rows]


# The VM's new state and its line in the history, in one statement (one round trip).
_RECORD = (
    "WITH v AS (UPDATE vms SET state = $2, held_state = $3, step = $4, message = $5,"
    " failed_from = $6, detail = COALESCE($7, detail), state_changed_at = now() WHERE id = $1"
    " RETURNING id, state_changed_at)"
    " INSERT INTO vm_transitions (vm_id, from_state, to_state, step)"
    " SELECT id, $8, $2, $4 FROM v RETURNING (SELECT state_changed_at FROM v)"
)


async def _record(
    tx: Tx, vm: Vm, new: VmState, *, held: VmState | None, step: str | None,
    message: str | None, failed_from: VmState | None, detail: dict | None = None,
) -> Vm:
    """Write the change and announce it; returns the VM as it now is."""
    changed_at = await tx.conn.fetchval(
        _RECORD, vm.id, new, held, step, message, failed_from, detail, vm.state)
    await tx.publish(
        ev.VmStateChanged(from_state=vm.state, to_state=new, step=step),
        group_id=vm.group_id, vm_id=vm.id,
    )
    log.info("vm state changed", vm=vm.name, from_state=vm.state, to_state=new, step=step)
    return replace(vm, state=new, held_state=held, step=step, message=message,
                   failed_from=failed_from, state_changed_at=changed_at)


async def transition(
    tx: Tx, vm: Vm | uuid.UUID, target: VmState, *, step: str | None = None,
    message: str | None = None, detail: dict | None = None,
) -> Vm:
    """Move a VM to `target`, or park it as HALTED if its group is halted and `target` is a
    state where it would wait for a service. Repeating the current state only updates the step.
    `vm` is its id, or the VM as read with `lock=True` in this same transaction (which spares
    reading it again). Returns the VM as it now is; raises IllegalTransition (nothing is
    written) if not allowed."""
    if isinstance(vm, uuid.UUID):
        vm_id = vm
        vm = await get(tx.conn, vm_id, lock=True)
        if vm is None:
            raise LookupError(f"no VM {vm_id}")
    if vm.state == target or (vm.state == VmState.HALTED and vm.held_state == target):
        if step is not None and step != vm.step:
            await tx.conn.execute("UPDATE vms SET step = $2 WHERE id = $1", vm.id, step)
            vm = replace(vm, step=step)
        return vm
    try:
        check(vm.state, target)
    except IllegalTransition:
        log.warning("illegal transition refused", vm=vm.name, from_state=vm.state, to_state=target)
        raise
    parked = target in RESTING and vm.group_status == GroupStatus.HALTED
    new = VmState.HALTED if parked else target
    failed_from = None
    if target == VmState.FAILED:
        # A held VM failed where it was held, not in HALTED.
        failed_from = vm.held_state if vm.state == VmState.HALTED else vm.state
    was = vm
    vm = await _record(
        tx, vm, new, held=target if parked else None, step=step, message=message,
        failed_from=failed_from, detail=detail,
    )
    await _announce(tx, was, new, step=step, message=message, failed_from=failed_from)
    return vm


async def _announce(tx: Tx, vm: Vm, new: VmState, *, step: str | None, message: str | None,
                    failed_from: VmState | None) -> None:
    """The events that tell the next service a VM reached a state it acts on."""
    where = dict(group_id=vm.group_id, vm_id=vm.id)
    if new == VmState.FAILED:
        await tx.publish(ev.VmFailed(failed_from=failed_from, step=step, message=message), **where)
    elif new == VmState.CONFIGURED:
        await tx.publish(ev.VmConfigured(), **where)
    elif new == VmState.PROVISIONED:
        await tx.publish(ev.VmProvisioned(), **where)


async def hold(tx: Tx, vm: Vm) -> None:
    """Park a resting VM of a halted group."""
    if vm.state in RESTING:
        await _record(tx, vm, VmState.HALTED, held=vm.state, step=vm.step, message=vm.message,
                      failed_from=None)


async def release(tx: Tx, vm: Vm) -> None:
    """Put a HALTED VM back where it was held."""
    if vm.state == VmState.HALTED and vm.held_state:
        await _record(tx, vm, vm.held_state, held=None, step=vm.step, message=None,
                      failed_from=None)


async def retry(tx: Tx, vm_id: uuid.UUID) -> Vm:
    """Send a FAILED VM back to the resting state before the phase that failed (held, as its
    group is halted), so that phase runs again once the group resumes."""
    vm = await get(tx.conn, vm_id, lock=True)
    if vm is None:
        raise LookupError(f"no VM {vm_id}")
    if vm.state != VmState.FAILED:
        raise IllegalTransition(vm.state, VmState.PLANNED)
    back = RETRY_FROM.get(vm.failed_from or VmState.PLANNED, VmState.PLANNED)
    parked = vm.group_status == GroupStatus.HALTED
    return await _record(
        tx, vm, VmState.HALTED if parked else back, held=back if parked else None,
        step=f"retry from {back}", message=None, failed_from=None,
    )


async def add_message(tx: Tx, vm_id: uuid.UUID, level: str, text: str) -> int:
    """Store a log line of the VM and announce it (the live feed streams it to operators)."""
    row = await tx.conn.fetchrow(
        "INSERT INTO vm_messages (vm_id, level, text) VALUES ($1, $2, $3)"
        " RETURNING id, (SELECT group_id FROM vms WHERE id = $1) AS group_id",
        vm_id, level, text,
    )
    await tx.publish(ev.VmMessageLogged(message_id=row["id"], level=level, text=text),
                     group_id=row["group_id"], vm_id=vm_id)
    return row["id"]


async def set_provider_ref(conn: asyncpg.Connection, vm: Vm, ref: str) -> Vm:
    await conn.execute("UPDATE vms SET provider_ref = $2 WHERE id = $1", vm.id, ref)
    return replace(vm, provider_ref=ref)
