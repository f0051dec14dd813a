"""The outbox relay: sends committed events to the broker, in order, at least once."""

from __future__ import annotations

import asyncio

import asyncpg
from aio_pika.exceptions import PublishError

from shared.bus import Bus, Outgoing
from shared.topology import routing_key
from shared.logging import get_logger

log = get_logger(__name__)


_BATCH = (
    "SELECT id, body::text AS body, body->>'id' AS event_id, body->>'type' AS type,"
    " body->>'correlation_id' AS correlation_id,"
    " (body->>'occurred_at')::timestamptz AS occurred_at,"
    " body->'payload'->>'to_state' AS to_state"
    " FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
)


def _outgoing(row) -> Outgoing:
    return Outgoing(body=row["body"].encode(), id=row["event_id"], type=row["type"],
                    correlation_id=row["correlation_id"], occurred_at=row["occurred_at"],
                    routing_key=routing_key(row["type"], {"to_state": row["to_state"]}))


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, bus: Bus, schema: str, *, batch: int = 200,
                 idle_poll: float = 1.0):
        self.pool = pool
        self.bus = bus
        self.channel = f"{schema}_outbox"
        self.batch = batch
        self.idle_poll = idle_poll
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._listener_conn: asyncpg.Connection | None = None

    async def start(self) -> None:
        self._listener_conn = await self.pool.acquire()
        await self._listener_conn.add_listener(self.channel, self._on_notify)
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    def _on_notify(self, *_args) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._listener_conn:
            conn, self._listener_conn = self._listener_conn, None
            try:
                await conn.remove_listener(self.channel, self._on_notify)
                await self.pool.release(conn)
            except (asyncpg.InterfaceError, asyncpg.PostgresError, OSError) as exc:
                # The database went away while the relay ran: that connection is gone already.
                log.warning("outbox relay: its listening connection was lost", error=str(exc))

    def abandon(self) -> None:
        """Stop at once (a kill): what was not published stays in the outbox for the next relay."""
        if self._task:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            try:
                sent = await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - broker or database away: try again soon
                log.warning("outbox relay failed, retrying", error=str(exc))
                await asyncio.sleep(self.idle_poll)
                continue
            if sent < self.batch:
                self._wake.clear()
                try:
                    # Woken by NOTIFY at commit; the timeout catches a missed notification.
                    await asyncio.wait_for(self._wake.wait(), self.idle_poll)
                except TimeoutError:
                    pass

    async def flush(self) -> int:
        """Publish one batch of unpublished events; returns how many were handled."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_BATCH, self.batch)
            # The stored body is the wire format (Tx.publish wrote the envelope's JSON): it is
            # published as it is, with the properties read out of it by the database.
            events = [_outgoing(row) for row in rows]
            # Confirms are awaited together: the frames still leave in outbox order.
            results = await asyncio.gather(*(self.bus.publish(e) for e in events),
                                           return_exceptions=True)
            for row, event, result in zip(rows, events, results):
                if isinstance(result, PublishError):
                    # Nobody is bound to this type: a wiring fault, recorded, not retried forever.
                    log.error("unroutable event", event_type=event.type, event_id=str(event.id))
                    await conn.execute("UPDATE outbox SET error = $2 WHERE id = $1",
                                       row["id"], f"unroutable: {result}")
                elif isinstance(result, BaseException):
                    raise result
            if rows:
                await conn.execute(
                    "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])",
                    [r["id"] for r in rows],
                )
            return len(rows)

