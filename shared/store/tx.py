"""A unit of work: one transaction, and the events it publishes through the outbox."""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator

import asyncpg

from shared.events import Envelope, Payload


class AlreadyProcessed(Exception):
    """The event was handled before (the inbox has it); nothing is to be done again."""


_INSERT = ("INSERT INTO outbox (event_id, routing_key, body, group_id)"
           " VALUES ($1, $2, $3::text::jsonb, $4)")
_INSERT_AND_NOTIFY = (f"WITH o AS ({_INSERT} RETURNING 1)"
                      " SELECT pg_notify(current_schema() || '_outbox', '') FROM o")


class Tx:
    def __init__(self, conn: asyncpg.Connection, cause: Envelope | None = None):
        self.conn = conn
        self.cause = cause
        self.published: list[Envelope] = []

    async def publish(
        self, payload: Payload, *, group_id: uuid.UUID, vm_id: uuid.UUID | None = None
    ) -> Envelope:
        """Write an event to the outbox; the relay sends it once this transaction commits."""
        event = Envelope.new(payload, group_id=group_id, vm_id=vm_id, cause=self.cause)
        # The body goes in as the wire format (pydantic's JSON, cast to jsonb by the server),
        # which the relay publishes as it is stored, without building an Envelope again.
        args = (event.id, event.type, event.model_dump_json(), group_id)
        if not self.published:
            # The relay's wake-up (delivered at commit; one per transaction is enough), in the
            # same statement as the first insert: one round trip, not two.
            await self.conn.execute(_INSERT_AND_NOTIFY, *args)
        else:
            await self.conn.execute(_INSERT, *args)
        self.published.append(event)
        return event

    async def claim(self, service: str, event_id: uuid.UUID) -> None:
        """Record the event as processed by `service`, in this transaction; a second claim of
        the same event (a redelivery) raises AlreadyProcessed."""
        await _claim(self.conn, service, event_id)


async def _claim(db, service: str, event_id: uuid.UUID) -> None:
    inserted = await db.fetchval(
        "INSERT INTO inbox (service, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
        service, event_id,
    )
    if not inserted:
        raise AlreadyProcessed(f"{service} already processed {event_id}")


class Store:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    @asynccontextmanager
    async def transaction(self, cause: Envelope | None = None, *,
                          conn: asyncpg.Connection | None = None) -> AsyncIterator[Tx]:
        """A transaction on a connection from the pool, or on `conn` (one the caller already
        holds, so that a request takes the pool once)."""
        if conn is not None:
            async with conn.transaction():
                yield Tx(conn, cause)
            return
        async with self.pool.acquire() as conn, conn.transaction():
            yield Tx(conn, cause)

    async def fetch(self, query: str, *args):
        return await self.pool.fetch(query, *args)

    async def fetchrow(self, query: str, *args):
        return await self.pool.fetchrow(query, *args)

    async def fetchval(self, query: str, *args):
        return await self.pool.fetchval(query, *args)

    async def claim(self, service: str, event_id: uuid.UUID) -> None:
        """Record the event as processed by `service` on its own (one statement, autocommit),
        for a handler that wrote nothing that had to commit with it."""
        await _claim(self.pool, service, event_id)

    async def processed(self, service: str, event_id: uuid.UUID) -> bool:
        return bool(
            await self.pool.fetchval(
                "SELECT true FROM inbox WHERE service = $1 AND event_id = $2", service, event_id
            )
        )
