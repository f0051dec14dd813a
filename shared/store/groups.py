"""Group rows: submission, halting, resuming and readiness."""

from __future__ import annotations

import secrets
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared import events as ev
from shared.plan import Plan
from shared.states import GroupStatus, VmState
from shared.store import vms as vm_store
from shared.store.tx import Tx


class GroupExists(Exception):
    pass


@dataclass(frozen=True)
class Group:
    id: uuid.UUID
    name: str
    status: GroupStatus
    plan: dict[str, Any]
    halted_vm_id: uuid.UUID | None
    halted_reason: str | None
    archived_at: datetime | None
    ready_at: datetime | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Group:
        return cls(
            id=row["id"], name=row["name"], status=GroupStatus(row["status"]), plan=row["plan"],
            halted_vm_id=row["halted_vm_id"], halted_reason=row["halted_reason"],
            archived_at=row["archived_at"], ready_at=row["ready_at"], created_at=row["created_at"],
        )

    def parsed_plan(self) -> Plan:
        """The plan as a model. A group's plan is written once, at submission, and Plan is
        frozen, so one parse per group is shared by every handler of this process (the
        configurator and the archiver parse it for each VM: 4 % of the pipeline's CPU)."""
        plan = _PLANS.get(self.id)
        if plan is None:
            plan = _PLANS[self.id] = Plan.model_validate(self.plan)
            if len(_PLANS) > _PLANS_KEPT:
                _PLANS.popitem(last=False)
        return plan


_PLANS: OrderedDict[uuid.UUID, Plan] = OrderedDict()
_PLANS_KEPT = 256


async def get(conn: asyncpg.Connection, group_id: uuid.UUID, *, lock: bool = False) -> Group | None:
    row = await conn.fetchrow(
        "SELECT * FROM groups WHERE id = $1" + (" FOR UPDATE" if lock else ""), group_id
    )
    return Group.from_row(row) if row else None


async def find(conn: asyncpg.Connection, ref: str) -> Group | None:
    """A group by id or by the name of its newest submission."""
    try:
        return await get(conn, uuid.UUID(ref))
    except ValueError:
        row = await conn.fetchrow(
            "SELECT * FROM groups WHERE name = $1 ORDER BY created_at DESC LIMIT 1", ref
        )
        return Group.from_row(row) if row else None


async def submit(tx: Tx, plan: Plan) -> uuid.UUID:
    """Store a validated plan as a new group of planned VMs and announce it."""
    group_id = uuid.uuid4()
    try:
        await tx.conn.execute(
            "INSERT INTO groups (id, name, plan, replication_password) VALUES ($1, $2, $3, $4)",
            group_id, plan.group, plan.model_dump(mode="json"), secrets.token_urlsafe(24),
        )
    except asyncpg.UniqueViolationError as exc:
        raise GroupExists(f"group {plan.group!r} is already being migrated") from exc
    ids = {vm.name: uuid.uuid4() for vm in plan.vms}
    await tx.conn.executemany(
        "INSERT INTO vms (id, group_id, name, role, position, master_id)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        [(ids[vm.name], group_id, vm.name, vm.role.value, i,
          ids[vm.replica_of] if vm.replica_of else None) for i, vm in enumerate(plan.vms)],
    )
    await tx.publish(ev.GroupSubmitted(group_name=plan.group, vm_count=len(plan.vms)),
                     group_id=group_id)
    return group_id


async def halt(tx: Tx, group_id: uuid.UUID, failed: vm_store.Vm, reason: str) -> bool:
    """Halt a group because `failed` erred: its resting VMs are held where they are, the others
    at their next step. False if the group was already halted."""
    group = await get(tx.conn, group_id, lock=True)
    if group is None or group.status == GroupStatus.HALTED:
        return False
    await tx.conn.execute(
        "UPDATE groups SET status = 'halted', halted_vm_id = $2, halted_reason = $3,"
        " updated_at = now() WHERE id = $1",
        group_id, failed.id, reason,
    )
    for vm in await vm_store.of_group(tx.conn, group_id):
        await vm_store.hold(tx, vm)
    await tx.publish(
        ev.GroupHalted(vm_id=str(failed.id), vm_name=failed.name, step=failed.step, reason=reason),
        group_id=group_id,
    )
    return True


class ResumeRefused(Exception):
    pass


async def resume(tx: Tx, group_id: uuid.UUID) -> None:
    """Lift a halt: held VMs go back where they were and the services pick them up again."""
    group = await get(tx.conn, group_id, lock=True)
    if group is None:
        raise LookupError(f"no group {group_id}")
    if group.status != GroupStatus.HALTED:
        raise ResumeRefused(f"group {group.name} is {group.status}, not halted")
    members = await vm_store.of_group(tx.conn, group_id)
    still_failed = [vm.name for vm in members if vm.state == VmState.FAILED]
    if still_failed:
        raise ResumeRefused(
            f"group {group.name}: VM {', '.join(still_failed)} still failed; retry it first"
        )
    await tx.conn.execute(
        "UPDATE groups SET status = 'active', halted_vm_id = NULL, halted_reason = NULL,"
        " updated_at = now() WHERE id = $1",
        group_id,
    )
    for vm in await vm_store.of_group(tx.conn, group_id):
        await vm_store.release(tx, vm)
    await tx.publish(ev.GroupResumed(), group_id=group_id)


async def mark_ready_if_complete(tx: Tx, group_id: uuid.UUID) -> bool:
    """If every VM of an active group is ready, the group is ready: announce it once."""
    group = await get(tx.conn, group_id, lock=True)
    if group is None or group.status != GroupStatus.ACTIVE:
        return False
    members = await vm_store.of_group(tx.conn, group_id)
    if not all(vm.state == VmState.READY for vm in members):
        return False
    await tx.conn.execute(
        "UPDATE groups SET status = 'ready', ready_at = now(), updated_at = now() WHERE id = $1",
        group_id,
    )
    await tx.publish(ev.GroupReady(), group_id=group_id)
    return True


async def mark_archived_once(tx: Tx, group_id: uuid.UUID) -> bool:
    """True exactly once: when every VM of the group is archived (held there or not) and
    nobody said so before."""
    members = await vm_store.of_group(tx.conn, group_id)
    if not all(VmState.ARCHIVED in (vm.state, vm.held_state) for vm in members):
        return False
    return bool(
        await tx.conn.fetchval(
            "UPDATE groups SET archived_at = now() WHERE id = $1 AND archived_at IS NULL"
            " RETURNING true",
            group_id,
        )
    )
