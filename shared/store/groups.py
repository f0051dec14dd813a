"""Group rows. The group's replication password is kept sealed (shared/secrets_key.py): sealed
as it is written, unsealed only when a database VM asks for it."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from shared.model import Group
from shared.plan import Plan
from shared.secrets_key import SecretsKey, SecretsKeyError
from shared.states import GroupStatus


class GroupExists(Exception):
    pass


def _group(row: asyncpg.Record) -> Group:
    return Group(
        id=row["id"], name=row["name"], status=GroupStatus(row["status"]), plan=row["plan"],
        halted_vm_id=row["halted_vm_id"], halted_reason=row["halted_reason"],
        archived_at=row["archived_at"], ready_at=row["ready_at"], created_at=row["created_at"],
        closed_at=row["closed_at"], closing_error=row["closing_error"],
        legacy_forwarding=row["legacy_forwarding"],
    )


class Groups:
    def __init__(self, conn: asyncpg.Connection, secrets_key: SecretsKey | None = None):
        self.conn = conn
        self.secrets_key = secrets_key

    def _key(self) -> SecretsKey:
        # Only the gateway's process reads the key file; elsewhere a secret is never touched.
        if self.secrets_key is None:
            raise SecretsKeyError("this process holds no secrets key (only the gateway's does):"
                                  " it can neither seal nor unseal a group's password")
        return self.secrets_key

    async def get(self, group_id: uuid.UUID, *, lock: bool = False) -> Group | None:
        row = await self.conn.fetchrow(
            "SELECT * FROM groups WHERE id = $1" + (" FOR UPDATE" if lock else ""), group_id)
        return _group(row) if row else None

    async def find(self, ref: str, *, lock: bool = False) -> Group | None:
        """A group by id or by the name of its newest submission."""
        try:
            return await self.get(uuid.UUID(ref), lock=lock)
        except ValueError:
            row = await self.conn.fetchrow(
                "SELECT * FROM groups WHERE name = $1 ORDER BY created_at DESC LIMIT 1"
                + (" FOR UPDATE" if lock else ""), ref)
            return _group(row) if row else None

    async def add(self, group_id: uuid.UUID, plan: Plan, replication_password: str) -> None:
        try:
            await self.conn.execute(
                "INSERT INTO groups (id, name, plan, sealed_replication_password)"
                " VALUES ($1, $2, $3, $4)",
                group_id, plan.group, plan.model_dump(mode="json"),
                self._key().seal(replication_password))
        except asyncpg.UniqueViolationError as exc:
            raise GroupExists(f"group {plan.group!r} is already being migrated") from exc

    async def set_status(self, group: Group, status: GroupStatus, *,
                         halted_vm_id: uuid.UUID | None = None,
                         halted_reason: str | None = None) -> None:
        """Write a group's new status (checked by the caller); the halt's VM and reason are
        kept only while it is halted, it is ready since it last became ready from active,
        closed since it was cancelled or finalized, and a closing error belongs to the status
        it was met in."""
        await self.conn.execute(
            "UPDATE groups SET status = $2, halted_vm_id = $3, halted_reason = $4,"
            " ready_at = CASE WHEN $2 = 'ready' AND status = 'active' THEN now()"
            "                 ELSE ready_at END,"
            " closed_at = CASE WHEN $2 IN ('cancelled', 'finalized') THEN now()"
            "                  ELSE closed_at END,"
            " closing_error = NULL, updated_at = now() WHERE id = $1",
            group.id, status.value, halted_vm_id, halted_reason)

    async def record_closing_error(self, group_id: uuid.UUID, error: str | None) -> None:
        """Why a cancel or finalize stopped short; None when it is asked again."""
        await self.conn.execute(
            "UPDATE groups SET closing_error = $2, updated_at = now() WHERE id = $1",
            group_id, error)

    async def record_legacy_forwarding(self, group_id: uuid.UUID, forwarding: str) -> None:
        """What a finalize did with the legacy hosts' forwarding: kept or removed."""
        await self.conn.execute(
            "UPDATE groups SET legacy_forwarding = $2, updated_at = now() WHERE id = $1",
            group_id, forwarding)

    async def mark_archived(self, group_id: uuid.UUID) -> bool:
        """True the first time only."""
        return bool(await self.conn.fetchval(
            "UPDATE groups SET archived_at = now() WHERE id = $1 AND archived_at IS NULL"
            " RETURNING true", group_id))

    async def record_master_complete(self, group_id: uuid.UUID, master: str,
                                     position: dict[str, Any]) -> None:
        """A database master is loaded, at this position: its replicas' hold reads it."""
        await self.conn.execute(
            "UPDATE groups SET master_complete = coalesce(master_complete, '{}'::jsonb)"
            " || jsonb_build_object($2::text, $3::jsonb) WHERE id = $1",
            group_id, master, position)

    async def masters_complete(self, group_id: uuid.UUID) -> dict[str, dict[str, Any]]:
        """Master name -> the position it completed at, for the masters that did."""
        return await self.conn.fetchval(
            "SELECT master_complete FROM groups WHERE id = $1", group_id) or {}

    async def replication_password(self, group_id: uuid.UUID) -> str:
        sealed = await self.conn.fetchval(
            "SELECT sealed_replication_password FROM groups WHERE id = $1", group_id)
        if sealed is None:  # the gateway's start seals a clear one before it serves
            raise SecretsKeyError(f"group {group_id} has no sealed replication password")
        return self._key().unseal(sealed, what=f"group {group_id}'s replication password")
