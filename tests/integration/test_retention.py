"""Retention against the real PostgreSQL, with rows of the right ages: published outbox events
past FERRY_RETENTION_OUTBOX_DAYS, inbox records past FERRY_RETENTION_INBOX_DAYS and the VM
messages of groups closed longer than FERRY_RETENTION_MESSAGES_DAYS go, in batches; everything
younger, an unpublished event however old, and the messages of a group still on its way stay.
A dry run counts and deletes nothing; the coordinator's process prunes by itself."""

from __future__ import annotations

import json
import uuid

import pytest

from shared import retention
from shared.store.session import Store
from tests.conftest import eventually
from tests.integration.harness import THREE_VMS, ferry_cli, start_ferry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]

DAY = "interval '1 day'"


async def aged_rows(ferry) -> dict[str, set]:
    """Rows on either side of each default limit (7, 30, 30 days); what must survive, by kind."""
    pool = ferry.pool
    outbox = {}
    for label, published, created in (("old1", 8, 9), ("old2", 8, 9), ("old3", 10, 10),
                                      ("young", 6, 6), ("unpublished", None, 40)):
        event_id = uuid.uuid4()
        outbox[label] = event_id
        await pool.execute(
            f"INSERT INTO outbox (event_id, routing_key, body, created_at, published_at)"
            f" VALUES ($1, 'group.ready', $2::jsonb, now() - $3 * {DAY},"
            f" now() - $4 * {DAY})", event_id, json.dumps({}), created, published)
    inbox = {}
    for label, age in (("old1", 31), ("old2", 45), ("old3", 31), ("young", 29)):
        inbox[label] = uuid.uuid4()
        await pool.execute(f"INSERT INTO inbox (service, event_id, processed_at)"
                           f" VALUES ('creator', $1, now() - $2 * {DAY})", inbox[label], age)
    messages = {}
    for name, status, closed in (("closed-long-ago", "cancelled", 31),
                                 ("closed-lately", "finalized", 29),
                                 ("on-its-way", "active", None)):
        group_id = await ferry.submit(THREE_VMS.format(group=name))
        await pool.execute(f"UPDATE groups SET status = $2, closed_at = now() - $3 * {DAY}"
                           " WHERE id = $1", group_id, status, closed)
        vm_id = (await ferry.vm_ids(group_id))["app1"]
        messages[name] = await pool.fetch(
            f"INSERT INTO vm_messages (vm_id, level, text, at) SELECT $1, 'info', 'line ' || n,"
            f" now() - 60 * {DAY} FROM generate_series(1, 3) n RETURNING id", vm_id)
    return {
        "outbox": {outbox["young"], outbox["unpublished"]},
        "inbox": {inbox["young"]},
        "vm_messages": {r["id"] for name in ("closed-lately", "on-its-way")
                        for r in messages[name]},
    }


async def left(pool) -> dict[str, set]:
    return {
        "outbox": {r["event_id"] for r in await pool.fetch("SELECT event_id FROM outbox"
                                                             " WHERE routing_key = 'group.ready'")},
        "inbox": {r["event_id"] for r in await pool.fetch("SELECT event_id FROM inbox")},
        "vm_messages": {r["id"] for r in await pool.fetch("SELECT id FROM vm_messages")},
    }


async def test_what_is_past_its_retention_goes_in_batches_and_the_rest_stays(settings,
                                                                            operator):
    """With batches of 2: 3 old published events, 3 old inbox records and the 3 messages of
    the group closed 31 days ago are deleted; a dry run first counts the same and deletes
    nothing."""
    ferry = await start_ferry(settings, operator, services=())
    try:
        kept = await aged_rows(ferry)
        before = await left(ferry.pool)
        async with operator.post("/v1/retention/prune", json={"dry_run": True}) as response:
            assert response.status == 200
            assert await response.json() == {"dry_run": True, "outbox": 3, "inbox": 3,
                                             "vm_messages": 3}
        assert await left(ferry.pool) == before
        found = await retention.prune(Store(ferry.pool),
                                      settings.model_copy(update={"retention_batch": 2}))
        assert found == retention.Pruned(outbox=3, inbox=3, vm_messages=3)
        assert await left(ferry.pool) == kept
        again = await retention.prune(Store(ferry.pool), settings)
        assert again == retention.Pruned()
    finally:
        await ferry.host.stop()


async def test_zero_days_keeps_a_kind_forever(settings, operator):
    ferry = await start_ferry(settings, operator, services=())
    try:
        await aged_rows(ferry)
        keep_all = settings.model_copy(update={"retention_outbox_days": 0,
                                               "retention_inbox_days": 0,
                                               "retention_messages_days": 0})
        assert await retention.prune(Store(ferry.pool), keep_all) == retention.Pruned()
    finally:
        await ferry.host.stop()


async def test_the_coordinators_process_prunes_by_itself_and_ferry_prune_counts(settings,
                                                                              operator):
    """A process running the coordinator prunes at start and then every
    FERRY_RETENTION_INTERVAL_S; `ferry prune --dry-run` says what is left to prune (nothing)."""
    seeding = await start_ferry(settings, operator, services=())
    try:
        kept = await aged_rows(seeding)
    finally:
        await seeding.host.stop()
    ferry = await start_ferry(settings.model_copy(update={"retention_interval_s": 0.2}),
                              operator, services=("coordinator",))
    try:
        async def pruned():
            return await left(ferry.pool) == kept
        await eventually(pruned, what="the coordinator's pruner to delete what is too old")
        assert "retention-pruner" in [every.name for every in ferry.host.passes]
        out = await ferry_cli(settings, "prune", "--dry-run")
        assert "would delete 0 published outbox events, 0 inbox records, 0 VM messages" in out
    finally:
        await ferry.host.stop()
