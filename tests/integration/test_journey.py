"""A group's journey over the real RabbitMQ and PostgreSQL, the test playing the VMs."""

from __future__ import annotations

import asyncio
import collections
import uuid

import pytest
from prometheus_client import REGISTRY

from shared.events import Envelope
from shared.providers.base import BootSource
from services.topology import topology
from shared.topology import routing_key
from shared.vmclient import GatewayRefused
from tests.conftest import eventually
from tests.integration.harness import (THREE_VMS, Ferry, configure_vm, first_boot_app,
                                       load_master, play_journey, start_ferry)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]


@pytest.fixture
async def ferry(settings, operator):
    ferry = await start_ferry(settings, operator)
    yield ferry
    await ferry.host.stop()


async def test_three_vm_group_travels_from_submitted_to_ready(ferry: Ferry):
    """App, master and replica go from submitted to ready; the replica is held until its master
    reports complete, and only then may it replicate."""
    group_id = await ferry.submit(THREE_VMS.format(group="shop"))
    ids = await ferry.vm_ids(group_id)
    await asyncio.gather(*(configure_vm(ferry, ids[name]) for name in ids))
    for name in ids:
        await ferry.wait_state(ids[name], "provisioning")
    await first_boot_app(ferry, ids["app1"])

    await ferry.wait_booted(ids["db2"], BootSource.DISK)
    async with ferry.vm(ids["db2"]) as replica:
        await replica.state("provisioned", "first-boot")
        await replica.state("loading", "load-dumps")
        held = await replica.master(wait=0)
        assert held == {**held, "complete": False, "master": "db1"}
        with pytest.raises(GatewayRefused) as refused:
            await replica.state("replicating", "too-early")
        assert refused.value.status == 409 and "db1 is not complete" in refused.value.body
        hold = asyncio.create_task(replica.master(wait=20))
        await load_master(ferry, ids["db1"])
        released = await hold
        assert released["complete"] and released["log_pos"] == 1234
        assert released["host"] == "10.20.0.12"
        await replica.state("replicating", "replication-started")
        await replica.state("ready", "replicating")

    await ferry.wait_group(group_id, "ready")
    states = {name: await ferry.state(vm_id) for name, vm_id in ids.items()}
    assert states == {"app1": "ready", "db1": "ready", "db2": "ready"}
    published = await ferry.pool.fetch(
        "SELECT routing_key FROM outbox WHERE group_id = $1 ORDER BY id", group_id)
    keys = [r["routing_key"] for r in published]
    assert keys[0] == "group.submitted" and keys.count("group.ready") == 1
    assert keys.count("vm.created") == 3 and keys.count("db.master.complete") == 1
    assert ferry.provider.created == 3
    for name in ids:
        assert ferry.provider.by_vm_id(ids[name]).network == "group:shop"


async def test_one_failed_vm_halts_its_siblings_until_retry_and_resume(ferry: Ferry):
    """A VM failing halts its group: siblings are held at their next step and none is
    provisioned; after a retry of the failed VM and a resume, the whole group gets ready."""
    group_id = await ferry.submit(THREE_VMS.format(group="shop"))
    ids = await ferry.vm_ids(group_id)
    for name in ids:
        await ferry.wait_booted(ids[name], BootSource.NETWORK)
    async with ferry.vm(ids["app1"]) as app:
        await app.state("configuring", "lvm")
        await app.state("failed", "lvm", message="lvcreate: insufficient free space")
    await ferry.wait_group(group_id, "halted")
    reason = await ferry.pool.fetchval("SELECT halted_reason FROM groups WHERE id = $1", group_id)
    assert reason == "app1 failed at lvm: lvcreate: insufficient free space"

    for name in ("db1", "db2"):
        await configure_vm(ferry, ids[name])
        assert await ferry.state(ids[name]) == "halted"
    assert not any(s == BootSource.DISK for v in ferry.provider.vms.values() for s, _ in v.boots)

    async with ferry.operator.post(f"/v1/groups/{group_id}/resume") as response:
        assert response.status == 409  # app1 is still failed
        assert "app1 still failed" in (await response.json())["error"]
    old_token = ferry.token(ids["app1"])
    async with ferry.operator.post(f"/v1/vms/{ids['app1']}/retry") as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["state"] == "halted"
    async with ferry.operator.post("/v1/groups/shop/resume") as response:
        assert response.status == 200, await response.text()

    await ferry.wait_booted(ids["app1"], BootSource.NETWORK, count=2)
    assert ferry.token(ids["app1"]) != old_token
    async with ferry.operator.get(f"/v1/groups/{group_id}") as response:
        assert (await response.json())["status"] == "active"
    await configure_vm(ferry, ids["app1"])
    await first_boot_app(ferry, ids["app1"])
    await load_master(ferry, ids["db1"])
    async with ferry.vm(ids["db2"]) as replica:
        await ferry.wait_booted(ids["db2"], BootSource.DISK)
        await replica.state("provisioned", "first-boot")
        await replica.state("loading", "load-dumps")
        assert (await replica.master(wait=10))["complete"]
        await replica.state("replicating", "replication-started")
        await replica.state("ready", "replicating")
    await ferry.wait_group(group_id, "ready")
    assert ferry.provider.created == 3


