"""Fan-out of the live feed's events to each operator screen watching (server-sent events)."""

from __future__ import annotations

import asyncio

from shared.events import Envelope


class Broadcaster:
    def __init__(self) -> None:
        self.clients: set[asyncio.Queue[Envelope]] = set()

    def publish(self, event: Envelope) -> None:
        for queue in self.clients:
            if queue.full():
                queue.get_nowait()  # a slow screen loses its oldest update, not the gateway
            queue.put_nowait(event)
