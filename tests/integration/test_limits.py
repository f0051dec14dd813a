"""Limits (shared/limits.py, docs/operations.md) on the real RabbitMQ and PostgreSQL, with the
fake provider at the edge: VMs past a limit wait, say so in the API, and go on when a slot
frees; the per-host limit spreads VMs over hosts; archives of one legacy site take turns;
two creator replicas never admit past a limit between them. The limits' maxima are checked
from the store's history (tests/limits_history.py)."""

from __future__ import annotations

import asyncio

import pytest

from services.runtime import Host
from shared.providers.fake import FakeProvider
from tests.conftest import eventually
from tests.integration.harness import THREE_VMS, Ferry, configure_vm, first_boot_app, start_ferry
from tests.limits_history import most_at_once

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]


def limited(settings, **limits):
    return settings.model_copy(update={"limit_in_flight": 0, "limit_in_flight_per_host": 0,
                                       "limit_archives_per_site": 0, **limits})


def plan(group: str, site: str | None = None, subnet: int = 20) -> str:
    text = THREE_VMS.format(group=group).replace("10.20.0.", f"10.{subnet}.0.")
    return text.replace("vms:\n", f"legacy_site: {site}\nvms:\n", 1) if site else text


async def vm_document(ferry: Ferry, group: str, name: str) -> dict:
    async with ferry.operator.get(f"/v1/groups/{group}") as response:
        assert response.status == 200
        return next(vm for vm in (await response.json())["vms"] if vm["name"] == name)


async def history(ferry: Ferry) -> dict:
    async with ferry.pool.acquire() as conn:
        await conn.execute(f"SET search_path TO {ferry.settings.database_schema}")
        return await most_at_once(conn)


async def test_a_vm_past_the_limit_waits_saying_so_and_goes_on_when_a_slot_frees(
        settings, operator):
    """Two VMs in flight at most: the third stays archived and its API document says why;
    once one VM is provisioned it is created, and the history never had three in flight."""
    ferry = await start_ferry(limited(settings, limit_in_flight=2), operator)
    try:
        group_id = await ferry.submit(plan("shop"))
        ids = await ferry.vm_ids(group_id)
        await ferry.wait_state(ids["app1"], "created", "configuring")
        await ferry.wait_state(ids["db1"], "created", "configuring")
        why = "waiting for a slot: 2 of 2 in flight overall"
        await eventually(lambda: _says(ferry, "shop", "db2", why), what="db2 to say it waits")
        assert await ferry.state(ids["db2"]) == "archived"
        await configure_vm(ferry, ids["app1"])
        await first_boot_app(ferry, ids["app1"])
        await ferry.wait_state(ids["db2"], "created", "configuring")
        document = await vm_document(ferry, "shop", "db2")
        assert document["waiting"] is None and document["host"] == "fake"
        assert (await history(ferry))["most_in_flight"] == 2
    finally:
        await ferry.host.stop()


async def _says(ferry: Ferry, group: str, name: str, why: str) -> bool:
    return (await vm_document(ferry, group, name))["waiting"] == why


async def test_the_per_host_limit_spreads_vms_and_names_the_full_host(settings, operator):
    """One VM per host: the first goes to h1, the second to h2, the third waits naming h1."""
    provider = FakeProvider(hosts=("h1", "h2"))
    ferry = await start_ferry(limited(settings, limit_in_flight_per_host=1), operator,
                              provider=provider)
    try:
        group_id = await ferry.submit(plan("shop"))
        ids = await ferry.vm_ids(group_id)
        await ferry.wait_state(ids["db1"], "created", "configuring")
        why = "waiting for a slot: 1 of 1 in flight on host h1 (and on its 1 other host(s))"
        await eventually(lambda: _says(ferry, "shop", "db2", why), what="db2 to say it waits")
        assert [provider.by_vm_id(ids[n]).host for n in ("app1", "db1")] == ["h1", "h2"]
        assert (await vm_document(ferry, "shop", "db1"))["host"] == "h2"
    finally:
        await ferry.host.stop()


async def test_archives_of_one_legacy_site_take_turns_across_groups(settings, operator):
    """Two groups of one legacy site, one archive at a time there: every VM is archived,
    never two at once, and the VMs that waited said so in their log."""
    ferry = await start_ferry(limited(settings, limit_archives_per_site=1), operator)
    try:
        first = await ferry.submit(plan("shop", site="dc1"))
        second = await ferry.submit(plan("shop2", site="dc1", subnet=21))
        for group_id in (first, second):
            for vm_id in (await ferry.vm_ids(group_id)).values():
                await ferry.wait_state(vm_id, "created", "configuring")
        assert (await history(ferry))["most_archiving_per_site"] == {"dc1": 1}
        async with ferry.pool.acquire() as conn:
            waited = await conn.fetchval(
                f"SELECT count(DISTINCT vm_id) FROM {ferry.settings.database_schema}.vm_messages"
                " WHERE text = 'waiting for an archive slot: 1 of 1 on site dc1'")
        assert waited >= 1
    finally:
        await ferry.host.stop()


async def test_two_creator_replicas_never_admit_past_the_limit(settings, operator):
    """Four slots, two groups of three VMs archived at once, two creators competing for the
    events: exactly four VMs are created, two wait, and the history never had five."""
    settings = limited(settings, limit_in_flight=4)
    provider = FakeProvider()
    ferry = await start_ferry(settings, operator, provider=provider)
    second = Host(settings, ["creator"], provider=provider)
    await second.start()
    try:
        groups = await asyncio.gather(ferry.submit(plan("shop")),
                                      ferry.submit(plan("shop2", subnet=21)))
        vm_ids = [vm for g in groups for vm in (await ferry.vm_ids(g)).values()]

        async def settled():
            states = [await ferry.state(vm) for vm in vm_ids]
            made = sum(s in ("created", "configuring") for s in states)
            return made == 4 and states.count("archived") == 2
        await eventually(settled, what="four VMs made and two waiting")
        assert provider.created == 4
        assert (await history(ferry))["most_in_flight"] == 4
    finally:
        await second.stop()
        await ferry.host.stop()


async def test_a_creator_starting_admits_what_waits_without_an_event(settings, operator):
    """VMs left waiting when the creator stopped (a slot freed, or the limit raised, while it
    was down) are admitted and made when it starts again, with no event to tell it."""
    provider = FakeProvider()
    ferry = await start_ferry(limited(settings, limit_in_flight=1), operator, provider=provider)
    try:
        group_id = await ferry.submit(plan("shop"))
        ids = await ferry.vm_ids(group_id)
        await ferry.wait_state(ids["app1"], "created", "configuring")
        await eventually(lambda: _says(ferry, "shop", "db2", "waiting for a slot: 1 of 1 in "
                                       "flight overall"), what="db2 to say it waits")
    finally:
        await ferry.host.stop()
    creator = Host(limited(settings, limit_in_flight=3), ["creator"], provider=provider)
    await creator.start()
    try:
        await eventually(lambda: provider.created == 3, what="the waiting VMs to be made")
        async with creator.pool.acquire() as conn:
            rows = await conn.fetch("SELECT name, state, waiting FROM vms WHERE name <> 'app1'"
                                    " ORDER BY position")
    finally:
        await creator.stop()
    assert [tuple(r) for r in rows] == [("db1", "created", None), ("db2", "created", None)]
