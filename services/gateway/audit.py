"""Recording operator actions in the audit trail. An action's line is written in the
transaction of the action itself where the handler has one (it commits with the action or not
at all: record_in); otherwise, and for every refusal, the gateway writes it right after the
answer is decided (record_after, from app.guard)."""

from __future__ import annotations

import uuid

from aiohttp import web

from services.gateway.api import Route
from services.gateway.auth import ACTOR, Actor
from services.gateway.keys import DEPS
from shared.logging import get_logger
from shared.store.audit import AuditLine

log = get_logger(__name__)

ROUTE = web.RequestKey("route", Route)  # the request's route, set by app.guard
AUDITED = web.RequestKey("audited", int)  # the status record_in wrote the request's line with


def _line(request: web.Request, held: Actor, status: int, group_id: uuid.UUID | None,
          vm_id: uuid.UUID | None, detail: str | None) -> AuditLine:
    return AuditLine(actor=held.name, role=held.role, method=request.method,
                     route=request.match_info.route.resource.canonical, path=request.path,
                     status=status, group_id=group_id, vm_id=vm_id, detail=detail)


async def record_in(tx, request: web.Request, *, group_id: uuid.UUID | None = None,
                    vm_id: uuid.UUID | None = None, detail: str | None = None,
                    status: int | None = None) -> None:
    """The action's line, in the action's transaction `tx`: call it last in the transaction,
    with the status the handler will answer (default: the route's success status)."""
    status = status or request[ROUTE].status
    await tx.audit.record(_line(request, request[ACTOR], status, group_id, vm_id, detail))
    request[AUDITED] = status


async def record_after(request: web.Request, held: Actor, status: int,
                       detail: str | None = None) -> None:
    """The line of a request whose action did not write it (refused, failed, or an action
    outside the store), naming the group or VM of its path when there is one. A trail that
    cannot be written is logged, not raised: the answer is decided already."""
    try:
        async with request.app[DEPS].store.session() as db:
            group_id, vm_id = await _subject(db, request)
            await db.audit.record(_line(request, held, status, group_id, vm_id, detail))
    except Exception as exc:  # noqa: BLE001 - see above
        log.warning("audit line not written", actor=held.name, path=request.path,
                    status=status, error=f"{type(exc).__name__}: {exc}")


async def _subject(db, request: web.Request) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    """The group and VM the path names, if they exist."""
    info = request.match_info
    if "group" in info:
        group = await db.groups.find(info["group"])
        return (group.id if group else None), None
    if "vm_id" in info:
        try:
            vm_id = uuid.UUID(info["vm_id"])
        except ValueError:
            return None, None
        vm = await db.vms.get(vm_id)
        return (vm.group_id, vm.id) if vm else (None, None)
    return None, None
