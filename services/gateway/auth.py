"""Bearer tokens: a VM's own token for its own endpoints, the operator's token for the rest."""

from __future__ import annotations

import hashlib
import hmac
import uuid

from aiohttp import web

from services.gateway.errors import problem
from services.gateway.keys import OPERATOR_TOKEN


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def vm_from_token(db, token: str | None) -> uuid.UUID:
    """The VM the token belongs to; 401 when there is no valid token. `db`: the request's
    session on the store."""
    if not token:
        raise problem(web.HTTPUnauthorized, "a VM bearer token is required")
    owner = await db.tokens.owner(token)
    if owner is None:
        raise problem(web.HTTPUnauthorized, "the token is not valid (unknown, replaced or expired)")
    return owner


async def require_vm(request: web.Request, db) -> uuid.UUID:
    """The path's VM, if the request carries that VM's own token (403 for another VM's)."""
    owner = await vm_from_token(db, bearer(request))
    wanted = path_uuid(request, "vm_id")
    if owner != wanted:
        raise problem(web.HTTPForbidden, "this token belongs to another VM")
    return wanted


def require_operator(request: web.Request) -> None:
    token = bearer(request)
    if not token:
        raise problem(web.HTTPUnauthorized, "an operator bearer token is required")
    if not hmac.compare_digest(token.encode(), request.app[OPERATOR_TOKEN].encode()):
        raise problem(web.HTTPForbidden, "the operator token is not valid")


# The web UI's live updates come over EventSource, which cannot send an Authorization header.
# Rather than accept the operator token in a query string (where it lands in access logs,
# proxies and the browser's history), the UI posts its token once with the usual bearer header
# to /v1/ui/session, which sets this cookie: HttpOnly (no script reads it), SameSite=Strict and
# Path=/v1/events (the browser sends it to the event stream only). Its value is derived from
# the operator token, not the token itself, and it is accepted by the read-only event stream
# alone: every other operator endpoint still wants the bearer header, so the cookie cannot be
# used for cross-site request forgery of an action. A new operator token invalidates it.
EVENTS_COOKIE = "ferry_events"
EVENTS_PATH = "/v1/events"


def events_cookie_value(operator_token: str) -> str:
    purpose = b"ferry web UI event stream"
    return hmac.new(operator_token.encode(), purpose, hashlib.sha256).hexdigest()


def require_operator_or_events_cookie(request: web.Request) -> None:
    """The event stream: the operator's bearer token, or the web UI's event-stream cookie."""
    cookie = request.cookies.get(EVENTS_COOKIE)
    if bearer(request) is None and cookie:
        expected = events_cookie_value(request.app[OPERATOR_TOKEN])
        if not hmac.compare_digest(cookie.encode(), expected.encode()):
            raise problem(web.HTTPForbidden, "the event-stream cookie is not valid; sign in again")
        return
    require_operator(request)


def path_uuid(request: web.Request, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise problem(web.HTTPNotFound, f"{name} {request.match_info[name]!r} is not an id") from None
