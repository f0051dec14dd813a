"""Prometheus metrics: the gateway's /metrics after a journey, the failed counter, and a
service process's own /metrics port."""

from __future__ import annotations

import dataclasses

import aiohttp
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from services.runtime import Host, router_of
from tests.conftest import eventually, free_port
from tests.integration.harness import THREE_VMS, Ferry, play_journey, start_ferry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]


@pytest.fixture
async def ferry(settings, operator):
    ferry = await start_ferry(settings, operator)
    yield ferry
    await ferry.host.stop()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, keyed by its name and labels."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def scrape(session: aiohttp.ClientSession, path: str = "/metrics") -> dict:
    async with session.get(path) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/plain"
        return samples(await response.text())


async def test_metrics_after_a_journey(ferry: Ferry, operator):
    """After a three-VM journey to ready, /metrics counts the events each service handled by
    type, has a handler latency histogram and the gateway's request latency by route pattern,
    and reads VMs by state, groups by status and the outbox lag from the store."""
    before = await scrape(operator)
    async with operator.get(f"/v1/no/such/{ferry.host.port}") as response:
        assert response.status == 404
    group_id = await ferry.submit(THREE_VMS.format(group="shop"))
    await play_journey(ferry, group_id)
    await ferry.wait_group(group_id, "ready")

    async def outbox_drained():
        found = await scrape(operator)
        return found if value(found, "ferry_outbox_unpublished") == 0 else None
    after = await eventually(outbox_drained, what="an empty outbox")

    def handled(service: str, event_type: str) -> float:
        labels = {"service": service, "event_type": event_type}
        return (value(after, "ferry_events_handled_total", **labels)
                - value(before, "ferry_events_handled_total", **labels))

    assert handled("archiver", "group.submitted") == 1
    assert handled("creator", "archive.ready") == 3
    assert handled("configurator", "vm.created") == 3
    assert handled("provisioner", "vm.configured") == 3
    assert handled("provisioner", "db.master.complete") >= 1
    assert handled("coordinator", "vm.state_changed") == 3  # bound to changes to ready only

    histogram = {"service": "creator", "event_type": "archive.ready"}
    assert value(after, "ferry_handler_duration_seconds_count", **histogram) >= 3
    assert value(after, "ferry_handler_duration_seconds_sum", **histogram) > 0
    assert value(after, "ferry_handler_duration_seconds_bucket", le="+Inf", **histogram) >= 3

    # The route's pattern, never the VM's id, labels the request histogram.
    state_route = {"method": "POST", "route": "/v1/vms/{vm_id}/state", "status": "200"}
    assert value(after, "ferry_http_request_duration_seconds_count", **state_route) >= 12
    assert not any(dict(labels).get("route", "").startswith("/v1/vms/")
                   and "{vm_id}" not in dict(labels)["route"] for _, labels in after)
    unknown = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(after, "ferry_http_request_duration_seconds_count", **unknown) >= 1
    assert not any(str(ferry.host.port) in dict(labels).get("route", "") for _, labels in after)

    assert value(after, "ferry_vms", state="ready") == 3
    assert value(after, "ferry_vms", state="failed") == 0
    assert value(after, "ferry_groups", status="ready") == 1
    assert value(after, "ferry_outbox_lag_seconds") == 0
    assert ("ferry_outbox_unpublished", frozenset()) in after


async def test_outbox_lag_is_the_age_of_the_oldest_unpublished_event(ferry: Ferry, operator):
    """An outbox row not yet published shows as lag (its age) and in the count."""
    await ferry.host.relay.stop()  # nothing publishes it: a relay behind, or the broker away
    await ferry.pool.execute(
        "INSERT INTO outbox (event_id, routing_key, body, created_at) "
        "VALUES (gen_random_uuid(), 'vm.created', '{}', now() - interval '90 seconds')")
    found = await scrape(operator)
    assert value(found, "ferry_outbox_unpublished") == 1
    assert 89 <= value(found, "ferry_outbox_lag_seconds") < 300
    assert value(found, "ferry_outbox_unroutable") == 0


async def test_a_failing_handler_counts_as_failed(ferry: Ferry, operator, monkeypatch):
    """A handler that raises increments ferry_events_failed_total for its service and type
    (each attempt: the bus retries it, then dead-letters it)."""
    labels = {"service": "archiver", "event_type": "group.submitted"}
    before = REGISTRY.get_sample_value("ferry_events_failed_total", labels) or 0.0

    async def broken(event, ctx):
        raise RuntimeError("the archiver is broken")

    subscriptions = router_of("archiver").subscriptions
    monkeypatch.setitem(subscriptions, "group.submitted",
                        dataclasses.replace(subscriptions["group.submitted"], handler=broken))
    await ferry.submit(THREE_VMS.format(group="broken"))

    async def failed_twice():
        found = await scrape(operator)
        return value(found, "ferry_events_failed_total", **labels) >= before + 2
    await eventually(failed_twice, what="two failed attempts counted")


async def test_metrics_need_the_operator_token(ferry: Ferry, settings):
    """/metrics is an operator endpoint: the gateway is also reached by the migrated VMs."""
    async with aiohttp.ClientSession(base_url=settings.gateway_url) as anonymous:
        async with anonymous.get("/metrics") as response:
            assert response.status == 401


async def test_a_process_without_the_gateway_serves_its_own_metrics(settings):
    """With FERRY_METRICS_PORT set, a host of services alone serves /metrics on that port."""
    port = free_port()
    host = Host(settings.model_copy(update={"metrics_port": port}), ["coordinator"])
    await host.start()
    try:
        assert host.metrics_port == port
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            found = await scrape(session)
        assert any(name == "ferry_handler_duration_seconds_count" or
                   name.startswith("python_") for name, _ in found)
        assert not any(name == "ferry_vms" for name, _ in found)  # the store: the gateway's
    finally:
        await host.stop()
