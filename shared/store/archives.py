"""Which archives a VM unpacks: its own, and for a replica also its master's database dumps
(the master loads with binary logging off, so a replica must load the same data itself)."""

from __future__ import annotations

import uuid

import asyncpg

_FOR_VM = """
    SELECT a.* FROM archives a
    WHERE a.vm_id = $1
       OR (a.kind = 'database' AND a.vm_id = (SELECT master_id FROM vms WHERE id = $1))
"""


async def for_vm(conn: asyncpg.Connection, vm_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(_FOR_VM + " ORDER BY a.kind DESC, a.id", vm_id)


async def one_for_vm(conn, vm_id: uuid.UUID, archive_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT * FROM ({_FOR_VM}) mine WHERE id = $2", vm_id, archive_id)
