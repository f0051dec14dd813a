"""The archive store's records. A VM unpacks its own archives, and a replica also its master's
database dumps (the master loads with binary logging off, so a replica must load the same data
itself)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

_FOR_VM = """
    SELECT a.* FROM archives a
    WHERE a.vm_id = $1
       OR (a.kind = 'database' AND a.vm_id = (SELECT master_id FROM vms WHERE id = $1))
"""


@dataclass(frozen=True)
class ArchiveRecord:
    id: str
    vm_id: uuid.UUID
    kind: str  # path | database
    source: str  # "/data", or the database's name
    engine: str | None
    file: str
    sha256: str
    size: int
    # What the dump's server answered when asked its version (PostgreSQL's server_version_num):
    # the rebuilt VM's cluster runs that major unless the plan names another.
    server_version: str | None = None


def _archive(row: asyncpg.Record) -> ArchiveRecord:
    return ArchiveRecord(id=row["id"], vm_id=row["vm_id"], kind=row["kind"],
                         source=row["source"], engine=row["engine"], file=row["file"],
                         sha256=row["sha256"], size=row["size"],
                         server_version=row["server_version"])


class Archives:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def save(self, archive: ArchiveRecord) -> None:
        """Record an archive; a redone one replaces its own record (same id)."""
        await self.conn.execute(
            "INSERT INTO archives (id, vm_id, kind, source, engine, file, sha256, size,"
            " server_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT (id) DO UPDATE SET file = $6, sha256 = $7, size = $8,"
            " server_version = $9, created_at = now()",
            archive.id, archive.vm_id, archive.kind, archive.source, archive.engine,
            archive.file, archive.sha256, archive.size, archive.server_version)

    async def for_vm(self, vm_id: uuid.UUID) -> list[ArchiveRecord]:
        """What the VM unpacks: paths first, then dumps."""
        rows = await self.conn.fetch(_FOR_VM + " ORDER BY a.kind DESC, a.id", vm_id)
        return [_archive(r) for r in rows]

    async def of_group(self, group_id: uuid.UUID) -> list[ArchiveRecord]:
        """Every archive the group's VMs have recorded."""
        rows = await self.conn.fetch(
            "SELECT a.* FROM archives a JOIN vms v ON v.id = a.vm_id WHERE v.group_id = $1"
            " ORDER BY a.id", group_id)
        return [_archive(r) for r in rows]

    async def forget_group(self, group_id: uuid.UUID) -> int:
        """Drop the records of the group's archives (their files are removed by the caller);
        how many there were."""
        return int((await self.conn.execute(
            "DELETE FROM archives WHERE vm_id IN (SELECT id FROM vms WHERE group_id = $1)",
            group_id)).split()[-1])

    async def one_for_vm(self, vm_id: uuid.UUID, archive_id: str) -> ArchiveRecord | None:
        row = await self.conn.fetchrow(f"SELECT * FROM ({_FOR_VM}) mine WHERE id = $2",
                                       vm_id, archive_id)
        return _archive(row) if row else None
