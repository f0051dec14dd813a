"""`GET /metrics`: the process's Prometheus metrics, with what the store holds read now.

A viewer token suffices (see docs/security.md): the gateway is also reached by the migrated VMs, which must learn
nothing of other groups; Prometheus sends the token with `authorization: {credentials_file: ...}`
in its scrape config. (A process without the gateway serves its own `/metrics` on
FERRY_METRICS_HOST:FERRY_METRICS_PORT, loopback by default, and holds no store figures.)
"""

from __future__ import annotations

from aiohttp import web

from services.gateway.api import api
from services.gateway.keys import DEPS
from shared.metrics import exposition, metrics_response, store_metrics


@api.route("GET", "/metrics", "Prometheus metrics (text exposition format): events handled and "
           "failed, handler and request latency, VMs by state, groups by status, outbox lag",
           auth="operator", role="viewer", tag="operator")
async def metrics(request: web.Request) -> web.Response:
    async with request.app[DEPS].store.session() as db:
        extra = await store_metrics(db)
    return metrics_response(exposition(extra))
