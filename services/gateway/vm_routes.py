"""What a VM calls while it is rebuilt: its boot script, its configuration script, state and
message updates, the master's status (a replica's hold), its archives and support data."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from aiohttp import web

from services.gateway import models as m
from services.gateway import reports
from services.gateway.api import api
from services.gateway.auth import bearer, path_uuid, require_vm, vm_from_token
from services.gateway.errors import json_response, parse_body, problem, read_body
from services.gateway.keys import DEPS
from shared import host_keys, journey

REPLICATION_USER = "ferry_repl"
HOLD_POLL_S = 0.5


async def body_in(request: web.Request) -> None:
    """A report's body in memory before its one pool connection is taken (token, transaction,
    answer), so that a slow client holds none (bench.gateway counts the round trips), yet
    read only after the token is checked. A small report usually arrives with its headers:
    then there is nothing to wait for and the handler checks the token first. When the body
    is still on its way (a slow client, or one whose Content-Length promises more than it
    sends), the token is checked first on a connection of its own: no one without a valid
    token gets past authentication, however broken the body."""
    if request.content.is_eof():
        return
    async with request.app[DEPS].store.session() as db:
        await require_vm(request, db)
    await read_body(request)


@api.route("GET", "/v1/boot/{vm_id}", "iPXE script that boots the VM into the migration image",
           auth="vm-boot", tag="vm")
async def boot_script(request: web.Request) -> web.Response:
    # iPXE cannot send headers, so the boot URL carries the token as a query parameter.
    async with request.app[DEPS].store.session() as db:
        owner = await vm_from_token(db, request.query.get("token"))
    if owner != path_uuid(request, "vm_id"):
        raise problem(web.HTTPForbidden, "this token belongs to another VM")
    # The gateway as this VM reached it (the migration network's host address, say): the
    # address it must call, whatever the gateway's own settings name.
    gw = f"{request.scheme}://{request.host}"
    token = request.query["token"]
    # no_timer_check: under emulation (TCG) on a loaded host the kernel's early IO-APIC timer
    # check can miss its ticks and panic ("IO-APIC + timer doesn't work!"); the migration
    # kernel lives minutes, and a paravirtual or emulated timer is fine without the check.
    args = (f"ferry.gateway={gw} ferry.vm={owner} ferry.token={token} console=ttyS0"
            " no_timer_check")
    text = (
        "#!ipxe\n"
        f"kernel {gw}/v1/support/migration-vmlinuz?token={token} {args}\n"
        f"initrd {gw}/v1/support/migration-initrd.img?token={token}\n"
        "boot\n"
    )
    return web.Response(text=text, content_type="text/plain")


@api.route("GET", "/v1/vms/{vm_id}/script", "The VM's rendered configuration script",
           auth="vm", tag="vm", responses={503: "not rendered yet; retry"})
async def script(request: web.Request) -> web.Response:
    async with request.app[DEPS].store.session() as db:
        vm_id = await require_vm(request, db)
        text = await db.scripts.get(vm_id)
    if text is None:
        raise problem(web.HTTPServiceUnavailable, "the script is not rendered yet")
    return web.Response(text=text, content_type="text/x-shellscript")


@api.route("POST", "/v1/vms/{vm_id}/state", "state_update: the VM reports its state and step",
           auth="vm", tag="vm", body=m.StateReport, response=m.VmView,
           responses={409: "the VM cannot go to that state from where it is"})
async def report_state(request: web.Request) -> web.Response:
    await body_in(request)
    async with request.app[DEPS].store.session() as db:
        vm_id = await require_vm(request, db)
        report = await parse_body(request, m.StateReport)
        try:
            vm = await reports.report_state(db, vm_id, report.state, report.step,
                                            report.message, report.detail)
        except reports.Refused as exc:
            raise problem(web.HTTPConflict, str(exc)) from None
        if vm is None:  # a repeat of a report applied before: answered as that one was
            return json_response(vm_view(await db.views.vm(vm_id)))
    # The answer is the VM as the transition left it: no read after the commit.
    return json_response(vm_view(asdict(vm)))


@api.route("POST", "/v1/vms/{vm_id}/messages", "message_update: a log line from the VM",
           auth="vm", tag="vm", body=m.MessageReport, response=m.Accepted)
async def report_message(request: web.Request) -> web.Response:
    await body_in(request)  # as report_state: one pool connection, the body already in
    async with request.app[DEPS].store.session() as db:
        vm_id = await require_vm(request, db)
        report = await parse_body(request, m.MessageReport)
        async with db.transaction() as tx:
            await journey.add_message(tx, vm_id, report.level, report.text, step=report.step)
    return json_response(m.Accepted(), 201)


@api.route("POST", "/v1/vms/{vm_id}/heartbeat", "heartbeat: the VM is at work (its phase's "
           "deadline counts from now), at `step` if it names one", auth="vm", tag="vm",
           body=m.Heartbeat, response=m.Accepted)
async def heartbeat(request: web.Request) -> web.Response:
    await body_in(request)  # as report_state: one pool connection, the body already in
    async with request.app[DEPS].store.session() as db:
        vm_id = await require_vm(request, db)  # the token check hears the VM
        beat = await parse_body(request, m.Heartbeat)
        if beat.step is not None:
            await db.vms.heard(vm_id, beat.step)
    return json_response(m.Accepted())


@api.route("POST", "/v1/vms/{vm_id}/host-keys", "The VM's public SSH host keys, which the "
           "cutover pins (a new report replaces the last)", auth="vm", tag="vm",
           body=m.HostKeysReport, response=m.HostKeysView, status=201,
           responses={422: "a line is not a public key of a known type and a sane size"})
async def report_host_keys(request: web.Request) -> web.Response:
    await body_in(request)  # as report_state: one pool connection, the body already in
    async with request.app[DEPS].store.session() as db:
        vm_id = await require_vm(request, db)
        report = await parse_body(request, m.HostKeysReport)
        try:
            keys = host_keys.parse_keys(report.keys)
        except host_keys.BadHostKey as exc:
            raise problem(web.HTTPUnprocessableEntity, "the request body is not valid",
                          [{"location": "keys", "message": str(exc)}]) from None
        await db.host_keys.replace(vm_id, keys)
    return json_response(m.HostKeysView(fingerprints=[str(key) for key in keys]), 201)


@api.route("GET", "/v1/vms/{vm_id}/master",
           "hold_until_complete: the master's status for a replica, long-polled with ?wait=s",
           auth="vm", tag="vm", response=m.MasterStatus,
           query={"wait": {"type": "number", "minimum": 0, "description": "seconds to hold "
                           "the answer until the master is complete (at most "
                           "FERRY_GATEWAY_LONG_POLL_MAX_S)"}})
async def master_status(request: web.Request) -> web.Response:
    store = request.app[DEPS].store
    async with store.session() as db:
        vm_id = await require_vm(request, db)
    longest = request.app[DEPS].settings.gateway_long_poll_max_s
    try:
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        wait = math.nan
    if not math.isfinite(wait):  # nan would never reach its deadline
        raise problem(web.HTTPBadRequest, "wait must be a number of seconds") from None
    wait = min(max(wait, 0.0), longest)
    deadline = time.monotonic() + wait
    while True:
        async with store.session() as db:
            try:
                status = await reports.master_status(db, vm_id)
            except reports.NotAReplica as exc:
                raise problem(web.HTTPNotFound, str(exc)) from None
        if status.complete or time.monotonic() >= deadline:
            return json_response(m.MasterStatus(**asdict(status)))
        await asyncio.sleep(HOLD_POLL_S)


@api.route("GET", "/v1/vms/{vm_id}/replication", "Replication credentials (database VMs only)",
           auth="vm", tag="vm", response=m.ReplicationCredentials)
async def replication_credentials(request: web.Request) -> web.Response:
    async with request.app[DEPS].store.session() as db:
        vm_id = await require_vm(request, db)
        vm = await db.vms.get(vm_id)
        if vm.role not in ("db-master", "db-replica"):
            raise problem(web.HTTPForbidden, "only database VMs get replication credentials")
        password = await db.groups.replication_password(vm.group_id)
    return json_response(m.ReplicationCredentials(user=REPLICATION_USER, password=password))


@api.route("GET", "/v1/archives/{vm_id}/{archive_id}", "Download one of the VM's archives",
           auth="vm", tag="vm")
async def archive(request: web.Request) -> web.StreamResponse:
    async with request.app[DEPS].store.session() as db:
        vm_id = await require_vm(request, db)
        found = await db.archives.one_for_vm(vm_id, request.match_info["archive_id"])
    if found is None or not Path(found.file).is_file():
        raise problem(web.HTTPNotFound, "no such archive for this VM")
    return web.FileResponse(found.file)


@api.route("GET", "/v1/support/{name}", "Support data: migration kernel and initrd, kernel "
           "and modules for the new VMs, base image", auth="vm-boot", tag="vm")
async def support(request: web.Request) -> web.StreamResponse:
    async with request.app[DEPS].store.session() as db:
        await vm_from_token(db, request.query.get("token") or bearer(request))
    name = request.match_info["name"]
    folder = request.app[DEPS].settings.images_dir.resolve()
    path = (folder / name).resolve()
    if path.parent != folder or not path.is_file() or name.startswith("."):
        raise problem(web.HTTPNotFound, f"no support file {name!r}")
    return web.FileResponse(path)


def vm_view(row) -> m.VmView:
    """`row`: a row of vms, or a store Vm as a dict (what a transition returns)."""
    age = (datetime.now(timezone.utc) - row["state_changed_at"]).total_seconds()
    return m.VmView(
        id=row["id"], name=row["name"], role=row["role"], state=row["state"],
        held_state=row["held_state"], failed_from=row["failed_from"], step=row["step"],
        message=row["message"], state_changed_at=row["state_changed_at"], seconds_in_state=age,
        provider=row["provider"], simulated=row["simulated"], system=row["legacy_system"],
        host=row.get("host"), waiting=row.get("waiting"),
        last_word_at=row.get("last_word_at"), last_step=row.get("last_step"),
        host_keys=row.get("host_keys") or [],
    )
