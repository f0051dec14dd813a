"""A poison message end to end, through the real services, the operator API and `ferry dlq`:
the creator's handler keeps failing (its provider's API is down), so after the configured
retries (FERRY_RETRY_DELAYS) the event is parked in ferry.<prefix>.creator.dlq; the operator sees
it with its error; once the provider is back, a replay puts it back and the group carries on."""

from __future__ import annotations

import asyncio
import time

import aio_pika
import pytest

from shared.providers.base import BootSource
from shared.providers.fake import FakeProvider
from shared.topology import Names
from tests.conftest import eventually
from tests.integration.harness import THREE_VMS, ferry_cli, start_ferry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]

class FlakyProvider(FakeProvider):
    """The fake provider whose API is unreachable while `down` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.refused_at: list[float] = []

    async def create_vm(self, spec, *, idempotency_key, host=None):
        if self.down:
            self.refused_at.append(time.monotonic())
            raise ConnectionError("provider API unreachable")
        return await super().create_vm(spec, idempotency_key=idempotency_key, host=host)


async def dlq_depth(settings, service: str) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(Names(settings.bus_prefix).dead_letters(service),
                                            passive=True)
        return queue.declaration_result.message_count
    finally:
        await connection.close()


async def test_a_handler_that_always_fails_is_dead_lettered_listed_and_replayed(settings,
                                                                                  operator):
    provider = FlakyProvider()
    ferry = await start_ferry(settings, operator, provider=provider)
    try:
        group_id = await ferry.submit(THREE_VMS.format(group="shop"))
        dlq = f"{settings.bus_prefix}.creator.dlq"

        # Parked after 1 + len(retry_delays) attempts, spaced by the configured delays.
        await eventually(lambda: dlq_depth(settings, "creator"), what=f"a message in {dlq}")
        assert len(provider.refused_at) == 1 + len(settings.retry_delays)
        gaps = [b - a for a, b in zip(provider.refused_at, provider.refused_at[1:])]
        assert all(gap >= delay * 0.9 for gap, delay in zip(gaps, settings.retry_delays)), gaps
        # Dead-lettered, it is not attempted again: the replay below counts exactly one more
        # round of attempts on top of these.
        assert await dlq_depth(settings, "creator") == 1
        ids = await ferry.vm_ids(group_id)
        assert {await ferry.state(vm_id) for vm_id in ids.values()} <= {"archived", "creating"}
        assert provider.created == 0

        # The operator API lists it with its error, without taking it off the queue.
        async with operator.get("/v1/dead-letters/creator") as answer:
            assert answer.status == 200
            letters = (await answer.json())["messages"]
        assert len(letters) == 1
        letter = letters[0]
        assert letter["type"] == "group.archived"
        assert letter["error"] == "ConnectionError: provider API unreachable"
        assert letter["attempts"] == 1 + len(settings.retry_delays)
        assert letter["body"]["group_id"] == str(group_id)
        async with operator.get("/v1/dead-letters/archiver") as answer:
            assert (await answer.json())["messages"] == []
        assert await dlq_depth(settings, "creator") == 1

        # So does `ferry dlq creator`.
        listed = await ferry_cli(settings, "dlq", "creator")
        assert letter["message_id"] in listed
        assert "group.archived" in listed
        assert "ConnectionError: provider API unreachable" in listed

        # Replayed while the cause is still there: it fails its way back to the DLQ.
        async with operator.post("/v1/dead-letters/creator/replay",
                                 params={"id": letter["message_id"]}) as answer:
            assert (await answer.json())["replayed"] == 1
        await eventually(lambda: len(provider.refused_at) == 2 * (1 + len(settings.retry_delays)),
                         what="the replayed message's attempts")
        await eventually(lambda: dlq_depth(settings, "creator"), what="the message parked again")

        # The cause fixed, `ferry dlq creator --replay` puts it back and it is processed.
        provider.down = False
        replayed = await ferry_cli(settings, "dlq", "creator", "--replay")
        assert "1 replayed" in replayed
        for vm_id in ids.values():
            await ferry.wait_booted(vm_id, BootSource.NETWORK)
        assert provider.created == 3
        assert await dlq_depth(settings, "creator") == 0
        assert "group.archived" not in await ferry_cli(settings, "dlq", "creator")
    finally:
        await ferry.host.stop()


async def test_unknown_service_dead_letters_are_a_404(settings, operator):
    ferry = await start_ferry(settings, operator, services=())
    try:
        for method, path in (("GET", "/v1/dead-letters/nope"),
                             ("POST", "/v1/dead-letters/nope/replay")):
            async with operator.request(method, path) as answer:
                assert answer.status == 404
                assert "no service 'nope'" in (await answer.json())["error"]
    finally:
        await ferry.host.stop()
