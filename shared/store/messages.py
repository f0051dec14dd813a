"""A VM's log lines (message_update, a report's message, an archive warning)."""

from __future__ import annotations

import uuid

import asyncpg


class Messages:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def add(self, vm_id: uuid.UUID, level: str, text: str) -> tuple[int, uuid.UUID]:
        """Store a line; its id and the VM's group."""
        row = await self.conn.fetchrow(
            "INSERT INTO vm_messages (vm_id, level, text) VALUES ($1, $2, $3)"
            " RETURNING id, (SELECT group_id FROM vms WHERE id = $1) AS group_id",
            vm_id, level, text)
        return row["id"], row["group_id"]
