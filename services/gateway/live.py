"""Live updates: the gateway's feed queue hears every event and fans it out to the operators'
server-sent-event streams."""

from __future__ import annotations

import asyncio
from functools import partial

from aiohttp import web

from services.gateway.api import api
from services.gateway.auth import require_operator_or_events_cookie
from services.gateway.keys import LIVE
from shared.bus import Bus, Consumer
from shared.events import Envelope

QUEUE_PER_CLIENT = 1000
KEEP_ALIVE_S = 15.0
WAKE_S = 1.0


class Broadcaster:
    def __init__(self) -> None:
        self.clients: set[asyncio.Queue[Envelope]] = set()

    def publish(self, event: Envelope) -> None:
        for queue in self.clients:
            if queue.full():
                queue.get_nowait()  # a slow screen loses its oldest update, not the gateway
            queue.put_nowait(event)


async def _feed(broadcaster: Broadcaster, event: Envelope) -> None:
    broadcaster.publish(event)


async def start_live_feed(app: web.Application, bus: Bus, prefetch: int) -> Consumer:
    consumer = Consumer(bus, "gateway", partial(_feed, app[LIVE]), prefetch)
    await consumer.start()
    return consumer


@api.route("GET", "/v1/events", "Server-sent events: every event as it happens (?group=id to "
           "follow one group); the web UI's event-stream cookie is accepted too", auth="operator",
           tag="operator", query={"group": {"type": "string", "description": "a group id"}})
async def events_stream(request: web.Request) -> web.StreamResponse:
    require_operator_or_events_cookie(request)
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