async def test_every_event_delivered_twice_leaves_the_same_state(ferry: Ferry):
    """With the relay publishing every event twice, the journey ends in the same state: three
    VMs made once each, one announcement of each fact; and each second copy is counted as a
    duplicate by every service bound to it."""
    before = duplicates_seen()
    real_publish = ferry.host.bus.publish

    async def publish_twice(event):
        await real_publish(event)
        await real_publish(event)

    ferry.host.bus.publish = publish_twice
    group_id = await ferry.submit(THREE_VMS.format(group="twice"))
    await play_journey(ferry, group_id)
    await ferry.wait_group(group_id, "ready")
    assert ferry.provider.created == 3
    keys = [r["routing_key"] for r in await ferry.pool.fetch(
        "SELECT routing_key FROM outbox WHERE group_id = $1", group_id)]
    for once in ("group.archived", "group.ready", "db.master.complete"):
        assert keys.count(once) == 1, (once, keys)
    assert keys.count("vm.created") == 3 and keys.count("archive.ready") == 3
    # Each copy that came second was recognised (before its handler, or at its inbox claim, or
    # on the retry after it lost a race with the first): one duplicate per service and event.
    await eventually(lambda: ferry.pool.fetchval(
        "SELECT count(*) = 0 FROM outbox WHERE published_at IS NULL"), what="an empty outbox")
    expected = bound_services(await group_events(ferry, group_id))

    await all_counted_as_duplicates(ferry, before, expected)


def duplicates_seen() -> dict[tuple[str, str], float]:
    """ferry_events_duplicate_total by (service, event type), as this process counts it."""
    return {(s.labels["service"], s.labels["event_type"]): s.value
            for family in REGISTRY.collect() if family.name == "ferry_events_duplicate"
            for s in family.samples if s.name == "ferry_events_duplicate_total"}


async def queues_empty(ferry: Ferry) -> bool:
    """No message waits in any service's queue or its retry queues (all were delivered)."""
    names = ferry.host.bus.names
    channel = await ferry.host.bus.connection.channel()
    try:
        for service in topology().services:
            queues = [names.queue(service)] + [names.retry(service, n + 1) for n in
                                               range(len(ferry.settings.retry_delays))]
            for name in queues:
                queue = await channel.declare_queue(name, passive=True)
                if queue.declaration_result.message_count:
                    return False
        return True
    finally:
        await channel.close()


async def all_counted_as_duplicates(ferry: Ferry, before: dict, expected: collections.Counter,
                                    ) -> None:
    """Once every queue is drained, the duplicates counted since `before` are `expected`,
    no more and no fewer."""
    def increase():
        return duplicates_increase(before)
    await eventually(lambda: sum(increase().values()) >= sum(expected.values()),
                     what=f"{sum(expected.values())} duplicates counted")
    await eventually(lambda: queues_empty(ferry), what="the services' queues empty")
    assert increase() == dict(expected)


def duplicates_increase(before: dict) -> dict[tuple[str, str], float]:
    now = duplicates_seen()
    return {k: now[k] - before.get(k, 0.0) for k in now if now[k] != before.get(k, 0.0)}


async def group_events(ferry: Ferry, group_id: uuid.UUID) -> list[Envelope]:
    return [Envelope.model_validate(r["body"]) for r in await ferry.pool.fetch(
        "SELECT body FROM outbox WHERE group_id = $1 ORDER BY id", group_id)]


def bound_services(events: list[Envelope]) -> collections.Counter[tuple[str, str]]:
    """(service, event type): how many of `events` each service gets (the gateway's live feed
    excepted: it keeps no inbox and counts no duplicate)."""
    expected: collections.Counter[tuple[str, str]] = collections.Counter()
    for event in events:
        key = routing_key(event.type, event.payload)
        for service, keys in topology().bindings.items():
            if service != "gateway" and key in keys:
                expected[(service, event.type)] += 1
    return expected


