"""The public SSH host keys each new VM reported (012_vm_host_keys.sql): what the cutover pins."""

from __future__ import annotations

import uuid

import asyncpg

from shared.host_keys import HostKey


class HostKeys:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def replace(self, vm_id: uuid.UUID, keys: list[HostKey]) -> None:
        """The VM's keys are now `keys`, and only these (a reconfigured VM made new ones)."""
        async with self.conn.transaction():
            await self.conn.execute("DELETE FROM vm_host_keys WHERE vm_id = $1", vm_id)
            await self.conn.executemany(
                "INSERT INTO vm_host_keys (vm_id, key_type, public_key, fingerprint)"
                " VALUES ($1, $2, $3, $4)",
                [(vm_id, key.type, key.line, key.fingerprint) for key in keys])

    async def of_vm(self, vm_id: uuid.UUID) -> list[HostKey]:
        rows = await self.conn.fetch(
            "SELECT key_type, public_key FROM vm_host_keys WHERE vm_id = $1 ORDER BY key_type",
            vm_id)
        return [HostKey(row["key_type"], row["public_key"].split()[1]) for row in rows]

    async def of_group(self, group_id: uuid.UUID) -> dict[uuid.UUID, list[HostKey]]:
        rows = await self.conn.fetch(
            "SELECT k.vm_id, k.key_type, k.public_key FROM vm_host_keys k"
            " JOIN vms v ON v.id = k.vm_id WHERE v.group_id = $1 ORDER BY k.vm_id, k.key_type",
            group_id)
        found: dict[uuid.UUID, list[HostKey]] = {}
        for row in rows:
            found.setdefault(row["vm_id"], []).append(
                HostKey(row["key_type"], row["public_key"].split()[1]))
        return found
