"""Live updates: each gateway replica's own feed queue hears every event and fans it out to
the operators' server-sent-event streams that replica serves."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import AMQPConnectionError, ChannelInvalidStateError
from aiohttp import web
from pydantic import ValidationError

from services.gateway.api import api
from services.gateway.broadcast import Broadcaster
from services.gateway.keys import LIVE
from shared.bus import Bus
from shared.events import Envelope
from shared.logging import get_logger
from shared.topology import EVERYTHING

log = get_logger(__name__)

# Each replica's live-feed queue hears every event, so every screen sees every event whichever
# replica serves it. It is exclusive and auto-delete (it goes with the replica's connection, so
# nothing grows while no gateway runs) and bounded (a replica that falls behind drops its
# oldest events, not the broker's memory).
BINDINGS = (EVERYTHING,)
QUEUE_LIMITS = {"x-max-length": 10_000, "x-overflow": "drop-head"}

QUEUE_PER_CLIENT = 1000
KEEP_ALIVE_S = 15.0
WAKE_S = 1.0


def replica_name() -> str:
    """This replica's part of its queue's name: readable in the broker's management pages
    (host and pid), unique even across hosts that reuse pids."""
    return f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


class LiveFeed:
    """This replica's own queue, heard without acknowledgements. It is a notification stream,
    bounded (drop-head) and lossy by design: a screen that was not open misses nothing it
    needed. So no ack per event, and an event is parsed only when a screen is watching. It
    hears every event of the pipeline, where acks and parsing are dear (docs/performance.md)."""

    def __init__(self, bus: Bus, broadcaster: Broadcaster):
        self.bus = bus
        self.broadcaster = broadcaster
        self._channel = None
        self._queue = None
        self._tag: str | None = None

    async def start(self) -> None:
        assert self.bus.connection
        self._channel = await self.bus.connection.channel()
        # Declared on a robust channel: after a reconnect aio-pika declares, binds and consumes
        # it again (the broker deleted it with the old connection).
        self._queue = await self._channel.declare_queue(
            self.bus.names.live_feed(replica_name()), exclusive=True, auto_delete=True,
            arguments=QUEUE_LIMITS)
        for key in BINDINGS:
            await self._queue.bind(self.bus.names.exchange, routing_key=key)
        self._tag = await self._queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if not self.broadcaster.clients:
            return
        try:
            event = Envelope.model_validate_json(message.body)
        except ValidationError as exc:
            log.warning("malformed event left out of the live feed", error=str(exc)[:500])
            return
        self.broadcaster.publish(event)

    async def stop_taking_work(self) -> None:
        if self._queue and self._tag:
            try:
                await self._queue.cancel(self._tag)
            except (ChannelInvalidStateError, AMQPConnectionError) as exc:
                # The broker went away and the channel is not back yet: nothing to cancel.
                log.warning("live feed: its channel was closed at stop", error=str(exc))
            self._tag = None

    def in_flight(self) -> list[asyncio.Task]:
        """Nothing is in flight: what was delivered was handed on already."""
        return []

    async def close(self) -> None:
        if self._channel and not self._channel.is_closed:
            await self._channel.close()

    def abandon(self) -> None:
        """Nothing is in flight: what was delivered was handed on already."""


async def start_live_feed(app: web.Application, bus: Bus) -> LiveFeed:
    feed = LiveFeed(bus, app[LIVE])
    await feed.start()
    return feed


@api.route("GET", "/v1/events", "Server-sent events: every event as it happens (?group=id to "
           "follow one group); the web UI's event-stream cookie is accepted too", auth="operator",
           role="viewer",
           tag="operator", query={"group": {"type": "string", "description": "a group id"}})
async def events_stream(request: web.Request) -> web.StreamResponse:
    group = request.query.get("group")
    broadcaster: Broadcaster = request.app[LIVE]
    queue: asyncio.Queue[Envelope] = asyncio.Queue(QUEUE_PER_CLIENT)
    broadcaster.clients.add(queue)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    idle = 0.0
    try:
        # Wake up every second to notice a screen that went away (aiohttp does not cancel the
        # handler), so a closed browser tab neither lingers nor holds up the gateway's shutdown.
        while request.transport is not None and not request.transport.is_closing():
            try:
                event = await asyncio.wait_for(queue.get(), timeout=WAKE_S)
            except TimeoutError:
                idle += WAKE_S
                if idle >= KEEP_ALIVE_S:
                    idle = 0.0
                    await response.write(b": keep-alive\n\n")
                continue
            idle = 0.0
            if group and str(event.group_id) != group:
                continue
            data = event.model_dump_json()
            await response.write(f"event: {event.type}\nid: {event.id}\ndata: {data}\n\n".encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        broadcaster.clients.discard(queue)
    return response
