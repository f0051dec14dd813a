"""Prometheus metrics: one registry per process (prometheus_client's default), so that
`ferry run-all` and the tests, which host every service in one process, expose them all at once.

- what the services do: events handled, failed and ignored as duplicates, and how long their
  handlers took, by service and event type (`shared.service.Router.dispatch` records them);
- what the gateway answers: request latency by route (its canonical path, e.g.
  `/v1/vms/{vm_id}/state`, never the raw URL) and status (`http_metrics`, an aiohttp middleware);
- what the store holds, read from the database when scraped (the gateway only, so that it is
  counted once): VMs by state, groups by status, and the outbox's lag (how many events wait to
  be published and how old the oldest is).

A process without the gateway serves its own `/metrics` on `FERRY_METRICS_PORT` (0: none).
"""

from __future__ import annotations

import time
from typing import Iterable

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from shared import health
from shared.health import Probe
from shared.states import GroupStatus, VmState

# Handlers range from a few milliseconds to minutes (a provider creating a VM, an archive).
HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                   600)

EVENTS_HANDLED = Counter(
    "ferry_events_handled", "Events a service's handler completed (committed).",
    ["service", "event_type"])
EVENTS_FAILED = Counter(
    "ferry_events_failed", "Events a service's handler raised on (each attempt; the bus retries "
    "it, then dead-letters it).", ["service", "event_type"])
EVENTS_DUPLICATE = Counter(
    "ferry_events_duplicate", "Redelivered events a service had already processed (ignored).",
    ["service", "event_type"])
HANDLER_SECONDS = Histogram(
    "ferry_handler_duration_seconds", "Time a service's handler took on an event, whatever "
    "its outcome.", ["service", "event_type"], buckets=HANDLER_BUCKETS)
HTTP_SECONDS = Histogram(
    "ferry_http_request_duration_seconds", "Time the gateway took to answer, by route (its "
    "canonical path) and status. Long polls and the live feed last as long as they are held.",
    ["method", "route", "status"])


def record_handler(service: str, event_type: str, seconds: float, outcome: str) -> None:
    """`outcome`: handled, failed or duplicate."""
    HANDLER_SECONDS.labels(service, event_type).observe(seconds)
    counter = {"handled": EVENTS_HANDLED, "failed": EVENTS_FAILED,
               "duplicate": EVENTS_DUPLICATE}[outcome]
    counter.labels(service, event_type).inc()


# -- the gateway's requests ------------------------------------------------------------------

def route_of(request: web.Request) -> str:
    """The route's canonical path (bounded cardinality); 'unmatched' for unknown URLs."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def http_metrics(request: web.Request, handler):
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        HTTP_SECONDS.labels(request.method, route_of(request), str(status)).observe(
            time.perf_counter() - started)


# -- what the store holds, read when scraped ---------------------------------------------------

async def store_metrics(db) -> list[Metric]:
    """VMs by state, groups by status, outbox lag: one read of the database, at scrape time.
    Every known state and status is reported, at 0 when none is in it. `db`: a store session."""
    vm_rows = await db.views.vm_states()
    group_rows = await db.views.group_statuses()
    outbox = await db.views.outbox_lag()
    vms = GaugeMetricFamily("ferry_vms", "VMs by state (all groups).", labels=["state"])
    for state, count in _with_zeros([s.value for s in VmState], vm_rows):
        vms.add_metric([state], count)
    groups = GaugeMetricFamily("ferry_groups", "Groups by status.", labels=["status"])
    for status, count in _with_zeros([s.value for s in GroupStatus], group_rows):
        groups.add_metric([status], count)
    pending = GaugeMetricFamily("ferry_outbox_unpublished", "Events written to the outbox and "
                                "not yet published (unroutable ones included).",
                                value=outbox["n"])
    unroutable = GaugeMetricFamily("ferry_outbox_unroutable", "Unpublished outbox events the "
                                   "broker refused as unroutable.", value=outbox["unroutable"])
    lag = GaugeMetricFamily("ferry_outbox_lag_seconds", "Age of the oldest unpublished outbox "
                            "event (0 when none waits).", value=outbox["age"])
    return [vms, groups, pending, unroutable, lag]


def _with_zeros(known: list[str], rows: Iterable[asyncpg.Record]) -> list[tuple[str, int]]:
    counts = {key: 0 for key in known}
    for row in rows:
        counts[row[0]] = row["n"]
    return sorted(counts.items())


class _Together:
    """The process's registry and some families computed just now, as one collector."""

    def __init__(self, extra: list[Metric]):
        self.extra = extra

    def collect(self) -> Iterable[Metric]:
        yield from REGISTRY.collect()
        yield from self.extra


def exposition(extra: list[Metric] | None = None) -> bytes:
    return generate_latest(_Together(extra or []))  # type: ignore[arg-type]


def metrics_response(body: bytes) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# -- a service process's own endpoint ----------------------------------------------------------


async def _serve_metrics(request: web.Request) -> web.Response:
    return metrics_response(exposition())


async def start_metrics_server(host: str, port: int, probes: dict[str, Probe] | None = None
                               ) -> tuple[web.AppRunner, int]:
    """`/metrics` of this process on host:port (for processes without the gateway), with
    `/healthz` and `/readyz` (the latter asking `probes`: shared/health.py)."""
    app = web.Application()
    app.router.add_get("/metrics", _serve_metrics)
    health.add_routes(app, probes or {})
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, runner.addresses[0][1]
