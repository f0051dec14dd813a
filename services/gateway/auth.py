"""Bearer tokens: a VM's own token for its own endpoints, the operator's token for the rest."""

from __future__ import annotations

import hmac
import uuid

from aiohttp import web

from services.gateway.errors import problem
from services.gateway.keys import DEPS, OPERATOR_TOKEN
from shared.store import tokens


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def vm_from_token(request: web.Request, token: str | None) -> uuid.UUID:
    """The VM the token belongs to; 401 when there is no valid token."""
    if not token:
        raise problem(web.HTTPUnauthorized, "a VM bearer token is required")
    async with request.app[DEPS].store.pool.acquire() as conn:
        owner = await tokens.owner(conn, token)
    if owner is None:
        raise problem(web.HTTPUnauthorized, "the token is not valid (unknown, replaced or expired)")
    return owner


async def require_vm(request: web.Request) -> uuid.UUID:
    """The path's VM, if the request carries that VM's own token (403 for another VM's)."""
    owner = await vm_from_token(request, bearer(request))
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


def path_uuid(request: web.Request, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise problem(web.HTTPNotFound, f"{name} {request.match_info[name]!r} is not an id") from None
