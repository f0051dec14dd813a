"""The state store against the real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.store.db import migrate

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]


async def test_concurrent_start_ups_apply_each_migration_once(settings):
    """Several processes starting at once migrate the schema exactly once (advisory lock)."""
    conns = [await asyncpg.connect(settings.database_url) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate(c, settings.database_schema) for c in conns))
        names = [name for batch in applied for name in batch]
        assert names and len(names) == len(set(names))
        assert await migrate(conns[0], settings.database_schema) == []
        count = await conns[0].fetchval(
            f"SELECT count(*) FROM {settings.database_schema}.schema_migrations")
        assert count == len(names)
    finally:
        for c in conns:
            await c.close()


async def test_a_schema_name_that_is_not_plain_is_refused(settings):
    """The schema name reaches SQL as an identifier, so anything but a plain name is refused."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        with pytest.raises(ValueError, match="FERRY_DATABASE_SCHEMA"):
            await migrate(conn, "x; DROP TABLE y")
    finally:
        await conn.close()
