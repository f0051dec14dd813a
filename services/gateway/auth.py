"""Bearer tokens: a VM's own token for its own endpoints, the operator's token for the rest."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
import uuid
from collections import deque

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


async def vm_from_token(request: web.Request, token: str | None, conn=None) -> uuid.UUID:
    """The VM the token belongs to; 401 when there is no valid token. `conn`: look it up on
    this connection (the handler's own) instead of taking one from the pool."""
    if not token:
        raise problem(web.HTTPUnauthorized, "a VM bearer token is required")
    if conn is not None:
        owner = await tokens.owner(conn, token)
    else:
        async with request.app[DEPS].store.pool.acquire() as conn:
            owner = await tokens.owner(conn, token)
    if owner is None:
        raise problem(web.HTTPUnauthorized, "the token is not valid (unknown, replaced or expired)")
    return owner


async def require_vm(request: web.Request, conn=None) -> uuid.UUID:
    """The path's VM, if the request carries that VM's own token (403 for another VM's)."""
    owner = await vm_from_token(request, bearer(request), conn)
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


class FailureLimiter:
    """Token failures per client address in a sliding window: past `limit` failures within
    `window` seconds the address is refused (429) until its oldest failure leaves the window.

    Counted in the gateway process's memory: each gateway replica counts on its own and a
    restart forgets; behind a proxy or a shared relay every client has the proxy's address."""

    def __init__(self, limit: int, window: float, clock=time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        cutoff = self.clock() - self.window
        while failures and failures[0] <= cutoff:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures

    def retry_after(self, address: str) -> int:
        """Seconds the address must wait (0: it may try)."""
        failures = self._recent(address)
        if failures is None or len(failures) < self.limit:
            return 0
        return max(1, math.ceil(failures[-self.limit] + self.window - self.clock()))

    def failed(self, address: str) -> None:
        if len(self._failures) > 100_000:  # a flood from many addresses: forget the idle ones
            for known in list(self._failures):
                self._recent(known)
        failures = self._failures.setdefault(address, deque())
        failures.append(self.clock())
        while len(failures) > self.limit:
            failures.popleft()


def path_uuid(request: web.Request, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise problem(web.HTTPNotFound, f"{name} {request.match_info[name]!r} is not an id") from None
