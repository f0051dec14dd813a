"""The bus against the real RabbitMQ: retries, dead letters, replay, graceful stop."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from shared.bus import Bus, Consumer, Outgoing, dead_letters, replay_dead_letters
from shared.events import Envelope, GroupSubmitted
from shared.relay import OutboxRelay
from shared.store.db import connect, open_pool
from shared.store.outbox import notify_channel, own_channel
from shared.store.session import Store
from services.topology import topology
from shared.topology import Names
from tests.conftest import eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]


@pytest.fixture
async def bus(settings):
    bus = Bus(settings.amqp_url, Names(settings.bus_prefix), settings.retry_delays,
              topology())
    await bus.connect()
    yield bus
    await bus.close()


def submitted() -> Envelope:
    return Envelope.new(GroupSubmitted(group_name="shop", vm_count=1), group_id=uuid.uuid4())


async def test_a_failing_handler_is_retried_then_dead_lettered_and_can_be_replayed(bus):
    """A handler that keeps failing gets 1 + len(retry_delays) attempts, then its message is in
    the service's DLQ with the error; a replay hands it to the (now healthy) handler."""
    attempts: list[uuid.UUID] = []
    healthy = asyncio.Event()

    async def handler(event: Envelope, payload) -> None:
        attempts.append(event.id)
        if not healthy.is_set():
            raise RuntimeError("archive store is full")

    consumer = Consumer(bus, "archiver", handler)
    await consumer.start()
    event = submitted()
    await bus.publish(event)

    async def parked():
        return await dead_letters(bus, "archiver")
    letters = await eventually(parked, what="a dead letter")
    assert len(attempts) == 1 + len(bus.retry_delays)
    assert letters[0]["message_id"] == str(event.id)
    assert letters[0]["error"] == "RuntimeError: archive store is full"
    assert letters[0]["type"] == "group.submitted"

    healthy.set()
    assert await replay_dead_letters(bus, "archiver") == 1
    await eventually(lambda: len(attempts) == 2 + len(bus.retry_delays),
                     what="the replayed delivery")
    assert await dead_letters(bus, "archiver") == []
    await consumer.stop()


async def test_a_poison_message_goes_straight_to_the_dead_letters(bus):
    """A message that is not an event is dead-lettered at once, never handed to the handler."""
    handled = []

    async def handler(event, payload):
        handled.append(event)

    consumer = Consumer(bus, "creator", handler)
    await consumer.start()
    await bus.send_to_queue(bus.names.queue("creator"), b'{"not": "an event"}', {})

    async def parked():
        return await dead_letters(bus, "creator")
    letters = await eventually(parked, what="the poison message in the DLQ")
    assert letters[0]["error"].startswith("malformed event")
    assert handled == []
    await consumer.stop()


async def test_graceful_stop_lets_the_handler_in_flight_finish_and_ack(bus, settings):
    """stop() stops taking messages (its cancel confirmed by the broker, a message sent then
    stays queued) but waits for the one being handled, which is acked."""
    started, release = asyncio.Event(), asyncio.Event()
    finished = []

    async def handler(event, payload):
        started.set()
        await release.wait()
        finished.append(event.id)

    queue_name = bus.names.queue("configurator")
    consumer = Consumer(bus, "configurator", handler)
    await consumer.start()
    event = Envelope.new(GroupSubmitted(group_name="x", vm_count=1), group_id=uuid.uuid4())
    await bus.send_to_queue(queue_name, event.model_dump_json().encode(), {})
    await asyncio.wait_for(started.wait(), 10)
    stopping = asyncio.create_task(consumer.stop(timeout=10))
    await eventually(lambda: not consumer.taking_work, what="the broker to confirm the cancel")
    assert not stopping.done()  # intake stopped; it still waits for the handler in flight
    later = Envelope.new(GroupSubmitted(group_name="y", vm_count=1), group_id=uuid.uuid4())
    await bus.send_to_queue(queue_name, later.model_dump_json().encode(), {})
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert finished == [event.id]
    # The one in flight was acked; the one sent after the cancel was never taken.
    channel = await bus.connection.channel()
    queue = await channel.declare_queue(queue_name, passive=True)
    assert queue.declaration_result.message_count == 1
    await channel.close()


