"""What a service is: a router of handlers, and the context each handler runs in.

A handler is `async def handler(event: SomePayload, ctx: Context)`: its first parameter is the
event's payload model, validated once when the message arrived (shared/bus.py); the envelope's
ids are on the context. Handlers never import aio_pika, aiohttp or asyncpg.

A handler's last transaction is `ctx.transaction()`, which records the event in the inbox in
that same transaction, so a redelivered event is recognised. Earlier ones
(`ctx.guarded_transaction()`) do not record it, so what they do must be guarded by the VM's
state: done twice, it changes nothing.
"""

from __future__ import annotations

import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Generic, TypeVar

import structlog

from shared import metrics
from shared.cutover_adapters import CutoverAdapters
from shared.events import Envelope, Payload
from shared.logging import get_logger
from shared.providers.base import Provider
from shared.settings import Settings
from shared.store.session import AlreadyProcessed, Store, Tx
from shared.topology import STATE_CHANGED, Topology, routing_key

log = get_logger(__name__)

P = TypeVar("P", bound=Payload)


@dataclass
class Deps:
    """The named dependencies a handler may use; the host (services/runtime.py) provides them."""

    store: Store
    settings: Settings
    provider: Provider | None = None
    topology: Topology | None = None
    # The cutover's reach into the world: SSH to the machines, DNS, the prober.
    cutover: CutoverAdapters | None = None

    def __post_init__(self) -> None:
        if self.cutover is None:
            self.cutover = CutoverAdapters.from_settings(self.settings)


class Context:
    def __init__(self, service: str, envelope: Envelope, deps: Deps):
        self.service = service
        self.envelope = envelope
        self.deps = deps
        self.store = deps.store
        self.settings = deps.settings
        self.claimed = False

    @property
    def group_id(self) -> uuid.UUID:
        return self.envelope.group_id

    @property
    def vm_id(self) -> uuid.UUID | None:
        return self.envelope.vm_id

    @property
    def provider(self) -> Provider:
        if self.deps.provider is None:
            raise RuntimeError(f"{self.service} was started without a provider")
        return self.deps.provider

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """The handler's final transaction: it also marks the event processed."""
        async with self.store.transaction(cause=self.envelope) as tx:
            await tx.claim(self.service, self.envelope.id)
            self.claimed = True
            yield tx

    def guarded_transaction(self):
        """A transaction before the final one: it does not mark the event processed, so its
        work must be guarded by state (done again on a redelivery, it changes nothing)."""
        return self.store.transaction(cause=self.envelope)


HandlerFn = Callable[[Any, Context], Awaitable[None]]


@dataclass(frozen=True)
class Subscription(Generic[P]):
    payload: type[P]
    handler: HandlerFn
    # For vm.state_changed: the one target state the handler acts on (its binding key).
    to_state: str | None = None

    @property
    def binding_key(self) -> str:
        if self.payload.type == STATE_CHANGED:
            return routing_key(STATE_CHANGED, {"to_state": self.to_state})
        return self.payload.type


class Router:
    """All of one service's subscriptions, in one place: the queue's bindings come from here."""

    def __init__(self, service: str):
        self.service = service
        self.subscriptions: dict[str, Subscription] = {}
        # What the service does once when its host starts, after it consumes (catching up on
        # work a killed process left, which no event will announce again).
        self.start_hooks: list[Callable[[Deps], Awaitable[None]]] = []

    def on_start(self, fn: Callable[[Deps], Awaitable[None]]) -> Callable[[Deps], Awaitable[None]]:
        """Register `fn(deps)` to run when the service starts."""
        self.start_hooks.append(fn)
        return fn

    def on(self, payload: type[P], *, to_state: str | None = None,
           ) -> Callable[[HandlerFn], HandlerFn]:
        """Register the handler of `payload`'s event type (one per type and service); a state
        change is heard for one target state only."""
        if (payload.type == STATE_CHANGED) != (to_state is not None):
            raise ValueError(f"{self.service}: {payload.type}: to_state goes with "
                             f"{STATE_CHANGED} and only with it")

        def register(fn: HandlerFn) -> HandlerFn:
            if payload.type in self.subscriptions:
                raise ValueError(f"{self.service} handles {payload.type} already, in "
                                 f"{self.subscriptions[payload.type].handler.__name__}")
            self.subscriptions[payload.type] = Subscription(payload, fn, to_state)
            return fn

        return register

    @property
    def binding_keys(self) -> tuple[str, ...]:
        return tuple(s.binding_key for s in self.subscriptions.values())

    async def dispatch(self, envelope: Envelope, payload: Payload, deps: Deps) -> None:
        """Run the handler of a delivered event, once per event id."""
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            service=self.service, event_type=envelope.type, event_id=str(envelope.id),
            group_id=str(envelope.group_id),
            vm_id=str(envelope.vm_id) if envelope.vm_id else None,
            correlation_id=str(envelope.correlation_id),
        )
        subscription = self.subscriptions.get(envelope.type)
        if subscription is None or (subscription.to_state is not None
                                    and getattr(payload, "to_state", None)
                                    != subscription.to_state):
            log.warning("no handler for event; ignored")
            return
        if await deps.store.processed(self.service, envelope.id):
            metrics.EVENTS_DUPLICATE.labels(self.service, envelope.type).inc()
            log.info("duplicate event ignored")
            return
        ctx = Context(self.service, envelope, deps)
        started = time.perf_counter()
        outcome = None  # stays None when cancelled (a stop or a kill), which is not counted
        try:
            await subscription.handler(payload, ctx)
            if not ctx.claimed:
                # Nothing of the handler's had to commit with the claim: one statement on its
                # own, not BEGIN, claim, COMMIT (three round trips).
                await deps.store.claim(self.service, envelope.id)
            outcome = "handled"
        except AlreadyProcessed:
            outcome = "duplicate"
            log.info("duplicate event ignored")
        except Exception:
            outcome = "failed"
            raise
        finally:
            if outcome:
                metrics.record_handler(self.service, envelope.type,
                                       time.perf_counter() - started, outcome)
