"""Bearer tokens: a VM's own token for its own endpoints, an operator token (with its role)
for the rest."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass

from aiohttp import web

from services.gateway.errors import problem
from services.gateway.keys import OPERATOR_TOKEN
from shared.roles import BOOTSTRAP, BOOTSTRAP_ROLE, NAME, ROLES
from shared.store.operator_tokens import token_hash


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


@dataclass(frozen=True)
class Actor:
    """Who an operator request comes from: its token's name and role."""
    name: str
    role: str
    token_hash: bytes


# Where the gateway keeps the request's Actor once its token is checked (see app.guard).
ACTOR = web.RequestKey("actor", Actor)


def actor(request: web.Request) -> Actor:
    """The request's operator, checked by the gateway before the handler ran."""
    return request[ACTOR]


async def operator_of(request: web.Request, store, cookie_accepted: bool = False) -> Actor:
    """The operator token's holder: the bootstrap token (configured, compared in constant
    time) or a stored, unrevoked one (one lookup by its unique hash, nothing cached, so a
    revoked token is refused on its very next request): 401 without a token, 403 for one
    that is not valid. With `cookie_accepted` (the event stream), the web UI's cookie stands
    for the token."""
    token = bearer(request)
    cookie = request.cookies.get(EVENTS_COOKIE)
    if token is None and cookie and cookie_accepted:
        async with store.session() as db:
            return await _cookie_holder(request, db, cookie)
    if not token:
        raise problem(web.HTTPUnauthorized, "an operator bearer token is required")
    bootstrap = request.app[OPERATOR_TOKEN]
    if hmac.compare_digest(token.encode(), bootstrap.encode()):
        return Actor(BOOTSTRAP, BOOTSTRAP_ROLE, token_hash(bootstrap))
    async with store.session() as db:
        holder = await db.operator_tokens.holder(token)
    if holder is None:
        raise problem(web.HTTPForbidden, "the operator token is not valid (unknown or revoked)")
    return Actor(holder.name, holder.role, holder.token_hash)


def refuse_role(route_role: str, held: Actor) -> web.HTTPException:
    return problem(web.HTTPForbidden, f"this needs the {route_role} role; token "
                   f"{held.name!r} has the {held.role} role",
                   [{"location": "Authorization", "message": f"needs role {route_role} "
                     f"(or higher: {' < '.join(ROLES)})"}])


# The web UI's live updates come over EventSource, which cannot send an Authorization header.
# Rather than accept a token in a query string (where it lands in access logs, proxies and the
# browser's history), the UI posts its token once with the usual bearer header to
# /v1/ui/session, which sets this cookie: HttpOnly (no script reads it), SameSite=Strict and
# Path=/v1/events (the browser sends it to the event stream only). It holds the token's name
# and a MAC of the name and the token's hash keyed with the bootstrap token, not the token
# itself; it is accepted by the read-only event stream alone, so it cannot be used for
# cross-site request forgery of an action. Revoking the token (or a new bootstrap token)
# invalidates it: the stream looks the name up each time it is opened.
EVENTS_COOKIE = "ferry_events"
EVENTS_PATH = "/v1/events"


def events_cookie_value(bootstrap: str, held: Actor) -> str:
    message = b"ferry web UI event stream\0" + held.name.encode() + b"\0" + held.token_hash
    mac = hmac.new(bootstrap.encode(), message, hashlib.sha256).hexdigest()
    return f"{held.name}:{mac}"


async def _cookie_holder(request: web.Request, db, cookie: str) -> Actor:
    refused = problem(web.HTTPForbidden, "the event-stream cookie is not valid; sign in again")
    name, _, _ = cookie.rpartition(":")
    bootstrap = request.app[OPERATOR_TOKEN]
    if name == BOOTSTRAP:
        held = Actor(BOOTSTRAP, BOOTSTRAP_ROLE, token_hash(bootstrap))
    else:
        holder = await db.operator_tokens.current(name) if NAME.fullmatch(name) else None
        if holder is None:
            raise refused
        held = Actor(holder.name, holder.role, holder.token_hash)
    if not hmac.compare_digest(cookie.encode(), events_cookie_value(bootstrap, held).encode()):
        raise refused
    return held


def path_uuid(request: web.Request, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise problem(web.HTTPNotFound, f"{name} {request.match_info[name]!r} is not an id") from None