async def test_replaying_a_letter_that_fails_again_puts_it_back_once(bus):
    """A replayed message that fails again goes back to the DLQ once, counted as replayed, and
    the replay that moved it reads it once and says 1. A poison message shows it best: it is
    dead-lettered again at once, while the replay is still reading the DLQ (which used to read
    it again and again until the request timed out)."""
    consumer = Consumer(bus, "creator", lambda event, payload: None)
    await consumer.start()
    await bus.send_to_queue(bus.names.queue("creator"), b'{"not": "an event"}', {})

    async def parked(replays: int):
        letters = await dead_letters(bus, "creator")
        return letters if letters and letters[0]["replays"] == replays else None
    await eventually(lambda: parked(0), what="the poison message in the DLQ")
    for replay in (1, 2):
        moved = await asyncio.wait_for(replay_dead_letters(bus, "creator"), timeout=10)
        assert moved == 1
        letters = await eventually(lambda: parked(replay), what="the letter back in the DLQ")
        assert len(letters) == 1 and letters[0]["error"].startswith("malformed event")
    assert await replay_dead_letters(bus, "creator", event_id="no-such-id") == 0
    assert len(await dead_letters(bus, "creator")) == 1  # a filtered replay leaves it in place
    await consumer.stop()


async def test_a_publish_cancelled_under_the_relay_is_sent_again(bus, settings):
    """aiormq cancels the confirms pending on a connection it finds dead (a missed heartbeat).
    The relay takes that for a lost broker and sends the batch again; it used to raise the
    cancellation as its own, its task ended and the outbox was never published again (found by
    tests/integration/test_network_cut.py's blackhole)."""
    pool = await open_pool(settings)
    store = Store(pool)
    cut_short: list[Outgoing] = []
    real_publish = bus.publish

    async def publish(event):
        if not cut_short:  # the first publish is cancelled, as aiormq does on a dead connection
            cut_short.append(event)
            raise asyncio.CancelledError()
        await real_publish(event)
    bus.publish = publish
    relay = OutboxRelay(store, bus, settings.database_schema, idle_poll=0.1)
    async with store.transaction() as tx:
        event = await tx.publish(GroupSubmitted(group_name="shop", vm_count=1),
                                 group_id=uuid.uuid4())
    await relay.start()
    try:
        await eventually(lambda: pool.fetchval(
            "SELECT published_at IS NOT NULL FROM outbox WHERE event_id = $1", event.id),
            what="the event published after the cancelled try")
        assert [e.id for e in cut_short] == [str(event.id)]
        assert not relay._task.done()
    finally:
        await relay.stop()
        await pool.close()


async def test_a_commit_wakes_its_own_process_relay_and_a_store_without_one_wakes_them_all(
        bus, settings):
    """With every service in a process of its own, a commit used to wake every process's relay
    (one NOTIFY channel per installation), each to look at the outbox and find nothing. A Host's
    store now wakes its own relay's channel; a store with no relay still wakes them all."""
    pool = await open_pool(settings)
    mine = Store(pool, wake=own_channel())
    plain = Store(pool)
    heard: dict[str, list[str]] = {"installation": [], "mine": []}
    listener = await connect(settings)
    await listener.add_listener(notify_channel(settings.database_schema),
                                lambda *a: heard["installation"].append(a[2]))
    await listener.add_listener(mine.wake, lambda *a: heard["mine"].append(a[2]))
    # No idle poll within the test's time: only a wake-up can make this relay publish.
    relay = OutboxRelay(mine, bus, settings.database_schema, idle_poll=60)
    await relay.start()
    try:
        published = []
        for store in (mine, plain):
            async with store.transaction() as tx:
                event = await tx.publish(GroupSubmitted(group_name="shop", vm_count=1),
                                         group_id=uuid.uuid4())
            published.append(event.id)
            await eventually(lambda: pool.fetchval(
                "SELECT published_at IS NOT NULL FROM outbox WHERE event_id = $1", event.id),
                what="the event published at once by the relay woken")
        # One session's notifications arrive in commit order: the plain store's came after.
        await eventually(lambda: heard["installation"], what="the installation's wake")
        assert (len(heard["mine"]), len(heard["installation"])) == (1, 1)
    finally:
        await relay.stop()
        await listener.close()
        await pool.close()
