"""Listings at fleet scale: groups and VMs a page at a time (limit, opaque cursor, the total
matching the filter, a filter by status and by name), and the fleet's counts for the overview.
What a page may ask for is checked in shared/listing.py; the queries are the store's views."""

from __future__ import annotations

from aiohttp import web

from services.gateway import models as m
from services.gateway.api import api
from services.gateway.errors import json_response, problem
from services.gateway.keys import DEPS
from services.gateway.operator_routes import _summary
from services.gateway.vm_routes import vm_view
from shared import listing
from shared.plan_errors import storable
from shared.states import GroupStatus, VmState


def _query(what: str, statuses) -> dict[str, dict]:
    """The listing's query parameters, for the OpenAPI document."""
    return {
        "limit": {"type": "integer", "minimum": 1, "maximum": listing.MAX_LIMIT,
                  "description": f"the most {what} on this page (default "
                                 f"{listing.DEFAULT_LIMIT}, at most {listing.MAX_LIMIT})"},
        "cursor": {"type": "string", "description": "where the page starts: the next_cursor "
                   "of the page before (opaque); none for the first page"},
        "status": {"type": "string", "description": "only these, comma-separated or the "
                   f"parameter repeated; one of {', '.join(sorted(statuses))}"},
        "name": {"type": "string", "maxLength": listing.MAX_NAME,
                 "description": "only those whose name contains this text (case-insensitive; "
                 "% and _ are plain characters)"},
    }


_BAD = "a parameter of the listing is not valid (the error names it and says what it must be)"


def _page(request: web.Request, kind: str, statuses) -> listing.PageRequest:
    query = {key: request.query.getall(key) for key in set(request.query.keys())}
    try:
        return listing.page_request(kind, query, statuses)
    except listing.ListingError as exc:
        raise listing_problem(exc) from None


def listing_problem(exc: listing.ListingError) -> web.HTTPException:
    """A 400 naming the query parameter (limit, cursor, status, name) that is not valid."""
    return problem(web.HTTPBadRequest, f"{exc.location} {exc.message}",
                   [{"location": exc.location, "message": exc.message}])


@api.route("GET", "/v1/groups", "Groups a page at a time, newest first, with their VMs counted "
           "by state; filtered by status and name", auth="operator", role="viewer", tag="operator",
           response=m.GroupList, query=_query("groups", [s.value for s in GroupStatus]),
           responses={400: _BAD})
async def list_groups(request: web.Request) -> web.Response:
    page = _page(request, "groups", [s.value for s in GroupStatus])
    async with request.app[DEPS].store.session() as db:
        rows, total = await db.views.groups(page)
    cursor = listing.next_cursor("groups", rows, page.limit, lambda r: (r["created_at"], r["id"]))
    return json_response(m.GroupList(groups=[_summary(r) for r in rows[:page.limit]],
                                     total=total, limit=page.limit, next_cursor=cursor))


@api.route("GET", "/v1/vms", "VMs across groups (or of one: ?group=) a page at a time, newest "
           "group first, then in plan order; filtered by state and name", auth="operator",
           role="viewer",
           tag="operator", response=m.VmList,
           query={"group": {"type": "string", "description": "only this group's VMs (its id, "
                            "or the name of its newest submission)"},
                  **_query("VMs", [s.value for s in VmState])},
           responses={400: _BAD, 404: "no such group"})
async def list_vms(request: web.Request) -> web.Response:
    page = _page(request, "vms", [s.value for s in VmState])
    ref = request.query.get("group")
    async with request.app[DEPS].store.session() as db:
        group = await group_of(db, ref) if ref is not None else None
        rows, total = await db.views.vms_listed(page, group.id if group else None)
    cursor = listing.next_cursor("vms", rows, page.limit,
                          lambda r: (r["created_at"], r["group_id"], r["position"]))
    vms = [m.VmListed(**vm_view(r).model_dump(), group_id=r["group_id"], group=r["group_name"])
           for r in rows[:page.limit]]
    return json_response(m.VmList(vms=vms, total=total, limit=page.limit, next_cursor=cursor))


async def group_of(db, ref: str):
    """The group a `?group=` names (its id, or the name of its newest submission); 400 or 404."""
    if len(ref) > listing.MAX_NAME or not storable(ref):
        raise problem(web.HTTPBadRequest, "group must be a group's id or name",
                      [{"location": "group", "message": "must be a group's id or name"}])
    group = await db.groups.find(ref)
    if group is None:
        raise problem(web.HTTPNotFound, f"no group {ref!r}",
                      [{"location": "group", "message": "no such group"}])
    return group


@api.route("GET", "/v1/fleet", "The fleet at a glance: groups counted by status and VMs by "
           "state, across all groups", auth="operator",
           role="viewer", tag="operator", response=m.Fleet)
async def fleet(request: web.Request) -> web.Response:
    async with request.app[DEPS].store.session() as db:
        groups = {r["status"]: r["n"] for r in await db.views.group_statuses()}
        vms = {r["state"]: r["n"] for r in await db.views.vm_states()}
    return json_response(m.Fleet(groups=sum(groups.values()), vms=sum(vms.values()),
                                 group_statuses=groups, vm_states=vms))
