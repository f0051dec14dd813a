"""Gateway replicas, each with its own live feed, against the real RabbitMQ: every screen sees
every event whichever replica serves it, the old shared queue is gone, and nothing is left
behind when the replicas stop."""

from __future__ import annotations

import asyncio
import json
import uuid

import aio_pika
import aiohttp
import pytest
from aio_pika.exceptions import ChannelNotFoundEntity
from aiormq.exceptions import ChannelLockedResource

from services.runtime import Host
from services.topology import topology
from shared.bus import Bus
from shared.events import CutoverCompleted, Envelope, VmMessageLogged
from shared.topology import Names
from tests.conftest import OPERATOR_TOKEN, eventually, free_port
from tests.service_process import ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]

EVENTS = 40


async def follow(url: str, seen: list[str], connected: asyncio.Event) -> None:
    """An operator's screen: the SSE stream of one replica, every event id it hears."""
    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(f"{url}/v1/events", headers=headers) as stream:
            assert stream.status == 200, await stream.text()
            connected.set()
            async for line in stream.content:
                if line.startswith(b"data: "):
                    seen.append(json.loads(line[6:])["id"])


async def ready(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/readyz") as answer:
                return answer.status == 200
    except aiohttp.ClientError:
        return False


async def queue_exists(settings, name: str) -> bool:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        try:
            await channel.declare_queue(name, passive=True)
        except ChannelNotFoundEntity:
            return False
        except ChannelLockedResource:
            return True  # another connection's exclusive queue: there, and not ours
        return True


async def test_two_gateway_processes_each_stream_every_event(settings, tmp_path):
    names = Names(settings.bus_prefix)
    # What an earlier version left: the shared live-feed queue, bound to every event.
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(names.exchange, aio_pika.ExchangeType.TOPIC,
                                                  durable=True)
        old = await channel.declare_queue(names.queue("gateway"), durable=True,
                                          arguments={"x-queue-type": "quorum"})
        await old.bind(exchange, "#")
    ports = [free_port(), free_port()]
    replicas = [ServiceProcess("gateway", settings, tmp_path / f"gateway-{port}.log",
                               gateway_port=str(port)) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    screens: list[asyncio.Task] = []
    bus = Bus(settings.amqp_url, names, settings.retry_delays, topology())
    try:
        for replica in replicas:
            replica.start()
        for url in urls:
            await eventually(lambda url=url: ready(url), 60, interval=0.2,
                             what=f"the gateway at {url} ready")
        seen: list[list[str]] = [[], []]
        connected = [asyncio.Event(), asyncio.Event()]
        screens = [asyncio.create_task(follow(url, seen[n], connected[n]))
                   for n, url in enumerate(urls)]
        await asyncio.wait_for(asyncio.gather(*(c.wait() for c in connected)), 20)
        assert not await queue_exists(settings, names.queue("gateway")), \
            "the old shared live-feed queue is still there"

        await bus.connect()
        group = uuid.uuid4()
        sent = []
        for n in range(EVENTS):
            # A log line, and a notification that no service handles (routed all the same).
            payload = (VmMessageLogged(message_id=n, level="info", text=f"line {n}")
                       if n % 2 else CutoverCompleted(run_id=f"run-{n}"))
            event = Envelope.new(payload, group_id=group, vm_id=uuid.uuid4())
            await bus.publish(event)
            sent.append(str(event.id))

        for n, url in enumerate(urls):
            await eventually(lambda n=n: set(sent) <= set(seen[n]), 20,
                             what=f"every event on the screen of {url} (saw {len(seen[n])})")
            assert sorted(seen[n]) == sorted(sent), f"{url} streamed an event twice"
    finally:
        for screen in screens:
            screen.cancel()
        await asyncio.gather(*screens, return_exceptions=True)
        await bus.close()
        for replica in replicas:
            replica.stop()
    for replica in replicas:
        assert replica.process.returncode == 0, replica.log_text()[-2000:]


async def test_a_replicas_own_feed_queue_goes_with_it(settings):
    host = Host(settings, [], gateway=True)
    await host.start()
    try:
        [feed] = host.consumers
        name = feed._queue.name
        assert name.startswith(f"{settings.bus_prefix}.gateway.live.")
        assert await queue_exists(settings, name)
        # The queue that keeps every event routable holds none of them.
        assert await queue_exists(settings, Names(settings.bus_prefix).unheard)
    finally:
        await host.stop(timeout=5)
    assert not await queue_exists(settings, name), "the replica's feed queue outlived it"
