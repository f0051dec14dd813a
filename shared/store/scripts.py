"""Each VM's rendered configuration script, as the gateway serves it."""

from __future__ import annotations

import uuid

import asyncpg


class Scripts:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def save(self, vm_id: uuid.UUID, script: str) -> None:
        await self.conn.execute(
            "INSERT INTO vm_scripts (vm_id, script) VALUES ($1, $2) ON CONFLICT (vm_id)"
            " DO UPDATE SET script = $2, rendered_at = now()", vm_id, script)

    async def get(self, vm_id: uuid.UUID) -> str | None:
        return await self.conn.fetchval("SELECT script FROM vm_scripts WHERE vm_id = $1", vm_id)
