"""The audit trail: what each operator token asked for, and how it ended."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class AuditLine:
    actor: str
    role: str
    method: str
    route: str  # the route's template, e.g. /v1/groups/{group}/cutover
    path: str  # the path as asked
    status: int
    group_id: uuid.UUID | None = None
    vm_id: uuid.UUID | None = None
    detail: str | None = None


class Audit:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def record(self, line: AuditLine) -> None:
        await self.conn.execute(
            "INSERT INTO audit (actor, role, method, route, path, status, group_id, vm_id,"
            " detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            line.actor, line.role, line.method, line.route, line.path, line.status,
            line.group_id, line.vm_id, line.detail)

    async def page(self, group_id: uuid.UUID | None, limit: int,
                   before: int | None) -> list[asyncpg.Record]:
        """Newest first, `limit` + 1 lines (the one more says there is a next page), of one
        group or of all, starting below the id `before`."""
        return await self.conn.fetch(
            "SELECT a.id, a.at, a.actor, a.role, a.method, a.route, a.path, a.status,"
            " a.group_id, g.name AS group_name, a.vm_id, a.detail"
            " FROM audit a LEFT JOIN groups g ON g.id = a.group_id"
            " WHERE ($1::uuid IS NULL OR a.group_id = $1) AND ($2::bigint IS NULL OR a.id < $2)"
            " ORDER BY a.id DESC LIMIT $3", group_id, before, limit + 1)
