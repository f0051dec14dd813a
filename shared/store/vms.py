"""VM rows. A VM's state is written only with its line in the history (`write`), as the
rules (`shared/rules.py`) decided it; `shared/journey.py` puts the two together."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from shared.model import Vm
from shared.plan import Plan
from shared.rules import Move
from shared.states import GroupStatus, VmState


def vm_of_row(row: asyncpg.Record) -> Vm:
    return Vm(
        id=row["id"], group_id=row["group_id"], name=row["name"], role=row["role"],
        position=row["position"], state=VmState(row["state"]),
        held_state=VmState(row["held_state"]) if row["held_state"] else None,
        failed_from=VmState(row["failed_from"]) if row["failed_from"] else None,
        step=row["step"], message=row["message"], provider_ref=row["provider_ref"],
        group_status=GroupStatus(row["group_status"]),
        state_changed_at=row["state_changed_at"], detail=row["detail"],
        provider=row["provider"], simulated=row["simulated"],
        legacy_system=row["legacy_system"], mac=row["mac"], host=row["host"],
        waiting=row["waiting"], last_word_at=row["last_word_at"], last_step=row["last_step"],
    )


_SELECT = (
    "SELECT v.*, g.status AS group_status FROM vms v JOIN groups g ON g.id = v.group_id"
)

# The VM's new state and its line in the history (vm_transitions), in one statement: one round
# trip per transition, the most frequent write of a migration.
_WRITE = (
    "WITH v AS (UPDATE vms SET state = $2, held_state = $3, step = $4, message = $5,"
    " last_step = COALESCE($4, last_step),"
    " failed_from = $6, detail = COALESCE($7, detail), state_changed_at = now(),"
    # A VM that moved waits for nothing any more (shared/limits.py).
    " waiting = NULL WHERE id = $1"
    " RETURNING id, state_changed_at)"
    " INSERT INTO vm_transitions (vm_id, from_state, to_state, step)"
    " SELECT id, $8, $2, $4 FROM v RETURNING (SELECT state_changed_at FROM v)"
)


class Vms:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def get(self, vm_id: uuid.UUID, *, lock: bool = False) -> Vm | None:
        """The VM (with its group's status); `lock`: row-locked for this transaction."""
        row = await self.conn.fetchrow(
            f"{_SELECT} WHERE v.id = $1" + (" FOR UPDATE OF v" if lock else ""), vm_id)
        return vm_of_row(row) if row else None

    async def of_group(self, group_id: uuid.UUID) -> list[Vm]:
        rows = await self.conn.fetch(f"{_SELECT} WHERE v.group_id = $1 ORDER BY v.position",
                                     group_id)
        return [vm_of_row(r) for r in rows]

    async def ids_in(self, group_id: uuid.UUID, *states: VmState,
                     role: str | None = None) -> list[uuid.UUID]:
        """The group's VMs in one of `states` (and of `role`), in plan order."""
        rows = await self.conn.fetch(
            "SELECT id FROM vms WHERE group_id = $1 AND state = ANY($2::text[])"
            " AND ($3::text IS NULL OR role = $3) ORDER BY position",
            group_id, [str(s) for s in states], role)
        return [r["id"] for r in rows]

    async def add_planned(self, group_id: uuid.UUID, plan: Plan) -> dict[str, uuid.UUID]:
        """One planned VM per plan entry, a replica linked to its master; their ids by name."""
        ids = {vm.name: uuid.uuid4() for vm in plan.vms}
        await self.conn.executemany(
            "INSERT INTO vms (id, group_id, name, role, position, master_id)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            [(ids[vm.name], group_id, vm.name, vm.role.value, i,
              ids[vm.replica_of] if vm.replica_of else None) for i, vm in enumerate(plan.vms)])
        return ids

    async def write(self, vm: Vm, move: Move, *, step: str | None, message: str | None,
                    detail: dict[str, Any] | None = None) -> datetime:
        """Write `move` and its line in the history; when it was written."""
        return await self.conn.fetchval(
            _WRITE, vm.id, move.state, move.held_state, step, message, move.failed_from,
            detail, vm.state)

    async def set_step(self, vm_id: uuid.UUID, step: str) -> None:
        await self.conn.execute("UPDATE vms SET step = $2, last_step = $2 WHERE id = $1",
                                vm_id, step)

    async def heard(self, vm_id: uuid.UUID, step: str | None = None) -> None:
        """The VM said something (a heartbeat), or the service progressed on it: its deadline
        counts from now; `step` (if given) is what it is doing."""
        await self.conn.execute(
            "UPDATE vms SET last_word_at = now(), last_step = COALESCE($2, last_step)"
            " WHERE id = $1", vm_id, step)

    async def record_made(self, vm_id: uuid.UUID, *, provider: str, ref: str,
                          simulated: bool, mac: str | None = None) -> None:
        """The provider made the VM: which provider, its reference there, whether the VM is
        simulated, and its NIC's MAC."""
        await self.conn.execute(
            "UPDATE vms SET provider = $2, provider_ref = $3, simulated = $4, mac = $5"
            " WHERE id = $1", vm_id, provider, ref, simulated, mac)

    async def record_system(self, vm_id: uuid.UUID, system: dict[str, Any]) -> None:
        """The legacy host's system (shared/systems.HostSystem, as JSON), read when archived."""
        await self.conn.execute("UPDATE vms SET legacy_system = $2 WHERE id = $1", vm_id, system)
