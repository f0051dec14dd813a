"""RabbitMQ through aio-pika: topology, confirmed mandatory publishing, and consumers that
retry a failing handler with back-off before dead-lettering its message."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Awaitable, Callable

import aio_pika
from aio_pika.abc import (
    AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractQueue,
    AbstractRobustConnection,
)
from pydantic import ValidationError

from shared.events import Envelope, Payload
from shared.logging import get_logger
from shared.topology import EVERYTHING, RETIRED_SERVICES, Names, Topology, routing_key

log = get_logger(__name__)

# A delivered event, validated once at the door: its envelope and its payload's model.
Handler = Callable[[Envelope, Payload], Awaitable[None]]

ATTEMPT_HEADER = "x-ferry-attempt"
# How many times an operator replayed the message from the DLQ; it travels with every retry.
REPLAYS_HEADER = "x-ferry-replays"


# AMQP heartbeat the client asks for, in seconds. A connection that the network silently
# dropped (packets lost, nothing reset) is only found dead when heartbeats stop arriving:
# aiormq gives up after three missed ones ((5 + 1) x 3 = 18 s), where the server's 60 s default
# left a consumer deaf for three minutes (tests/integration/test_network_cut.py).
HEARTBEAT_S = 5
# How long one attempt to (re)connect may take before the robust connection tries again: a
# connection opened into a silent network would otherwise wait aiormq's 60 s.
CONNECT_TIMEOUT_S = 10
# How many retry holding queues an earlier version may have declared for a retired service.
RETIRED_RETRY_QUEUES = 5


class Bus:
    """One connection, one confirming publisher channel, and the declared topology."""

    def __init__(self, url: str, names: Names, retry_delays: tuple[float, ...],
                 topology: Topology):
        self.url = url
        self.names = names
        self.retry_delays = retry_delays
        self.topology = topology
        self.connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self.exchange: AbstractExchange | None = None

    async def connect(self) -> None:
        self.connection = await aio_pika.connect_robust(
            self.url, heartbeat=HEARTBEAT_S, timeout=CONNECT_TIMEOUT_S,
            client_properties={"connection_name": f"ferryman:{self.names.prefix}"})
        self._channel = await self.connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self.exchange = await self._channel.declare_exchange(
            self.names.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        # Every process declares the whole topology, so an event published before its
        # consumer first ran is still routed (durable queues keep it).
        for service in self.topology.services:
            await self.declare_service(service)
        await self._declare_unheard()
        await self._delete_retired()

    async def _declare_unheard(self) -> None:
        """Every event reaches at least this queue, which drops it at once (max length 0): an
        event no service handles is a notification for whoever listens, not an error."""
        assert self._channel and self.exchange
        queue = await self._channel.declare_queue(
            self.names.unheard, durable=True,
            arguments={"x-max-length": 0, "x-overflow": "drop-head"})
        await queue.bind(self.exchange, routing_key=EVERYTHING)

    async def _delete_retired(self) -> None:
        """Delete the queues of earlier versions (RETIRED_SERVICES): left alone, the old shared
        live-feed queue would keep taking a copy of every event. Deleting a queue that is not
        there is no error in RabbitMQ, so every process does it on every start."""
        assert self._channel
        for service in RETIRED_SERVICES:
            queues = [self.names.queue(service), self.names.dead_letters(service)]
            queues += [self.names.retry(service, n)
                       for n in range(1, max(RETIRED_RETRY_QUEUES, len(self.retry_delays)) + 1)]
            for queue in queues:
                await self._channel.queue_delete(queue)

    async def declare_service(self, service: str) -> AbstractQueue:
        """The service's quorum queue and bindings, its retry holding queues and its DLQ."""
        assert self._channel and self.exchange
        queue_name = self.names.queue(service)
        queue = await self._channel.declare_queue(
            queue_name, durable=True,
            arguments={"x-queue-type": "quorum", **self.topology.queue_limits.get(service, {})},
        )
        for key in self.topology.bindings[service]:
            await queue.bind(self.exchange, routing_key=key)
        for attempt, delay in enumerate(self.retry_delays, start=1):
            # One holding queue per attempt, each with one TTL, so a short delay never waits
            # behind a long one; expired messages go back to the service's queue.
            await self._channel.declare_queue(
                self.names.retry(service, attempt), durable=True,
                arguments={
                    "x-message-ttl": int(delay * 1000),
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": queue_name,
                },
            )
        await self._channel.declare_queue(
            self.names.dead_letters(service), durable=True, arguments={"x-queue-type": "quorum"}
        )
        return queue

    async def publish(self, event: Envelope | Outgoing) -> None:
        """Publish and wait for the broker's confirm; an unroutable event raises PublishError."""
        assert self.exchange
        out = event if isinstance(event, Outgoing) else Outgoing.of(event)
        await self.exchange.publish(_message(out), routing_key=out.routing_key, mandatory=True)

    async def send_to_queue(self, queue: str, body: bytes, headers: dict, source: AbstractIncomingMessage | None = None) -> None:
        """Put a message straight onto one queue (retry, dead-letter and replay go this way)."""
        assert self._channel
        message = aio_pika.Message(
            body=body, headers=headers, content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=source.message_id if source else None,
            type=source.type if source else None,
        )
        await self._channel.default_exchange.publish(message, routing_key=queue, mandatory=True)

    async def ping(self) -> None:
        """A round trip to the broker (/readyz): open a channel and close it. Raises
        BrokerUnavailable while the connection is down (it reconnects by itself)."""
        if self.connection is None or self.connection.is_closed:
            raise BrokerUnavailable("not connected to the broker")
        channel = await _channel(self)
        await channel.close()

    async def close(self) -> None:
        if self.connection and not self.connection.is_closed:
            await self.connection.close()


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An event as it goes on the wire: its JSON body and what the message's properties and
    routing key are made of. The relay builds it from the outbox row as stored (the body is
    already the wire format), without validating an Envelope only to serialise it again."""

    body: bytes
    id: str
    type: str
    correlation_id: str
    occurred_at: datetime
    routing_key: str

    @classmethod
    def of(cls, event: Envelope) -> Outgoing:
        return cls(body=event.model_dump_json().encode(), id=str(event.id), type=event.type,
                   correlation_id=str(event.correlation_id), occurred_at=event.occurred_at,
                   routing_key=routing_key(event.type, event.payload))


def _message(out: Outgoing) -> aio_pika.Message:
    return aio_pika.Message(
        body=out.body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=out.id,
        correlation_id=out.correlation_id,
        type=out.type,
        timestamp=out.occurred_at,
        headers={ATTEMPT_HEADER: 0},
    )


@dataclass
class Consumer:
    """Feeds one service's queue to its handler; acks only after the handler returned."""

    bus: Bus
    service: str
    handle: Handler
    prefetch: int = 16

    def __post_init__(self) -> None:
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._in_flight: set[asyncio.Task] = set()

    async def start(self) -> None:
        assert self.bus.connection
        self._channel = await self.bus.connection.channel()
        await self._channel.set_qos(prefetch_count=self.prefetch)
        self._queue = await self._channel.get_queue(self.bus.names.queue(self.service))
        self._tag = await self._queue.consume(self._on_message)

    @property
    def taking_work(self) -> bool:
        """Whether the broker may still hand this consumer messages (False once stop() has
        had its cancel confirmed)."""
        return self._tag is not None

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work, let in-flight handlers finish (or time out), close the channel.
        (A host with several consumers does these steps for all of them together.)"""
        await self.stop_taking_work()
        if self._in_flight:
            await asyncio.wait(self.in_flight(), timeout=timeout)
        await self.close()

    async def stop_taking_work(self) -> None:
        """No new message is delivered; those in flight go on."""
        if self._queue and self._tag:
            await self._queue.cancel(self._tag)
            self._tag = None

    def in_flight(self) -> list[asyncio.Task]:
        return list(self._in_flight)

    async def close(self) -> None:
        """Close the channel: what is still unacked goes back to the queue."""
        if self._channel and not self._channel.is_closed:
            await self._channel.close()

    def abandon(self) -> None:
        """Cancel in-flight handlers without acking: the broker will redeliver them."""
        for task in list(self._in_flight):
            task.cancel()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task:
            self._in_flight.add(task)
        try:
            await self._process(message)
        finally:
            if task:
                self._in_flight.discard(task)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        try:
            event = Envelope.model_validate_json(message.body)
            payload = event.typed()
        except (ValidationError, KeyError, ValueError) as exc:
            # A message that can never be understood goes straight to the dead letters.
            await self._dead_letter(message, f"malformed event: {exc}")
            return
        try:
            await self.handle(event, payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every handler failure is retried or parked
            await self._retry_or_dead_letter(message, event, exc)
            return
        await message.ack()

    async def _retry_or_dead_letter(self, message: AbstractIncomingMessage, event: Envelope,
                                    exc: Exception) -> None:
        attempt = int((message.headers or {}).get(ATTEMPT_HEADER, 0)) + 1
        error = f"{type(exc).__name__}: {exc}"
        if attempt <= len(self.bus.retry_delays):
            log.warning("handler failed, will retry", attempt=attempt, error=error)
            await self.bus.send_to_queue(
                self.bus.names.retry(self.service, attempt), message.body,
                {ATTEMPT_HEADER: attempt, "x-ferry-last-error": error[:1000],
                 REPLAYS_HEADER: _replays(message)}, message,
            )
            await message.ack()
        else:
            log.error("handler failed for good, dead-lettered", attempts=attempt, error=error)
            await self._dead_letter(message, error, attempts=attempt)

    async def _dead_letter(self, message: AbstractIncomingMessage, error: str,
                           attempts: int = 0) -> None:
        headers = {
            "x-ferry-error": error[:2000],
            "x-ferry-attempts": attempts,
            REPLAYS_HEADER: _replays(message),
            "x-ferry-routing-key": message.routing_key or "",
            "x-ferry-failed-at": datetime.now(timezone.utc).isoformat(),
        }
        await self.bus.send_to_queue(self.bus.names.dead_letters(self.service), message.body,
                                     headers, message)
        await message.ack()


class BrokerUnavailable(ConnectionError):
    """The broker cannot be reached just now (the connection is down and reconnecting)."""


async def _channel(bus: Bus) -> AbstractChannel:
    assert bus.connection
    try:
        return await bus.connection.channel()
    except RuntimeError as exc:  # aiormq's "<Connection ...> closed" while it reconnects
        raise BrokerUnavailable(f"the broker is unavailable: {exc}") from None


async def dead_letters(bus: Bus, service: str, limit: int = 100) -> list[dict]:
    """Read the dead letters of a service without removing them."""
    channel = await _channel(bus)
    try:
        queue = await channel.get_queue(bus.names.dead_letters(service))
        found = []
        for _ in range(limit):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            found.append(_describe(message))
        # Closing the channel returns the unacked messages to the queue.
        return found
    finally:
        await channel.close()


def _replays(message: AbstractIncomingMessage) -> int:
    return int((message.headers or {}).get(REPLAYS_HEADER, 0))


async def replay_dead_letters(bus: Bus, service: str, event_id: str | None = None) -> int:
    """Move dead letters (all, or the one with `event_id`) back to the service's queue, each
    once: only the messages in the DLQ when the replay starts are read, so one that fails
    again and comes back behind them is not replayed again by the same call."""
    channel = await _channel(bus)
    moved = 0
    try:
        queue = await channel.get_queue(bus.names.dead_letters(service))
        for _ in range(queue.declaration_result.message_count):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            if event_id and message.message_id != event_id:
                continue  # unacked: back in the DLQ, in its place, when the channel closes
            await bus.send_to_queue(bus.names.queue(service), message.body,
                                    {ATTEMPT_HEADER: 0, REPLAYS_HEADER: _replays(message) + 1},
                                    message)
            await message.ack()
            moved += 1
    finally:
        await channel.close()
    return moved


def _describe(message: AbstractIncomingMessage) -> dict:
    headers = message.headers or {}
    try:
        body = json.loads(message.body)
    except ValueError:
        body = message.body.decode(errors="replace")
    return {
        "message_id": message.message_id,
        "type": message.type,
        "error": headers.get("x-ferry-error"),
        "attempts": headers.get("x-ferry-attempts"),
        "replays": headers.get(REPLAYS_HEADER, 0),
        "failed_at": headers.get("x-ferry-failed-at"),
        "body": body,
    }
