"""The gateway's aiohttp application."""

from __future__ import annotations

import secrets

from aiohttp import web

from services.gateway import live, operator_routes, vm_routes  # noqa: F401 - they register routes
from services.gateway import metrics_routes  # noqa: F401 - registers /metrics
from services.gateway import ui_routes  # noqa: F401 - registers the web UI at /
from services.gateway.api import api
from services.gateway.keys import BUS, DEPS, LIVE, OPERATOR_TOKEN
from services.gateway.live import Broadcaster
from services.gateway.openapi import openapi_document
from shared.bus import Bus
from shared.logging import get_logger
from shared.metrics import http_metrics
from shared.service import Deps
from shared.settings import Settings

log = get_logger(__name__)

MAX_BODY = 2 * 1024 * 1024


def operator_token(settings: Settings) -> str:
    """The configured operator token, else the one kept in the state dir (made on first use)."""
    if settings.operator_token:
        return settings.operator_token
    path = settings.operator_token_file
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token


@web.middleware
async def json_errors(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("request failed", path=request.path, method=request.method)
        raise web.HTTPInternalServerError(
            text='{"error": "internal error; see the gateway log", "problems": []}',
            content_type="application/json",
        ) from None


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(api))


def build_app(deps: Deps, bus: Bus | None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[http_metrics, json_errors])
    app[DEPS] = deps
    if bus is not None:
        app[BUS] = bus
    app[OPERATOR_TOKEN] = operator_token(deps.settings)
    app[LIVE] = Broadcaster()
    api.add_to(app)
    app.router.add_get("/openapi.json", _openapi)
    return app
