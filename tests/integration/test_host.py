"""A process's lifecycle (services/runtime.Host) against the real RabbitMQ and PostgreSQL: a
start that fails half-way leaves nothing open; a stop stops every consumer's intake before it
waits for the handlers in flight, and closes the provider the host made; a stop on a network
that dropped every packet ends within its bounds instead of waiting for ever."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
import uuid
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import pytest

from services import runtime
from services.runtime import Host, router_of
from shared import events as ev
from shared.events import Envelope
from tests.conftest import eventually
from tests.integration.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]


async def test_a_start_that_fails_half_way_closes_what_it_opened(settings):
    """With the gateway's port taken, start fails after the pool, the broker connection, the
    relay and a provider were opened: each is closed again, and the error is the port's."""
    with socket.socket() as taken:
        taken.bind((settings.gateway_host, settings.gateway_port))
        taken.listen()
        host = Host(settings.model_copy(update={"provider": "sim"}), ["creator"], gateway=True)
        with pytest.raises(OSError, match="address already in use"):
            await host.start()
    assert host.pool is not None and host.pool._closed  # asyncpg's own flag
    assert host.bus is not None and host.bus.connection.is_closed
    assert host.relay is not None and host.relay._task.done()
    assert host.provider is not None and host.provider._children == {}


async def test_stop_takes_no_new_work_anywhere_before_waiting_for_work_in_flight(settings,
                                                                                  monkeypatch):
    """Two services each hold a message in flight when stop begins: both stop taking work
    before either handler is let go, a message published then stays queued, and stop returns
    once both handlers finished."""
    started = {"archiver": asyncio.Event(), "creator": asyncio.Event()}
    release = asyncio.Event()
    finished: list[str] = []
    for service, event_type in (("archiver", "group.submitted"), ("creator", "group.archived")):
        subscriptions = router_of(service).subscriptions

        async def slow(event, ctx, service=service):
            started[service].set()
            await release.wait()
            finished.append(service)
        monkeypatch.setitem(subscriptions, event_type,
                            dataclasses.replace(subscriptions[event_type], handler=slow))
    host = Host(settings, ["archiver", "creator"])
    await host.start()
    consumers = list(host.consumers)
    group_id = uuid.uuid4()
    await host.bus.publish(Envelope.new(ev.GroupSubmitted(group_name="a", vm_count=1),
                                        group_id=group_id))
    await host.bus.publish(Envelope.new(ev.GroupArchived(), group_id=group_id))
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started.values())), 20)
    stopping = asyncio.create_task(host.stop(timeout=20))
    await eventually(lambda: not any(c.taking_work for c in consumers),
                     what="every consumer to stop taking work")
    assert finished == [] and not stopping.done()
    await host.bus.publish(Envelope.new(ev.GroupSubmitted(group_name="b", vm_count=1),
                                        group_id=group_id))
    release.set()
    await asyncio.wait_for(stopping, 30)
    assert sorted(finished) == ["archiver", "creator"]
    assert await queued(settings, host.bus.names.queue("archiver")) == 1


async def queued(settings, queue: str) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count


async def test_a_stop_on_a_silent_network_ends_within_its_bounds(settings, monkeypatch):
    """The database and the broker blackholed (tests/integration/tcp_proxy.py: packets
    dropped, nothing reset): each step of the stop that needs an answer (the consumers' cancel,
    the channels' close, the relay's, the broker connection's, the pool's) is dropped after
    CLOSE_TIMEOUT_S instead of waiting for ever, and the pool is terminated. Without the bound
    asyncpg's own close waits for the server to end each connection: shown first, on a pool of
    the test's own."""
    monkeypatch.setattr(runtime, "CLOSE_TIMEOUT_S", 1.0)
    db, mq = urlsplit(settings.database_url), urlsplit(settings.amqp_url)
    store, broker = TcpProxy(db.hostname, db.port), TcpProxy(mq.hostname, mq.port)
    await store.start()
    await broker.start()
    relayed = settings.model_copy(update={"database_url": store.url(settings.database_url),
                                          "amqp_url": broker.url(settings.amqp_url)})
    try:
        # The cause: an unbounded pool close on a silenced connection does not end.
        pool = await asyncpg.create_pool(relayed.database_url, min_size=2, max_size=2)
        store.blackhole()
        assert store.silenced >= 2
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(pool.close(), 3)
        await store.restore()

        host = Host(relayed, ["coordinator", "archiver"], gateway=True)
        await host.start()
        pool = host.pool
        store.blackhole()
        broker.blackhole()
        assert store.silenced >= 1 and broker.silenced >= 1
        began = time.monotonic()
        await asyncio.wait_for(host.stop(), 60)
        took = time.monotonic() - began
        # Bounded steps, each 1 s here: the cancels (together), three channels, the relay, the
        # broker, the pool; a stop that waited for an answer would not have ended at all.
        assert took < 15, took
        assert pool._closed  # asyncpg's own flag: terminated
    finally:
        await store.cut()
        await broker.cut()


async def test_a_process_pool_is_sized_by_its_services_unless_capped(settings):
    """Each process opens its own pool; FERRY_DATABASE_POOL_MAX caps it, so that many processes
    fit under PostgreSQL's max_connections (two replicas of everything need 104 of 100)."""
    sizes = []
    for cap in (0, 5):
        host = Host(settings.model_copy(update={"provider": "sim", "database_pool_max": cap}),
                    ["creator", "configurator"], gateway=True)
        await host.start()
        try:
            sizes.append(host.pool.get_max_size())
        finally:
            await host.stop(timeout=5)
    assert sizes == [4 + 2 * 2 + 12, 5]


def test_a_pool_too_small_for_the_relay_is_refused_with_the_setting_named(settings):
    with pytest.raises(ValueError, match="FERRY_DATABASE_POOL_MAX=2: 0 .* or at least 3"):
        settings.model_validate({**settings.model_dump(), "database_pool_max": 2})
