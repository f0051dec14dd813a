"""The gateway's aiohttp application."""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl

import asyncpg
from aiohttp import web

from services.gateway import live, operator_routes, vm_routes  # noqa: F401 - they register routes
from services.gateway import health_routes  # noqa: F401 - registers /healthz and /readyz
from services.gateway import metrics_routes  # noqa: F401 - registers /metrics
from services.gateway import ui_routes  # noqa: F401 - registers the web UI at /
from services.gateway import verify_routes  # noqa: F401 - registers ferry verify's route
from services.gateway import listing_routes  # noqa: F401 - registers the listings, /v1/fleet
from services.gateway import access_routes  # noqa: F401 - registers tokens, whoami, audit
from services.gateway import audit
from services.gateway.api import api
from services.gateway.auth import ACTOR, operator_of, refuse_role
from services.gateway.errors import UNSTORABLE, problem, storable, unreadable_body
from services.gateway.keys import BUS, DEPS, LIMITER, LIVE, OPERATOR_TOKEN
from services.gateway.broadcast import Broadcaster
from services.gateway.failures import FailureLimiter
from services.gateway.openapi import openapi_document
from shared import tls
from shared.bus import Bus
from shared.logging import get_logger
from shared.metrics import http_metrics
from shared.service import Deps
from shared.roles import allows, is_action
from shared.settings import Settings

log = get_logger(__name__)

# Handlers that stream for as long as the client listens: no request timeout for them.
STREAMING = {live.events_stream}
# Each handler's route: its auth kind (which requests present a token) and role.
ROUTE_OF = {route.handler: route for route in api.routes}
# The web UI's event-stream cookie stands for its token there alone (see auth.EVENTS_COOKIE).
COOKIE_ACCEPTED = {live.events_stream}


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


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The gateway's TLS context: the configured certificate, else the installation's own (made
    in state_dir/tls/ at the first start); None only when plain HTTP is allowed."""
    files = tls.served_files(settings)
    if files is None:
        log.warning("the gateway serves plain HTTP (FERRY_GATEWAY_PLAIN_HTTP): VM tokens "
                    "cross the migration network in clear")
        return None
    return tls.server_context(*files)


@web.middleware
async def json_errors(request: web.Request, handler):
    """Every refusal as a problem answer (JSON with `error` and `problems`), aiohttp's own
    (unknown path, wrong method, body too large) included; an unexpected failure is a 500 that
    says nothing of its cause (that goes to the log)."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(request) from None
    except web.RequestPayloadError:  # a handler that read the body without read_body
        raise unreadable_body() from None
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return web.Response(status=exc.status, content_type="application/json",
                                headers=_kept_headers(exc),
                                text=json.dumps({"error": exc.reason, "problems": []}))
        raise
    except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, ConnectionError) as exc:
        log.warning("request failed: a backing service is unavailable", path=request.path,
                    method=request.method, error=f"{type(exc).__name__}: {exc}")
        raise problem(web.HTTPServiceUnavailable, "a backing service (state store or broker) "
                      "is unavailable; retry", headers={"Retry-After": "5"}) from None
    except Exception:
        log.exception("request failed", path=request.path, method=request.method)
        raise web.HTTPInternalServerError(
            text='{"error": "internal error; see the gateway log", "problems": []}',
            content_type="application/json",
        ) from None


def _kept_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}


def _too_large(request: web.Request) -> web.HTTPException:
    limit = request.app[DEPS].settings.gateway_max_body_bytes
    body = {"error": f"the request body is larger than the gateway accepts ({limit} bytes)",
            "problems": [{"location": "(body)", "message": f"must be at most {limit} bytes"}]}
    return web.HTTPRequestEntityTooLarge(limit, request.content_length or limit + 1,
                                         text=json.dumps(body), content_type="application/json")


