"""Cutover runs: one per operator request, from requested to how it ended."""

from __future__ import annotations

import uuid

import asyncpg

# A run that ended: a redelivery of its request does nothing.
FINISHED = ("completed", "rolled_back", "failed", "refused")
# Not started yet: a halt refuses these.
PENDING = ("requested", "accepted")


class CutoverRuns:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def add(self, run_id: uuid.UUID, group_id: uuid.UUID, *, prepare: bool) -> None:
        await self.conn.execute(
            "INSERT INTO cutover_runs (id, group_id, prepare, status)"
            " VALUES ($1, $2, $3, 'requested')", run_id, group_id, prepare)

    async def status(self, run_id: uuid.UUID, *, lock: bool = False) -> str | None:
        return await self.conn.fetchval(
            "SELECT status FROM cutover_runs WHERE id = $1" + (" FOR UPDATE" if lock else ""),
            run_id)

    async def set_running(self, run_id: uuid.UUID) -> None:
        await self.conn.execute("UPDATE cutover_runs SET status = 'running' WHERE id = $1",
                                run_id)

    async def finish(self, run_id: uuid.UUID, status: str, reason: str | None,
                     downtime_s: float | None) -> None:
        await self.conn.execute(
            "UPDATE cutover_runs SET status = $2, reason = $3, downtime_s = $4,"
            " finished_at = now() WHERE id = $1", run_id, status, reason, downtime_s)

    async def in_progress(self, group_id: uuid.UUID) -> bool:
        """A run of the group is at work (a prepared one too, which leaves the group ready)."""
        return bool(await self.conn.fetchval(
            "SELECT true FROM cutover_runs WHERE group_id = $1 AND status = 'running' LIMIT 1",
            group_id))

    async def ever_ran(self, group_id: uuid.UUID) -> bool:
        """A run of the group got to work once (whatever became of it): what it may have left
        on the legacy hosts is the group's to clean up."""
        return bool(await self.conn.fetchval(
            "SELECT true FROM cutover_runs WHERE group_id = $1"
            " AND NOT status = ANY($2::text[]) AND status <> 'refused' LIMIT 1",
            group_id, list(PENDING)))

    async def refuse_pending(self, group_id: uuid.UUID, reason: str) -> None:
        """Runs of the group not started yet end refused."""
        await self.conn.execute(
            "UPDATE cutover_runs SET status = 'refused', reason = $2, finished_at = now()"
            " WHERE group_id = $1 AND status = ANY($3::text[])",
            group_id, reason, list(PENDING))
