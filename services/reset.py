"""Removing everything one Ferryman installation keeps on the shared servers: its database
schema, and its queues and exchange. For a run that starts from nothing (the demo), a test's or
a benchmark's clean-up. Never used by the services themselves."""

from __future__ import annotations

import aio_pika
import asyncpg

from services.topology import topology
from shared.settings import Settings
from shared.topology import Names

# Retry holding queues are declared per configured delay; remove more than any run declares.
MAX_RETRY_QUEUES = 5


async def remove_everything(settings: Settings, extra_queues: tuple[str, ...] = ()) -> None:
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {settings.database_schema} CASCADE")
    finally:
        await conn.close()
    names = Names(settings.bus_prefix)
    retries = max(MAX_RETRY_QUEUES, len(settings.retry_delays))
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for service in topology().services:
            queues = [names.queue(service), names.dead_letters(service)]
            queues += [names.retry(service, n) for n in range(1, retries + 1)]
            for queue in queues:
                await channel.queue_delete(queue)
        for queue in (names.unheard, *extra_queues):
            await channel.queue_delete(queue)
        await channel.exchange_delete(names.exchange)
