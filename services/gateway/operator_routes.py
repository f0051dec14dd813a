"""The operator's side: submit and inspect groups, resume, retry, cutover, cancel, finalize,
dead letters, retention."""

from __future__ import annotations

import uuid
from dataclasses import asdict

from aiohttp import web

from services.gateway import audit
from services.gateway import models as m
from services.gateway.api import api
from services.gateway.auth import path_uuid
from services.gateway.errors import json_response, parse_body, problem, read_body
from services.gateway.keys import BUS, DEPS
from services.gateway.vm_routes import vm_view
from shared import events as ev
from shared import journey, retention
from shared.bus import dead_letters, replay_dead_letters
from shared.model import Group
from shared.plan import Plan, PlanError, load_plan
from shared.states import GroupStatus, IllegalTransition
from shared.store.groups import GroupExists

MAX_PLAN_BYTES = 1_000_000
MAX_ID = 2**63 - 1  # PostgreSQL's bigint
LATEST_MESSAGES = 50  # a group's page
MESSAGES_LISTED = 1000  # one page of a VM's messages
RUNS_LISTED = 100


@api.route("POST", "/v1/groups", "Submit a plan (YAML or JSON); the group starts its journey",
           auth="operator", role="operator", tag="operator", response=m.Submitted,
           responses={422: "the plan is not valid; nothing was written", 409: "already migrating",
                      413: "the plan is larger than the gateway accepts"},
           body_schema=Plan, status=201, links={
               name: {"operationId": operation, "parameters": {"group": "$response.body#/id"}}
               for name, operation in (("ShowGroup", "show_group"), ("Timeline", "timeline"),
                                       ("Resume", "resume"), ("Cancel", "cancel"))})
async def submit(request: web.Request) -> web.Response:
    raw = await read_body(request)
    try:
        plan = load_plan(raw.decode("utf-8", errors="replace"), source="plan")
    except PlanError as exc:
        problems = [
            {"location": p.location, "message": p.message, "line": p.line, "column": p.column}
            for p in exc.problems
        ]
        raise problem(web.HTTPUnprocessableEntity, "the plan is not valid", problems) from None
    relative = _relative_roots(plan)
    if relative:
        raise problem(web.HTTPUnprocessableEntity, "the plan is not valid", relative)
    store = request.app[DEPS].store
    try:
        async with store.transaction() as tx:
            group_id = await journey.submit(tx, plan)
            await audit.record_in(tx, request, group_id=group_id)
    except GroupExists as exc:
        async with store.session() as db:
            holder = await db.groups.find(plan.group)
        if holder is not None and holder.status == GroupStatus.CANCELLING:
            raise problem(web.HTTPConflict, f"group {plan.group!r} is being cancelled: submit "
                          "it again once it is cancelled") from None
        raise problem(web.HTTPConflict, str(exc)) from None
    return json_response(m.Submitted(id=group_id, name=plan.group), 201)


def _relative_roots(plan) -> list[dict]:
    """The gateway has no folder to resolve a relative source root against (`ferry submit`
    resolves them against the plan file's folder before sending)."""
    return [
        {"location": f"vms[{i}].source.root",
         "message": "must be an absolute path when the plan is posted to the gateway"}
        for i, vm in enumerate(plan.vms)
        if vm.source and vm.source.kind == "local" and not vm.source.root.startswith("/")
    ]


@api.route("GET", "/v1/groups/{group}", "One group (by id or name): its VMs, states and latest "
           "log messages", auth="operator", role="viewer", tag="operator", response=m.GroupDetail)
async def show_group(request: web.Request) -> web.Response:
    async with request.app[DEPS].store.session() as db:
        group = await _find_group(db, request)
        row = await db.views.group(group.id)
        vm_rows = await db.views.vms(group.id)
        messages = await db.views.latest_messages(group.id, LATEST_MESSAGES)
    detail = m.GroupDetail(
        **_summary(row).model_dump(), vms=[vm_view(r) for r in vm_rows],
        messages=[_message(r) for r in messages],
    )
    return json_response(detail)


@api.route("GET", "/v1/vms/{vm_id}/messages", "A VM's log messages (?after=id for new ones)",
           auth="operator", role="viewer", tag="operator", response=m.MessageList,
           query={"after": {"type": "integer", "minimum": 0, "maximum": MAX_ID,
                            "description": "only messages after this id"}})
async def vm_messages(request: web.Request) -> web.Response:
    vm_id = path_uuid(request, "vm_id")
    try:
        after = int(request.query.get("after", "0"))
    except ValueError:
        after = -1
    if not 0 <= after <= MAX_ID:
        raise problem(web.HTTPBadRequest, "after must be a message id (a whole number from 0)",
                      [{"location": "after", "message": "must be a whole number from 0"}])
    async with request.app[DEPS].store.session() as db:
        rows = await db.views.messages_after(vm_id, after, MESSAGES_LISTED)
    return json_response(m.MessageList(messages=[_message(r) for r in rows]))


@api.route("POST", "/v1/groups/{group}/resume", "Lift a halt; held VMs carry on",
           auth="operator", role="operator", tag="operator", response=m.Accepted,
           responses={409: "not halted, or a VM is still failed"})
