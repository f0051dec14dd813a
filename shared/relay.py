"""The outbox relay: sends committed events to the broker, in order, at least once."""

from __future__ import annotations

import asyncio

import asyncpg
from aio_pika.exceptions import PublishError

from shared.bus import Bus, BrokerUnavailable, Outgoing
from shared.logging import get_logger
from shared.store.outbox import notify_channel
from shared.store.session import Store
from shared.topology import routing_key

log = get_logger(__name__)

# Longest one batch's confirms may take (tests/integration/test_network_cut.py).
PUBLISH_TIMEOUT_S = 30.0


def _outgoing(row) -> Outgoing:
    return Outgoing(body=row["body"].encode(), id=row["event_id"], type=row["type"],
                    correlation_id=row["correlation_id"], occurred_at=row["occurred_at"],
                    routing_key=routing_key(row["type"], {"to_state": row["to_state"]}))


class OutboxRelay:
    def __init__(self, store: Store, bus: Bus, schema: str, *, batch: int = 200,
                 idle_poll: float = 1.0):
        self.store = store
        self.pool = store.pool
        self.bus = bus
        # Woken by the installation's channel (commits of a Store with no relay) and by its
        # own (the commits of `store`, when its process gave it one): with every service in
        # a process of its own, a commit wakes one relay, not all of them. What a process
        # committed and did not publish before it died is published by another relay's
        # idle poll.
        self.channels = [notify_channel(schema)] + ([store.wake] if store.wake else [])
        self.batch = batch
        self.idle_poll = idle_poll
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._listener_conn: asyncpg.Connection | None = None

    async def start(self) -> None:
        self._listener_conn = await self.pool.acquire()
        for channel in self.channels:
            await self._listener_conn.add_listener(channel, self._on_notify)
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
                for channel in self.channels:
                    await conn.remove_listener(channel, self._on_notify)
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
            # Cleared before the flush, not after: a commit whose NOTIFY arrives while the
            # flush runs (too late for its rows to be seen) leaves the wake set, and the relay
            # goes round again instead of sleeping a whole idle poll on it.
            self._wake.clear()
            try:
                sent = await self.flush()
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise  # the relay itself is stopped
                # Something under it was cancelled (a lost connection's pending work): the
                # relay goes on.
                log.warning("outbox relay: a publish was cancelled, retrying")
                await asyncio.sleep(self.idle_poll)
                continue
            except Exception as exc:  # noqa: BLE001 - broker or database away: try again soon
                log.warning("outbox relay failed, retrying", error=str(exc))
                await asyncio.sleep(self.idle_poll)
                continue
            if sent < self.batch:
                try:
                    # Woken by NOTIFY at commit; the timeout catches a missed notification.
                    await asyncio.wait_for(self._wake.wait(), self.idle_poll)
                except TimeoutError:
                    pass

    async def flush(self) -> int:
        """Publish one batch of unpublished events; returns how many were handled."""
        async with self.store.transaction() as tx:
            rows = await tx.outbox.unpublished(self.batch)
            events = [_outgoing(row) for row in rows]
            # Confirms are awaited together: the frames still leave in outbox order. Bounded:
            # a publish into a connection the network silently dropped may wait for a confirm
            # that never comes, holding these rows locked; on time-out the transaction rolls
            # back and the batch is sent again (a second copy is ignored by the inboxes).
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                results = await asyncio.gather(*(self.bus.publish(e) for e in events),
                                               return_exceptions=True)
            for row, event, result in zip(rows, events, results):
                if isinstance(result, PublishError):
                    # Nobody is bound to this type: a wiring fault, recorded, not retried forever.
                    log.error("unroutable event", event_type=event.type, event_id=str(event.id))
                    await tx.outbox.unroutable(row["id"], f"unroutable: {result}")
                elif isinstance(result, asyncio.CancelledError):
                    # aiormq cancels the confirms pending on a connection it finds dead (a
                    # missed heartbeat). Raised as is, it ended the relay's task for good: the
                    # outbox stopped being published, silently (test_network_cut.py).
                    raise BrokerUnavailable("a publish was cut short: the broker connection "
                                            "was lost") from result
                elif isinstance(result, BaseException):
                    raise result
            if rows:
                await tx.outbox.published([r["id"] for r in rows])
            return len(rows)