async def store_snapshot(ferry: Ferry, group_id: uuid.UUID) -> dict:
    """What a handler doing its work again would change: VM states and steps, transitions,
    events written, inbox rows."""
    return {
        "vms": sorted(tuple(r) for r in await ferry.pool.fetch(
            "SELECT name, state, step, held_state FROM vms WHERE group_id = $1", group_id)),
        "group": await ferry.group_status(group_id),
        "transitions": await ferry.pool.fetchval(
            "SELECT count(*) FROM vm_transitions t JOIN vms v ON v.id = t.vm_id"
            " WHERE v.group_id = $1", group_id),
        "outbox": await ferry.pool.fetchval("SELECT count(*) FROM outbox"),
        "inbox": await ferry.pool.fetchval("SELECT count(*) FROM inbox"),
    }


def provider_calls(provider) -> dict:
    return {"create_calls": provider.create_calls, "created": provider.created,
            "vms": {ref: (vm.network, vm.powered, len(vm.boots))
                    for ref, vm in provider.vms.items()}}


async def test_handled_events_delivered_again_are_counted_as_duplicates_and_change_nothing(
        ferry: Ferry):
    """Every event of a finished journey published again on the real bus, with its own id:
    each service bound to it counts one duplicate per event (ferry_events_duplicate_total),
    and nothing else happens: no VM moves, no transition or event is written, the provider is
    not called."""
    group_id = await ferry.submit(THREE_VMS.format(group="again"))
    await play_journey(ferry, group_id)
    await ferry.wait_group(group_id, "ready")
    await eventually(lambda: ferry.pool.fetchval(
        "SELECT count(*) = 0 FROM outbox WHERE published_at IS NULL"), what="an empty outbox")
    events = await group_events(ferry, group_id)
    expected = bound_services(events)
    assert sum(expected.values()) >= 20 and len({s for s, _ in expected}) == 5, expected

    async def handled_everything():
        # Each (service, event) is in the inbox: the events were handled, not just published.
        rows = await ferry.pool.fetch("SELECT service, event_id FROM inbox")
        done = collections.Counter()
        inbox = {(r["service"], r["event_id"]) for r in rows}
        for event in events:
            for service, keys in topology().bindings.items():
                if (service, event.id) in inbox:
                    done[(service, event.type)] += 1
        return done == expected or None
    await eventually(handled_everything, what="every event handled by every service bound to it")
    before, store_before = duplicates_seen(), await store_snapshot(ferry, group_id)
    calls_before = provider_calls(ferry.provider)

    for event in events:
        await ferry.host.bus.publish(event)

    await all_counted_as_duplicates(ferry, before, expected)
    assert await store_snapshot(ferry, group_id) == store_before
    assert provider_calls(ferry.provider) == calls_before


async def test_service_killed_mid_handler_finishes_after_restart(settings, operator):
    """The creator killed while the provider is creating a VM leaves no trace of half work:
    after a restart the message is redelivered, every VM is created, none twice."""
    from shared.providers.fake import FakeProvider

    provider = FakeProvider()
    provider.gate = asyncio.Event()
    ferry = await start_ferry(settings, operator, provider=provider)
    group_id = await ferry.submit(THREE_VMS.format(group="killed"))
    await eventually(lambda: provider.created >= 1, what="a VM being created")
    await ferry.host.kill()
    assert provider.created >= 1

    provider.gate.set()
    restarted = await start_ferry(settings, operator, provider=provider)
    try:
        ids = await restarted.vm_ids(group_id)
        for vm_id in ids.values():
            await restarted.wait_state(vm_id, "configuring")
        assert provider.created == 3
        assert provider.create_calls > provider.created  # the redelivery did ask again
        created_events = await restarted.pool.fetchval(
            "SELECT count(*) FROM outbox WHERE group_id = $1 AND routing_key = 'vm.created'",
            group_id)
        assert created_events == 3
    finally:
        await restarted.host.stop()


