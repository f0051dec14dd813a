"""A cutover run's journal: each step as it starts, ends and is undone."""

from __future__ import annotations

import uuid

import asyncpg


class CutoverSteps:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def started(self, run_id: uuid.UUID, position: int, name: str) -> None:
        await self.conn.execute(
            "INSERT INTO cutover_steps (run_id, position, name, status, started_at)"
            " VALUES ($1, $2, $3, 'running', now()) ON CONFLICT (run_id, position) DO UPDATE"
            " SET status = 'running', started_at = now(), finished_at = NULL, error = NULL",
            run_id, position, name)

    async def finished(self, run_id: uuid.UUID, position: int, status: str, seconds: float, *,
                       detail: str | None = None, error: str | None = None) -> None:
        """status: done or failed."""
        await self.conn.execute(
            "UPDATE cutover_steps SET status = $3, finished_at = now(), seconds = $4,"
            " detail = $5, error = $6 WHERE run_id = $1 AND position = $2",
            run_id, position, status, seconds, detail, error)

    async def undone(self, run_id: uuid.UUID, position: int, error: str | None) -> None:
        await self.conn.execute(
            "UPDATE cutover_steps SET status = $3, undone_at = now(), undo_error = $4"
            " WHERE run_id = $1 AND position = $2",
            run_id, position, "undo_failed" if error else "undone", error)

    async def to_undo(self, run_id: uuid.UUID) -> list[int]:
        """Steps the run got to (done, failed or cut off while running) and did not undo yet,
        last first."""
        rows = await self.conn.fetch(
            "SELECT position FROM cutover_steps WHERE run_id = $1"
            " AND status IN ('done', 'failed', 'running') ORDER BY position DESC", run_id)
        return [r["position"] for r in rows]