async def resume(request: web.Request) -> web.Response:
    async with request.app[DEPS].store.transaction() as tx:
        group = await _find_group(tx, request)
        try:
            await journey.resume(tx, group.id)
        except journey.ResumeRefused as exc:
            raise problem(web.HTTPConflict, str(exc)) from None
        await audit.record_in(tx, request, group_id=group.id)
    return json_response(m.Accepted())


@api.route("POST", "/v1/vms/{vm_id}/retry", "Send a failed VM back to redo the phase that failed",
           auth="operator", role="operator", tag="operator", response=m.VmView,
           responses={409: "the VM has not failed"})
async def retry(request: web.Request) -> web.Response:
    vm_id = path_uuid(request, "vm_id")
    try:
        async with request.app[DEPS].store.transaction() as tx:
            vm = await journey.retry(tx, vm_id)
            await audit.record_in(tx, request, group_id=vm.group_id, vm_id=vm_id)
    except LookupError:
        raise problem(web.HTTPNotFound, f"no VM {vm_id}") from None
    except IllegalTransition as exc:
        raise problem(web.HTTPConflict,
                      f"only a failed VM can be retried; it is {exc.current}") from None
    return json_response(vm_view(asdict(vm)))


@api.route("POST", "/v1/groups/{group}/cutover", "Request the cutover of a ready group",
           auth="operator",
           role="operator", tag="operator", body=m.CutoverRequest, response=m.CutoverAccepted,
           responses={409: "the group is not ready"})
async def cutover(request: web.Request) -> web.Response:
    body = await parse_body(request, m.CutoverRequest)
    run_id = uuid.uuid4()
    async with request.app[DEPS].store.transaction() as tx:
        group = await _find_group(tx, request, lock=True)
        if group.status != GroupStatus.READY:
            raise problem(web.HTTPConflict, f"group {group.name} is {group.status}, not ready")
        await tx.cutover_runs.add(run_id, group.id, prepare=body.prepare)
        await tx.publish(ev.CutoverRequested(run_id=str(run_id), prepare=body.prepare,
                                             rehearse_failure_at=body.rehearse_failure_at,
                                             database_mode=body.database_mode),
                         group_id=group.id)
        await audit.record_in(tx, request, group_id=group.id, status=202,
                              detail=f"cutover run {run_id}" + (" (prepare)" if body.prepare
                                                                else ""))
    return json_response(m.CutoverAccepted(run_id=run_id), 202)


@api.route("POST", "/v1/groups/{group}/cancel", "Cancel a group before its cutover: its VMs "
           "deleted through the provider, its archives removed, its VMs' tokens revoked, the "
           "legacy hosts untouched; once cancelled its name may be submitted again. Asked again "
           "while it is cancelling, it retries", auth="operator", role="admin", tag="operator",
           response=m.GroupEnding,
           responses={202: "accepted: the group is cancelling (group.cancelled ends it)",
                      404: "no such group",
                      409: "cut over or being cut over (finalize it instead, or wait), or "
                           "ended already; the error says which"})
async def cancel(request: web.Request) -> web.Response:
    return await _end(request, journey.request_cancel)


@api.route("POST", "/v1/groups/{group}/finalize", "Close a live group: the legacy hosts' "
           "forwarding of the old public addresses kept or removed as the body says, its "
           "archives and VM tokens removed. Asked again while it is finalizing, it retries",
           auth="operator",
           role="admin", tag="operator", body=m.FinalizeRequest, response=m.GroupEnding,
           responses={202: "accepted: the group is finalizing (group.finalized ends it)",
                      404: "no such group", 409: "not live; the error says what instead"})
async def finalize(request: web.Request) -> web.Response:
    body = await parse_body(request, m.FinalizeRequest)
    return await _end(request, lambda tx, group: journey.request_finalize(tx, group,
                                                                          body.forwarding))


async def _end(request: web.Request, ask) -> web.Response:
    """Ask for the path's group to end (`ask`: journey.request_cancel or _finalize, with the
    transaction and the group, locked); 409 with the reason when its state refuses."""
    async with request.app[DEPS].store.transaction() as tx:
        group = await _find_group(tx, request, lock=True)
        try:
            group = await ask(tx, group)
        except journey.Refused as exc:
            raise problem(web.HTTPConflict, str(exc)) from None
        await audit.record_in(tx, request, group_id=group.id, status=202)
    return json_response(m.GroupEnding(id=group.id, name=group.name, status=group.status), 202)


@api.route("POST", "/v1/retention/prune", "Delete now what the retention settings let go "
           "(delivered outbox events, old inbox records, old VM messages of closed groups), or "
           "count it (dry_run); the coordinator also does this periodically",
           auth="operator", role="admin", tag="operator", body=m.PruneRequest, response=m.Pruned)
async def prune(request: web.Request) -> web.Response:
    body = await parse_body(request, m.PruneRequest)
    deps = request.app[DEPS]
    found = await retention.prune(deps.store, deps.settings, dry_run=body.dry_run)
    return json_response(m.Pruned(dry_run=body.dry_run, **asdict(found)))