async def test_a_vm_token_only_opens_its_own_vm(ferry: Ferry):
    """A VM's token is refused on another VM's endpoints (403); no token or a bad one is 401."""
    group_id = await ferry.submit(THREE_VMS.format(group="tokens"))
    ids = await ferry.vm_ids(group_id)
    for vm_id in ids.values():
        await ferry.wait_booted(vm_id, BootSource.NETWORK)
    app_token = ferry.token(ids["app1"])
    session = ferry.operator
    db1 = ids["db1"]
    calls = [("GET", f"/v1/vms/{db1}/script", None),
             ("POST", f"/v1/vms/{db1}/state", {"state": "configuring", "step": "x"}),
             ("POST", f"/v1/vms/{db1}/messages", {"level": "info", "text": "x"}),
             ("GET", f"/v1/vms/{db1}/replication", None)]
    for method, path, body in calls:
        for token, expected in ((app_token, 403), (None, 401), ("not-a-token", 401)):
            headers = {"Authorization": f"Bearer {token}"} if token else {"Authorization": ""}
            async with session.request(method, path, json=body, headers=headers) as response:
                assert response.status == expected, (method, path, token, await response.text())
    async with session.get(f"/v1/boot/{db1}", params={"token": app_token},
                           headers={"Authorization": ""}) as response:
        assert response.status == 403
    assert await ferry.state(db1) == "configuring"
    assert await ferry.pool.fetchval("SELECT count(*) FROM vm_messages") == 0


async def test_the_boot_script_points_where_the_vm_reached_the_gateway(ferry: Ferry):
    """The iPXE script's kernel, initrd and ferry.gateway use the address the VM called (a
    VM behind slirp or a namespace relay knows the gateway by an address of its own network)."""
    group_id = await ferry.submit(THREE_VMS.format(group="boot"))
    app1 = (await ferry.vm_ids(group_id))["app1"]
    await ferry.wait_booted(app1, BootSource.NETWORK)
    token = ferry.token(app1)
    async with ferry.operator.get(f"/v1/boot/{app1}", params={"token": token},
                                  headers={"Host": "10.0.2.100", "Authorization": ""}) as response:
        assert response.status == 200
        script = await response.text()
    lines = script.splitlines()
    assert lines[0] == "#!ipxe"
    assert lines[1].startswith(f"kernel http://10.0.2.100/v1/support/migration-vmlinuz?token={token} ")
    assert f" ferry.gateway=http://10.0.2.100 ferry.vm={app1} ferry.token={token} " in lines[1]
    assert lines[2] == f"initrd http://10.0.2.100/v1/support/migration-initrd.img?token={token}"


async def test_a_vm_log_line_is_stored_and_announced_for_the_live_feed(ferry: Ferry):
    """A message_update is stored and published as vm.message_logged (with the VM and its
    group), which the gateway's live feed streams to operators."""
    group_id = await ferry.submit(THREE_VMS.format(group="logs"))
    app1 = (await ferry.vm_ids(group_id))["app1"]
    await ferry.wait_booted(app1, BootSource.NETWORK)
    async with ferry.vm(app1) as vm:
        await vm.message("unpacking /data", level="info")
    stored = await ferry.pool.fetchrow("SELECT id, level, text FROM vm_messages WHERE vm_id = $1",
                                       app1)
    bodies = await ferry.pool.fetch(
        "SELECT body FROM outbox WHERE routing_key = 'vm.message_logged'")
    announced = [b["body"] for b in bodies if b["body"]["vm_id"] == str(app1)]
    assert [(e["group_id"], e["payload"]) for e in announced] == [
        (str(group_id), {"message_id": stored["id"], "level": "info", "text": "unpacking /data"})]


async def test_malformed_plans_are_refused_with_field_errors_and_write_nothing(ferry: Ferry):
    """A bad plan is answered 422 with the field at fault, and nothing is stored or published."""
    bad = THREE_VMS.format(group="bad").replace("disks: [{size_gb: 10}]\n    filesystems: [{mount: /, size_gb: 8}]\n    network: {address: 10.20.0.13",
                                               "disks: [{size_gb: 0}]\n    filesystems: [{mount: /, size_gb: 8}]\n    network: {address: 10.20.0.13")
    async with ferry.operator.post("/v1/groups", data=bad) as response:
        body = await response.json()
    assert response.status == 422
    locations = [p["location"] + ": " + p["message"] for p in body["problems"]]
    assert "vms[2].disks[0].size_gb: must be greater than 0" in locations
    for text in ("group: shop\nvms: []\n", "[1, 2", "just text", ""):
        async with ferry.operator.post("/v1/groups", data=text) as response:
            assert response.status == 422, text
            assert (await response.json())["problems"], text
    assert await ferry.pool.fetchval("SELECT count(*) FROM groups") == 0
    assert await ferry.pool.fetchval("SELECT count(*) FROM outbox") == 0
