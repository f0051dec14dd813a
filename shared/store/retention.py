"""What retention deletes, in bounded batches: each statement deletes at most `batch` rows and
commits on its own, so no table is locked for long (rows another session holds are skipped,
and taken on the next pass)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

# Each kind: the batch delete, and its count for a dry run. $1: older than this.
_KINDS: dict[str, tuple[str, str]] = {
    # Published events only: an unpublished one (unroutable, say) waits for the relay or for
    # an operator, however old. Oldest first, along the primary key.
    "outbox": (
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE published_at < $1"
        " ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)",
        "SELECT count(*) FROM outbox WHERE published_at < $1",
    ),
    "inbox": (
        "DELETE FROM inbox WHERE (service, event_id) IN (SELECT service, event_id FROM inbox"
        " WHERE processed_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        "SELECT count(*) FROM inbox WHERE processed_at < $1",
    ),
    # The log lines of VMs whose group was cancelled or finalized before $1; a group still on
    # its way keeps all of its own.
    "vm_messages": (
        "DELETE FROM vm_messages WHERE id IN (SELECT m.id FROM vm_messages m"
        " JOIN vms v ON v.id = m.vm_id JOIN groups g ON g.id = v.group_id"
        " WHERE g.closed_at < $1 LIMIT $2 FOR UPDATE OF m SKIP LOCKED)",
        "SELECT count(*) FROM vm_messages m JOIN vms v ON v.id = m.vm_id"
        " JOIN groups g ON g.id = v.group_id WHERE g.closed_at < $1",
    ),
}

KINDS = tuple(_KINDS)


class Retention:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def prune(self, kind: str, before: datetime, batch: int) -> int:
        """Delete at most `batch` rows of `kind` older than `before`; how many went."""
        status = await self.conn.execute(_KINDS[kind][0], before, batch)
        return int(status.split()[-1])

    async def count(self, kind: str, before: datetime) -> int:
        """How many rows of `kind` are older than `before` (a dry run)."""
        return await self.conn.fetchval(_KINDS[kind][1], before)