@api.route("GET", "/v1/needs-provisioning", "Configured VMs waiting to be provisioned (for an "
           "external provider)", auth="operator",
           role="viewer", tag="provider", response=m.NeedsProvisioning)
async def needs_provisioning(request: web.Request) -> web.Response:
    async with request.app[DEPS].store.session() as db:
        rows = await db.views.needs_provisioning()
    return json_response(m.NeedsProvisioning(vms=[vm_view(r) for r in rows]))


@api.route("GET", "/v1/dead-letters/{service}", "A service's dead letters with their errors",
           auth="operator", role="viewer", tag="operator", response=m.DeadLetters)
async def list_dead_letters(request: web.Request) -> web.Response:
    service = _service(request)
    found = await dead_letters(request.app[BUS], service)
    return json_response(m.DeadLetters(service=service, messages=found))


@api.route("POST", "/v1/dead-letters/{service}/replay", "Put a service's dead letters (all, or "
           "?id=message id) back on its queue", auth="operator",
           role="admin", tag="operator", response=m.Replayed,
           query={"id": {"type": "string", "description": "replay only the message with this id"}})
async def replay(request: web.Request) -> web.Response:
    service = _service(request)
    moved = await replay_dead_letters(request.app[BUS], service, request.query.get("id"))
    return json_response(m.Replayed(replayed=moved))


def _service(request: web.Request) -> str:
    service = request.match_info["service"]
    services = request.app[DEPS].topology.services
    if service not in services:
        raise problem(web.HTTPNotFound, f"no service {service!r}; one of {', '.join(services)}")
    return service


async def _find_group(db, request: web.Request, lock: bool = False) -> Group:
    """The path's group, by id or name; 404 when there is none. `db`: a store session."""
    ref = request.match_info["group"]
    group = await db.groups.find(ref, lock=lock)
    if group is None:
        raise problem(web.HTTPNotFound, f"no group {ref!r}")
    return group


def _summary(row) -> m.GroupSummary:
    """`row`: a group as views.groups() lists it (with its VMs counted by state)."""
    states = row["states"]
    return m.GroupSummary(
        id=row["id"], name=row["name"], status=row["status"],
        halted_reason=row["halted_reason"], created_at=row["created_at"],
        vm_count=sum(states.values()), states=states, simulated=row["simulated"],
        closed_at=row["closed_at"], closing_error=row["closing_error"],
        legacy_forwarding=row["legacy_forwarding"],
    )


def _message(row) -> m.MessageView:
    return m.MessageView(id=row["id"], vm_id=row["vm_id"], level=row["level"], text=row["text"],
                         at=row["at"])


@api.route("GET", "/v1/groups/{group}/timeline", "Each VM's phases with the time spent in each",
           auth="operator", role="viewer", tag="operator", response=m.Timeline)
async def timeline(request: web.Request) -> web.Response:
    async with request.app[DEPS].store.session() as db:
        group = await _find_group(db, request)
        rows = await db.views.timeline(group.id)
    by_vm: dict[str, list] = {}
    for row in rows:
        by_vm.setdefault(row["name"], []).append(row)
    return json_response(m.Timeline(group=group.name, vms=[
        m.VmTimeline(vm=name, phases=_phases(entries)) for name, entries in by_vm.items()
    ]))


def _phases(entries) -> list[m.Phase]:
    phases = []
    for current, following in zip(entries, entries[1:] + [None]):
        seconds = (following["at"] - current["at"]).total_seconds() if following else None
        phases.append(m.Phase(state=current["to_state"], step=current["step"],
                              entered_at=current["at"], seconds=seconds))
    return phases


@api.route("GET", "/v1/groups/{group}/cutover", "The group's cutover runs, newest first, with "
           "their steps, timings and measured downtime", auth="operator",
           role="viewer", tag="operator",
           response=m.CutoverRuns)
async def cutover_runs(request: web.Request) -> web.Response:
    async with request.app[DEPS].store.session() as db:
        group = await _find_group(db, request)
        runs = await db.views.cutover_runs(group.id, RUNS_LISTED)
        steps = await db.views.cutover_steps([r["id"] for r in runs])
    by_run: dict[uuid.UUID, list[m.CutoverStepView]] = {}
    for s in steps:
        seconds = s["seconds"]
        if seconds is None and s["started_at"] and s["finished_at"]:
            seconds = (s["finished_at"] - s["started_at"]).total_seconds()
        by_run.setdefault(s["run_id"], []).append(m.CutoverStepView(
            position=s["position"], name=s["name"], status=s["status"],
            started_at=s["started_at"], finished_at=s["finished_at"], seconds=seconds,
            error=s["error"], detail=s["detail"], undone_at=s["undone_at"],
            undo_error=s["undo_error"],
        ))
    return json_response(m.CutoverRuns(group=group.name, runs=[
        m.CutoverRunView(
            id=r["id"], prepare=r["prepare"], status=r["status"], reason=r["reason"],
            downtime_s=r["downtime_s"], created_at=r["created_at"],
            finished_at=r["finished_at"], steps=by_run.get(r["id"], []),
        ) for r in runs
    ]))
