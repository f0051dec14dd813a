"""Operators with roles: the named tokens (admin), who a token is, and the audit trail."""

from __future__ import annotations

from aiohttp import web

from services.gateway import audit
from services.gateway import models as m
from services.gateway.api import api
from services.gateway.auth import actor
from services.gateway.errors import json_response, parse_body, problem
from services.gateway.keys import DEPS
from services.gateway.listing_routes import group_of, listing_problem
from shared import listing
from shared.roles import BOOTSTRAP
from shared.store.operator_tokens import NameTaken


@api.route("GET", "/v1/whoami", "The presented token's name and role (the web UI shows only "
           "what the role may do)", auth="operator", role="viewer", tag="access",
           response=m.WhoAmI)
async def whoami(request: web.Request) -> web.Response:
    held = actor(request)
    return json_response(m.WhoAmI(name=held.name, role=held.role))


@api.route("GET", "/v1/tokens", "The named operator tokens, revoked ones included (never the "
           "tokens themselves)", auth="operator", role="admin", tag="access",
           response=m.TokenList)
async def list_tokens(request: web.Request) -> web.Response:
    async with request.app[DEPS].store.session() as db:
        rows = await db.operator_tokens.listed()
    return json_response(m.TokenList(tokens=[m.TokenView(**dict(r)) for r in rows]))


@api.route("POST", "/v1/tokens", "Make a named operator token with a role; the answer holds "
           "the token, shown this once", auth="operator", role="admin", tag="access",
           body=m.TokenRequest, response=m.TokenCreated, status=201,
           responses={409: "the name is taken (by a token, revoked or not, or the bootstrap "
                      "token's)"},
           links={"Revoke": {"operationId": "revoke_token",
                             "parameters": {"name": "$response.body#/name"}}})
async def create_token(request: web.Request) -> web.Response:
    body = await parse_body(request, m.TokenRequest)
    taken = problem(web.HTTPConflict, f"the token name {body.name!r} is taken (a name is never "
                    "reused, even once revoked); choose another",
                    [{"location": "name", "message": "is taken"}])
    if body.name == BOOTSTRAP:
        raise taken
    async with request.app[DEPS].store.transaction() as tx:
        try:
            token = await tx.operator_tokens.create(body.name, body.role, actor(request).name)
        except NameTaken:
            raise taken from None
        row = next(r for r in await tx.operator_tokens.listed() if r["name"] == body.name)
        await audit.record_in(tx, request, detail=f"made token {body.name!r} ({body.role})")
    return json_response(m.TokenCreated(**dict(row), token=token), 201)


@api.route("DELETE", "/v1/tokens/{name}", "Revoke a named operator token: refused from its "
           "next request on", auth="operator", role="admin", tag="access",
           response=m.TokenView,
           responses={404: "no token of that name",
                      409: "the bootstrap token is configuration: change FERRY_OPERATOR_TOKEN "
                      "(or the state dir's operator-token) and restart the gateway"})
async def revoke_token(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name == BOOTSTRAP:
        raise problem(web.HTTPConflict, "the bootstrap token is not stored but configured: "
                      "change FERRY_OPERATOR_TOKEN (or the state dir's operator-token) and "
                      "restart the gateway to replace it")
    async with request.app[DEPS].store.transaction() as tx:
        row = await tx.operator_tokens.revoke(name)
        if row is None:
            raise problem(web.HTTPNotFound, f"no operator token named {name!r}")
        await audit.record_in(tx, request, detail=f"revoked token {name!r}")
    return json_response(m.TokenView(**dict(row)))


@api.route("GET", "/v1/audit", "The audit trail, newest first: each action an operator token "
           "asked for (and each refused by role), with its name, role, time, route and status",
           auth="operator", role="viewer", tag="access", response=m.AuditPage,
           query={"group": {"type": "string", "description": "only this group's lines (its id, "
                            "or the name of its newest submission)"},
                  "limit": {"type": "integer", "minimum": 1, "maximum": listing.MAX_LIMIT,
                            "description": f"the most lines on this page (default "
                            f"{listing.DEFAULT_LIMIT}, at most {listing.MAX_LIMIT})"},
                  "cursor": {"type": "string", "description": "where the page starts: the "
                             "next_cursor of the page before (opaque)"}},
           responses={400: "a parameter is not valid (the error names it)",
                      404: "no such group"})
async def audit_trail(request: web.Request) -> web.Response:
    try:
        limit = listing.parse_limit(_one(request, "limit"))
        after = listing.decode_cursor("audit", _one(request, "cursor"))
    except listing.ListingError as exc:
        raise listing_problem(exc) from None
    ref = _one(request, "group")
    async with request.app[DEPS].store.session() as db:
        group = await group_of(db, ref) if ref is not None else None
        rows = await db.audit.page(group.id if group else None, limit,
                                   after[0] if after else None)
    cursor = listing.next_cursor("audit", rows, limit, lambda r: (r["id"],))
    lines = [m.AuditEntry(**{k: v for k, v in dict(r).items() if k != "group_name"},
                          group=r["group_name"]) for r in rows[:limit]]
    return json_response(m.AuditPage(lines=lines, limit=limit, next_cursor=cursor))


def _one(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise problem(web.HTTPBadRequest, f"{name} is given more than once",
                      [{"location": name, "message": "is given more than once"}])
    return values[0] if values else None
