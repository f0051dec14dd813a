"""Read-side queries for the operator's API, the web UI and the metrics: rows as the screens
show them, never used to decide anything."""

from __future__ import annotations

import uuid

import asyncpg

from shared.listing import PageRequest, like_pattern

_GROUP = (
    "SELECT g.*, coalesce((SELECT jsonb_object_agg(state, n) FROM"
    " (SELECT state, count(*) AS n FROM vms WHERE group_id = g.id GROUP BY state) c),"
    " '{}'::jsonb) AS states,"
    " coalesce((SELECT bool_or(simulated) FROM vms WHERE group_id = g.id), false) AS simulated"
    " FROM groups g"
)


# A VM's pinned host keys as an operator compares them with `ssh-keyscan | ssh-keygen -lf -`.
_HOST_KEYS = ("(SELECT array_agg(k.key_type || ' ' || k.fingerprint ORDER BY k.key_type)"
              " FROM vm_host_keys k WHERE k.vm_id = v.id) AS host_keys")


class Views:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def groups(self, page: PageRequest) -> tuple[list[asyncpg.Record], int]:
        """One page of groups, newest first by (created_at, id), each with its VMs counted by
        state (`states`) and whether any of them is simulated: up to page.limit + 1 rows (one
        more tells the caller there is a next page), and how many groups match the filter."""
        where = _Where()
        if page.statuses:
            where.add("g.status = ANY({}::text[])", list(page.statuses))
        if page.name:
            where.add("g.name ILIKE {} ESCAPE '\\'", like_pattern(page.name))
        total = await self.conn.fetchval(f"SELECT count(*) FROM groups g{where.sql()}",
                                         *where.args)
        if page.after:
            where.add("(g.created_at, g.id) < ({}, {})", *page.after)
        limit = where.param(page.limit + 1)
        rows = await self.conn.fetch(
            f"{_GROUP}{where.sql()} ORDER BY g.created_at DESC, g.id DESC LIMIT {limit}",
            *where.args)
        return rows, total

    async def vms_listed(self, page: PageRequest,
                         group_id: uuid.UUID | None) -> tuple[list[asyncpg.Record], int]:
        """One page of VMs across groups (or of one), with their group's name (`group_name`):
        newest group first, then by group and plan position; up to page.limit + 1 rows, and
        how many VMs match the filter."""
        where = _Where()
        if group_id:
            where.add("v.group_id = {}", group_id)
        if page.statuses:
            where.add("v.state = ANY({}::text[])", list(page.statuses))
        if page.name:
            where.add("v.name ILIKE {} ESCAPE '\\'", like_pattern(page.name))
        total = await self.conn.fetchval(f"SELECT count(*) FROM vms v{where.sql()}", *where.args)
        if page.after:
            # Newest first, then ascending by (group, position): no single row comparison
            # says that, so it is spelled out.
            where.add("(v.created_at < {0} OR (v.created_at = {0} AND"
                      " (v.group_id, v.position) > ({1}, {2})))", *page.after)
        limit = where.param(page.limit + 1)
        rows = await self.conn.fetch(
            "SELECT v.*, g.name AS group_name FROM vms v JOIN groups g ON g.id = v.group_id"
            f"{where.sql()} ORDER BY v.created_at DESC, v.group_id, v.position LIMIT {limit}",
            *where.args)
        return rows, total

    async def group(self, group_id: uuid.UUID) -> asyncpg.Record | None:
        return await self.conn.fetchrow(f"{_GROUP} WHERE g.id = $1", group_id)

    async def vms(self, group_id: uuid.UUID) -> list[asyncpg.Record]:
        return await self.conn.fetch(f"SELECT v.*, {_HOST_KEYS} FROM vms v WHERE group_id = $1"
                                     " ORDER BY position", group_id)

    async def vm(self, vm_id: uuid.UUID) -> asyncpg.Record | None:
        return await self.conn.fetchrow(f"SELECT v.*, {_HOST_KEYS} FROM vms v WHERE id = $1",
                                        vm_id)

    async def latest_messages(self, group_id: uuid.UUID, limit: int) -> list[asyncpg.Record]:
        """The group's last `limit` log lines, oldest first."""
        rows = await self.conn.fetch(
            "SELECT m.* FROM vm_messages m JOIN vms v ON v.id = m.vm_id WHERE v.group_id = $1"
            " ORDER BY m.id DESC LIMIT $2", group_id, limit)
        return list(reversed(rows))

    async def messages_after(self, vm_id: uuid.UUID, after: int,
                             limit: int) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            "SELECT * FROM vm_messages WHERE vm_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            vm_id, after, limit)

    async def timeline(self, group_id: uuid.UUID) -> list[asyncpg.Record]:
        """Every transition of the group's VMs, per VM in plan order."""
        return await self.conn.fetch(
            "SELECT v.name, t.to_state, t.step, t.at FROM vm_transitions t"
            " JOIN vms v ON v.id = t.vm_id WHERE v.group_id = $1 ORDER BY v.position, t.id",
            group_id)

    async def cutover_runs(self, group_id: uuid.UUID, limit: int) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            "SELECT * FROM cutover_runs WHERE group_id = $1 ORDER BY created_at DESC LIMIT $2",
            group_id, limit)

    async def cutover_steps(self, run_ids: list[uuid.UUID]) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            "SELECT * FROM cutover_steps WHERE run_id = ANY($1::uuid[])"
            " ORDER BY run_id, position", run_ids)

    async def needs_provisioning(self) -> list[asyncpg.Record]:
        """Configured VMs of active groups, longest waiting first."""
        return await self.conn.fetch(
            "SELECT v.* FROM vms v JOIN groups g ON g.id = v.group_id"
            " WHERE v.state = 'configured' AND g.status = 'active' ORDER BY v.state_changed_at")

    async def vm_states(self) -> list[asyncpg.Record]:
        return await self.conn.fetch("SELECT state, count(*) AS n FROM vms GROUP BY state")

    async def group_statuses(self) -> list[asyncpg.Record]:
        return await self.conn.fetch("SELECT status, count(*) AS n FROM groups GROUP BY status")

    async def outbox_lag(self) -> asyncpg.Record:
        """Unpublished events: how many, the oldest's age (s), and how many were unroutable."""
        return await self.conn.fetchrow(
            "SELECT count(*) AS n, "
            "       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS age, "
            "       count(*) FILTER (WHERE error IS NOT NULL) AS unroutable "
            "FROM outbox WHERE published_at IS NULL")


class _Where:
    """A WHERE clause built from conditions with numbered parameters ({} in a condition takes
    the next argument's $n; {0}, {1} number the condition's own arguments)."""

    def __init__(self):
        self.conditions: list[str] = []
        self.args: list = []

    def param(self, value) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, condition: str, *values) -> None:
        self.conditions.append(condition.format(*(self.param(v) for v in values)))

    def sql(self) -> str:
        return f" WHERE {' AND '.join(self.conditions)}" if self.conditions else ""
