"""A VM's log lines (message_update, a report's message, an archive warning)."""

from __future__ import annotations

import uuid

import asyncpg


class Messages:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def add(self, vm_id: uuid.UUID, level: str, text: str, *,
                  step: str | None = None) -> tuple[int, uuid.UUID]:
        """Store a line; its id and the VM's group. `step`: the line starts this step, which
        becomes the VM's last step, in the same statement."""
        if step is None:
            row = await self.conn.fetchrow(
                "INSERT INTO vm_messages (vm_id, level, text) VALUES ($1, $2, $3)"
                " RETURNING id, (SELECT group_id FROM vms WHERE id = $1) AS group_id",
                vm_id, level, text)
        else:
            row = await self.conn.fetchrow(
                "WITH v AS (UPDATE vms SET last_step = $4 WHERE id = $1 RETURNING group_id)"
                " INSERT INTO vm_messages (vm_id, level, text) VALUES ($1, $2, $3)"
                " RETURNING id, (SELECT group_id FROM v) AS group_id",
                vm_id, level, text, step)
        return row["id"], row["group_id"]
