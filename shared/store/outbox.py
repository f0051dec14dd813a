"""The outbox: events written in the transaction that caused them, published by the relay
(shared/relay.py) once committed."""

from __future__ import annotations

import uuid

import asyncpg

from shared.events import Envelope

_INSERT = ("INSERT INTO outbox (event_id, routing_key, body, group_id)"
           " VALUES ($1, $2, $3::text::jsonb, $4)")
# The relay's wake-up in the same statement as the insert: one round trip, not two. $5: the
# channel of the relay to wake (null: the installation's channel, which every relay hears).
_INSERT_AND_NOTIFY = (f"WITH o AS ({_INSERT} RETURNING 1)"
                      " SELECT pg_notify(coalesce($5::text, current_schema() || '_outbox'), '')"
                      " FROM o")

# The stored body is the wire format: the relay publishes it as it is, with the message's
# properties read out of it by the database (no Envelope is built only to serialise it again).
_UNPUBLISHED = (
    "SELECT id, body::text AS body, body->>'id' AS event_id, body->>'type' AS type,"
    " body->>'correlation_id' AS correlation_id,"
    " (body->>'occurred_at')::timestamptz AS occurred_at,"
    " body->'payload'->>'to_state' AS to_state"
    " FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
)


def notify_channel(schema: str) -> str:
    """The NOTIFY channel that wakes every relay of the installation using `schema`."""
    return f"{schema}_outbox"


def own_channel() -> str:
    """A NOTIFY channel for one process's relay alone (unique; channels are per database, and
    at most 63 characters whatever the schema's name)."""
    return f"outbox_{uuid.uuid4().hex}"


class Outbox:
    def __init__(self, conn: asyncpg.Connection, wake: str | None = None):
        self.conn = conn
        # The channel a commit's NOTIFY goes to: the relay of the process that committed
        # (services/runtime.py), so that one commit does not wake every process's relay to
        # find nothing; None: the installation's channel (a Store with no relay of its own).
        self.wake = wake

    async def add(self, event: Envelope, *, notify: bool) -> None:
        """Store the event as its wire format (pydantic's JSON, cast to jsonb by the server);
        `notify`: wake the relay at commit."""
        args = (event.id, event.type, event.model_dump_json(), event.group_id)
        if notify:
            await self.conn.execute(_INSERT_AND_NOTIFY, *args, self.wake)
        else:
            await self.conn.execute(_INSERT, *args)

    async def unpublished(self, limit: int) -> list[asyncpg.Record]:
        """The oldest unpublished events, locked for this transaction (another relay skips
        them)."""
        return await self.conn.fetch(_UNPUBLISHED, limit)

    async def unroutable(self, outbox_id: int, error: str) -> None:
        await self.conn.execute("UPDATE outbox SET error = $2 WHERE id = $1", outbox_id, error)

    async def published(self, outbox_ids: list[int]) -> None:
        await self.conn.execute(
            "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", outbox_ids)