@web.middleware
async def guard(request: web.Request, handler):
    """Body size, token-failure rate, the operator token and its role (before any handler
    reads a body), handling time, and the audit line of every action, around every handler."""
    settings = request.app[DEPS].settings
    if (request.content_length or 0) > settings.gateway_max_body_bytes:
        raise _too_large(request)
    bad = [name for name, value in (("(path)", request.path), *request.query.items())
           if not (storable(name) and storable(value))]
    if bad:
        raise problem(web.HTTPBadRequest, "the URL is not valid",
                      [{"location": where, "message": UNSTORABLE} for where in bad])
    route_handler = getattr(request.match_info.route, "handler", None)
    route = ROUTE_OF.get(route_handler)
    auth = route.auth if route else "none"
    limiter = request.app[LIMITER]
    address = request.remote or "?"
    if auth != "none":
        wait = limiter.retry_after(address)
        if wait:
            raise problem(web.HTTPTooManyRequests,
                          f"too many refused tokens from {address}; retry in {wait} s",
                          headers={"Retry-After": str(wait)})
    held = None
    if auth == "operator":
        held = await _operator(request, route, limiter, address)
    auditing = held is not None and is_action(route.role)
    status = 500
    try:
        response = await _handle(request, handler, route_handler, settings)
        status = response.status
    except web.HTTPException as exc:
        status = exc.status
        if auth != "none" and exc.status in (401, 403):
            limiter.failed(address)
        raise
    finally:
        if auditing and request.get(audit.AUDITED) != status:
            await audit.record_after(request, held, status)
    if auth != "none" and response.status in (401, 403):
        limiter.failed(address)
    return response


async def _operator(request: web.Request, route, limiter: FailureLimiter, address: str):
    """The operator token's holder, if its role is enough for the route: a token that is not
    valid counts toward the address's refused tokens; a valid one short of the role does not
    (it guessed nothing) but is audited."""
    try:
        held = await operator_of(request, request.app[DEPS].store,
                                 cookie_accepted=route.handler in COOKIE_ACCEPTED)
    except web.HTTPException as exc:
        if exc.status in (401, 403):
            limiter.failed(address)
        raise
    request[ACTOR] = held
    request[audit.ROUTE] = route
    if not allows(held.role, route.role):
        await audit.record_after(request, held, 403, detail=f"needs the {route.role} role")
        raise refuse_role(route.role, held)
    return held


async def _handle(request: web.Request, handler, route_handler, settings: Settings):
    try:
        if route_handler in STREAMING:
            return await handler(request)
        async with asyncio.timeout(settings.gateway_request_timeout_s):
            return await handler(request)
    except TimeoutError:
        if request.body_exists and not request.content.is_eof():
            # The client's fault, not the gateway's: it promised more body than it sent.
            raise problem(web.HTTPRequestTimeout, f"the request body did not all arrive in "
                          f"{settings.gateway_request_timeout_s:g} s",
                          [{"location": "(body)", "message": "shorter than its Content-Length "
                            "says, or sent too slowly"}]) from None
        log.warning("request timed out", path=request.path, method=request.method,
                    timeout_s=settings.gateway_request_timeout_s)
        raise problem(web.HTTPServiceUnavailable, f"the request took longer than "
                      f"{settings.gateway_request_timeout_s:g} s; retry") from None


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(api))


def build_app(deps: Deps, bus: Bus | None) -> web.Application:
    settings = deps.settings
    # auto_decompress off: aiohttp's parser would otherwise inflate a body as it arrives,
    # before any handler has checked a token; errors.read_body refuses encoded bodies instead.
    app = web.Application(client_max_size=settings.gateway_max_body_bytes,
                          middlewares=[http_metrics, json_errors, guard],
                          handler_args={"auto_decompress": False})
    app[DEPS] = deps
    if bus is not None:
        app[BUS] = bus
    app[OPERATOR_TOKEN] = operator_token(settings)
    app[LIVE] = Broadcaster()
    app[LIMITER] = FailureLimiter(settings.gateway_auth_failures, settings.gateway_auth_window_s)
    api.add_to(app)
    app.router.add_get("/openapi.json", _openapi)
    return app
