"""`GET /healthz` and `GET /readyz` on the gateway (shared/health.py says what each means).

Without a token: a supervisor or a load balancer asks them, and they tell nothing about the
groups (only whether the database and the broker answered)."""

from __future__ import annotations

from aiohttp import web

from services.gateway.api import api
from services.gateway.errors import json_response
from services.gateway.keys import BUS, DEPS
from shared.health import Liveness, Readiness, dependency_probes, readiness


@api.route("GET", "/healthz", "Liveness: 200 for as long as the process serves",
           auth="none", tag="health", response=Liveness)
async def healthz(request: web.Request) -> web.Response:
    return json_response(Liveness())


@api.route("GET", "/readyz", "Readiness: 200 when the database and the broker answer; 503 "
           "naming those that did not", auth="none", tag="health", response=Readiness,
           responses={503: "a dependency did not answer: `failed` names it (same body)"})
async def readyz(request: web.Request) -> web.Response:
    probes = dependency_probes(request.app[DEPS].store, request.app.get(BUS))
    answer = await readiness(probes)
    return json_response(answer, 200 if answer.ready else 503)
