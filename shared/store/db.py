"""The asyncpg pool and the numbered SQL migrations, applied at start-up under an advisory lock."""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import asynccontextmanager
from importlib import resources
from typing import AsyncIterator

import asyncpg

from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

# Longest a new connection may take to open, and one statement to answer, in seconds. No
# statement of Ferryman's takes long (the long poll waits outside the database); a statement
# that waits on a row lock held by another handler is the longest legitimate wait, far shorter.
CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 60.0

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _check_schema(schema: str) -> str:
    # The schema name goes into SQL as an identifier, so only plain names are accepted.
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"FERRY_DATABASE_SCHEMA {schema!r}: use lowercase letters, digits, _")
    return schema


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"ferryman-migrations:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("shared.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = re.match(r"^(\d+)_(.+)\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


@asynccontextmanager
async def migration_lock(conn: asyncpg.Connection, schema: str) -> AsyncIterator[None]:
    """The schema's migration lock, held on `conn` (a connection of its own, not a pooled one)
    for the block: the migrations, and the work on every sealed secret (shared/store/sealed.py),
    run one process at a time."""
    await conn.execute("SELECT pg_advisory_lock($1)", _lock_key(_check_schema(schema)))
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(schema))


async def connect(settings: Settings) -> asyncpg.Connection:
    """A connection of its own (outside the pool) on the configured schema."""
    return await asyncpg.connect(
        settings.database_url, timeout=CONNECT_TIMEOUT_S,
        server_settings={"search_path": _check_schema(settings.database_schema)})


async def migrate(conn: asyncpg.Connection, schema: str) -> list[str]:
    """Apply the migrations not yet applied to `schema`; returns the names applied now."""
    schema = _check_schema(schema)
    applied_now = []
    async with migration_lock(conn, schema):
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
            " version int PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {schema}.schema_migrations")}
        for version, name, sql in _migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(f"SET LOCAL search_path TO {schema}")
                await conn.execute(sql)
                await conn.execute(
                    f"INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)",
                    version, name,
                )
            applied_now.append(name)
            log.info("migration applied", migration=name, schema=schema)
    return applied_now


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=_json_dumps, decoder=_json_loads, schema="pg_catalog")


def _json_dumps(value) -> str:
    return json.dumps(value, default=str)


def _json_loads(text: str):
    return json.loads(text)


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """What a connection needs on its way back to the pool: nothing beyond what asyncpg
    always does first (roll back an open transaction, drop listener callbacks).

    asyncpg's default also sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL;`, one more round trip per acquisition (docs/performance.md). No pooled connection holds session state: nothing
    here takes session advisory locks (the migrations lock on their own connection), declares
    cursors outside a transaction, or SETs without LOCAL; the search_path is a start-up
    parameter; the relay's listener UNLISTENs before it releases its connection."""


async def open_pool(settings: Settings, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """Open the pool on the configured schema, migrating it first."""
    schema = _check_schema(settings.database_schema)
    conn = await asyncpg.connect(settings.database_url, timeout=CONNECT_TIMEOUT_S)
    try:
        await migrate(conn, schema)
    finally:
        await conn.close()
    return await asyncpg.create_pool(
        settings.database_url,
        min_size=min_size,
        max_size=max_size,
        # A connection the network silently dropped never answers: without these a query on it,
        # or a connection opened into it, waits for ever (tests/integration/test_network_cut.py).
        timeout=CONNECT_TIMEOUT_S,
        command_timeout=COMMAND_TIMEOUT_S,
        server_settings={"search_path": schema},
        init=_init_connection,
        reset=_reset_connection,
    )
