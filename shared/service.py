"""What a service is: a router of handlers, and the context each handler runs in.

Handlers are `async def handler(event, ctx)`. They never import aio_pika or aiohttp. A
handler's last transaction is `ctx.transaction()`, which records the event in the inbox in that
same transaction, so a redelivered event is recognised; earlier transactions (`ctx.step()`)
must be guarded by the VM's state, so that doing them twice changes nothing.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

import structlog

from shared import metrics
from shared.events import Envelope
from shared.logging import get_logger
from shared.providers.base import Provider
from shared.settings import Settings
from shared.store.tx import AlreadyProcessed, Store, Tx
from shared.topology import SUBSCRIPTIONS, handled_types

log = get_logger(__name__)


@dataclass
class Deps:
    """The named dependencies a handler may use."""

    store: Store
    settings: Settings
    provider: Provider | None = None


class Context:
    def __init__(self, service: str, event: Envelope, deps: Deps):
        self.service = service
        self.event = event
        self.store = deps.store
        self.settings = deps.settings
        self._provider = deps.provider
        self.claimed = False

    @property
    def provider(self) -> Provider:
        if self._provider is None:
            raise RuntimeError(f"{self.service} was started without a provider")
        return self._provider

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """The handler's final transaction: it also marks the event processed."""
        async with self.store.transaction(cause=self.event) as tx:
            await tx.claim(self.service, self.event.id)
            self.claimed = True
            yield tx

    def step(self):
        """An intermediate transaction (state-guarded; no inbox mark)."""
        return self.store.transaction(cause=self.event)


HandlerFn = Callable[[Envelope, Context], Awaitable[None]]


class Router:
    """All of one service's subscriptions, in one place."""

    def __init__(self, service: str):
        if service not in SUBSCRIPTIONS:
            raise ValueError(f"{service} has no entry in shared.topology.SUBSCRIPTIONS")
        self.service = service
        self.handlers: dict[str, HandlerFn] = {}

    def on(self, event_type: str) -> Callable[[HandlerFn], HandlerFn]:
        def register(fn: HandlerFn) -> HandlerFn:
            if event_type not in handled_types(self.service) and "#" not in SUBSCRIPTIONS[self.service]:
                raise ValueError(f"{self.service} is not bound to {event_type}")
            self.handlers[event_type] = fn
            return fn

        return register

    async def dispatch(self, event: Envelope, deps: Deps) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            service=self.service, event_type=event.type, event_id=str(event.id),
            group_id=str(event.group_id), vm_id=str(event.vm_id) if event.vm_id else None,
            correlation_id=str(event.correlation_id),
        )
        handler = self.handlers.get(event.type)
        if handler is None:
            log.warning("no handler for event; ignored")
            return
        if await deps.store.processed(self.service, event.id):
            metrics.EVENTS_DUPLICATE.labels(self.service, event.type).inc()
            log.info("duplicate event ignored")
            return
        ctx = Context(self.service, event, deps)
        started = time.perf_counter()
        outcome = None  # stays None when cancelled (a stop or a kill), which is not counted
        try:
            await handler(event, ctx)
            if not ctx.claimed:
                # Nothing of the handler's had to commit with the claim: one statement on its
                # own, not BEGIN, claim, COMMIT (three round trips).
                await deps.store.claim(self.service, event.id)
            outcome = "handled"
        except AlreadyProcessed:
            outcome = "duplicate"
            log.info("duplicate event ignored")
        except Exception:
            outcome = "failed"
            raise
        finally:
            if outcome:
                metrics.record_handler(self.service, event.type, time.perf_counter() - started,
                                       outcome)
