"""What the limits count (shared/limits.py says why): VMs holding an in-flight slot per
destination host, VMs archiving per legacy site, and the VMs waiting for either, oldest group
first. Admission runs under a transaction-scoped advisory lock, so that "count, then admit"
is one step across every replica of the creator (or of the archiver, per site)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from shared.limits import IN_FLIGHT
from shared.states import VmState

_IN_FLIGHT = [str(s) for s in IN_FLIGHT]
# A group's legacy site: the plan's legacy_site, else the group's name (Plan.site).
_SITE = "COALESCE(g.plan->>'legacy_site', g.name)"


@dataclass(frozen=True)
class Waiting:
    """A VM waiting for a slot, and what it says about it now."""

    vm_id: uuid.UUID
    group_id: uuid.UUID
    waiting: str | None


class Limits:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def lock(self, what: str) -> None:
        """Serialise admission to `what` ("creation", "archives:<site>") until the transaction
        ends, across processes. Keyed by the schema too: stores in other schemas of the same
        database (tests) do not wait on each other."""
        await self.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':limits:' || $1))", what)

    async def in_flight_per_host(self) -> dict[str, int]:
        """VMs holding an in-flight slot, per host ("" for a VM admitted before hosts were
        recorded)."""
        rows = await self.conn.fetch(
            "SELECT COALESCE(host, '') AS host, count(*) AS n FROM vms"
            " WHERE state = ANY($1::text[]) OR (state = 'halted' AND held_state = ANY($1::text[]))"
            " GROUP BY 1", _IN_FLIGHT)
        return {r["host"]: r["n"] for r in rows}

    async def waiting_for_creation(self) -> list[Waiting]:
        """Archived VMs of active, wholly archived groups: oldest group first, plan order."""
        rows = await self.conn.fetch(
            "SELECT v.id, v.group_id, v.waiting FROM vms v JOIN groups g ON g.id = v.group_id"
            " WHERE v.state = 'archived' AND g.status = 'active' AND g.archived_at IS NOT NULL"
            " ORDER BY g.archived_at, g.created_at, g.id, v.position")
        return [Waiting(r["id"], r["group_id"], r["waiting"]) for r in rows]

    async def lock_unless_busy(self, vm_id: uuid.UUID) -> bool:
        """Row-lock the VM for this transaction unless another holds it (a creator making
        it); whether it was locked here."""
        return bool(await self.conn.fetchval(
            "SELECT true FROM vms WHERE id = $1 FOR UPDATE SKIP LOCKED", vm_id))

    async def creating(self) -> list[uuid.UUID]:
        """VMs admitted and not yet made, oldest first (just admitted, or left by a creator
        killed before it made them)."""
        rows = await self.conn.fetch(
            "SELECT id FROM vms WHERE state = 'creating' AND provider_ref IS NULL"
            " ORDER BY state_changed_at")
        return [r["id"] for r in rows]

    async def archiving_at(self, site: str) -> int:
        return await self.conn.fetchval(
            f"SELECT count(*) FROM vms v JOIN groups g ON g.id = v.group_id"
            f" WHERE v.state = 'archiving' AND {_SITE} = $1", site)

    async def waiting_for_archive(self, site: str) -> list[Waiting]:
        """Planned VMs of the site's active groups: oldest group first, plan order."""
        rows = await self.conn.fetch(
            f"SELECT v.id, v.group_id, v.waiting FROM vms v JOIN groups g ON g.id = v.group_id"
            f" WHERE v.state = 'planned' AND g.status = 'active' AND {_SITE} = $1"
            f" ORDER BY g.created_at, g.id, v.position", site)
        return [Waiting(r["id"], r["group_id"], r["waiting"]) for r in rows]

    async def set_waiting(self, vm_id: uuid.UUID, waiting: str, state: VmState) -> bool:
        """Say why the VM waits, if it is still in `state` (a halt or a cancel may have moved
        it since it was read); whether it was."""
        return await self.conn.fetchval(
            "UPDATE vms SET waiting = $2 WHERE id = $1 AND state = $3 RETURNING true",
            vm_id, waiting, state) or False

    async def set_host(self, vm_id: uuid.UUID, host: str) -> None:
        """The host the VM was admitted to (or, made already elsewhere, landed on)."""
        await self.conn.execute("UPDATE vms SET host = $2, waiting = NULL WHERE id = $1",
                                vm_id, host)

