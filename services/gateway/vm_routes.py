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
from services.gateway.api import api
from services.gateway.auth import bearer, path_uuid, require_vm, vm_from_token
from services.gateway.errors import json_response, parse_body, problem
from services.gateway.keys import DEPS
from shared.databases import engine_of
from shared.states import IllegalTransition, VmState
from shared.store import archives, groups, vms

REPLICATION_USER = "ferry_repl"
HOLD_POLL_S = 0.5


@api.route("GET", "/v1/boot/{vm_id}", "iPXE script that boots the VM into the migration image",
           auth="vm-boot", tag="vm")
async def boot_script(request: web.Request) -> web.Response:
    # iPXE cannot send headers, so the boot URL carries the token as a query parameter.
    owner = await vm_from_token(request, request.query.get("token"))
    if owner != path_uuid(request, "vm_id"):
        raise problem(web.HTTPForbidden, "this token belongs to another VM")
    # The gateway as this VM reached it: behind slirp's guestfwd or a namespace relay the VM
    # knows an address that only exists on its own network, and that is what it must call.
    gw = f"{request.scheme}://{request.host}"
    token = request.query["token"]
    args = f"ferry.gateway={gw} ferry.vm={owner} ferry.token={token} console=ttyS0"
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
    vm_id = await require_vm(request)
    text = await request.app[DEPS].store.fetchval(
        "SELECT script FROM vm_scripts WHERE vm_id = $1", vm_id
    )
    if text is None:
        raise problem(web.HTTPServiceUnavailable, "the script is not rendered yet")
    return web.Response(text=text, content_type="text/x-shellscript")


@api.route("POST", "/v1/vms/{vm_id}/state", "state_update: the VM reports its state and step",
           auth="vm", tag="vm", body=m.StateReport, response=m.VmView,
           responses={409: "the VM cannot go to that state from where it is"})
async def report_state(request: web.Request) -> web.Response:
    store = request.app[DEPS].store
    # One pool connection for the whole report (token, transaction, answer), taken once the
    # body is in memory, so that a slow client holds none (bench.gateway counts the round trips).
    await request.read()
    async with store.pool.acquire() as conn:
        vm_id = await require_vm(request, conn)
        report = await parse_body(request, m.StateReport)
        target = VmState(report.state)
        try:
            async with store.transaction(conn=conn) as tx:
                if target == VmState.REPLICATING:
                    await _refuse_before_master(tx.conn, vm_id)
                vm = await vms.transition(tx, vm_id, target, step=report.step,
                                          message=report.message, detail=report.detail)
                if report.message:
                    level = "error" if target == VmState.FAILED else "info"
                    await vms.add_message(tx, vm_id, level, report.message)
        except IllegalTransition as exc:
            if await _applied_before(conn, vm_id, target, report.step):
                return json_response(await _view(conn, vm_id))
            raise problem(web.HTTPConflict, f"refused: {exc}") from None
    # The answer is the VM as the transition left it: no read after the commit.
    return json_response(vm_view(asdict(vm)))


async def _applied_before(conn, vm_id: uuid.UUID, target: VmState, step: str | None) -> bool:
    """A report repeated because its answer was lost (the gateway died after the commit and
    the VM's curl retried) finds the VM moved on by a service (configured -> provisioning,
    provisioned -> ready). It is answered as the first one was, not refused: refusing it
    failed the VM and halted its group (found by tests/chaos). Only that very transition (same
    state and step, recorded before) counts; any other out-of-turn report is still refused."""
    if target == VmState.FAILED:
        return False
    return bool(await conn.fetchval(
        "SELECT true FROM vm_transitions WHERE vm_id = $1 AND to_state = $2"
        " AND step IS NOT DISTINCT FROM $3 LIMIT 1", vm_id, target, step))


async def _refuse_before_master(conn, vm_id: uuid.UUID) -> None:
    status = await _master_status(conn, vm_id)
    if not status.complete:
        raise problem(web.HTTPConflict, f"refused: master {status.master} is not complete yet")


@api.route("POST", "/v1/vms/{vm_id}/messages", "message_update: a log line from the VM",
           auth="vm", tag="vm", body=m.MessageReport, response=m.Accepted)
async def report_message(request: web.Request) -> web.Response:
    store = request.app[DEPS].store
    await request.read()  # as report_state: the pool taken once, the body already read
    async with store.pool.acquire() as conn:
        vm_id = await require_vm(request, conn)
        report = await parse_body(request, m.MessageReport)
        async with store.transaction(conn=conn) as tx:
            await vms.add_message(tx, vm_id, report.level, report.text)
    return json_response(m.Accepted(), 201)


@api.route("GET", "/v1/vms/{vm_id}/master",
           "hold_until_complete: the master's status for a replica, long-polled with ?wait=s",
           auth="vm", tag="vm", response=m.MasterStatus,
           query={"wait": {"type": "number", "minimum": 0, "description": "seconds to hold "
                           "the answer until the master is complete (at most "
                           "FERRY_GATEWAY_LONG_POLL_MAX_S)"}})
async def master_status(request: web.Request) -> web.Response:
    vm_id = await require_vm(request)
    longest = request.app[DEPS].settings.gateway_long_poll_max_s
    try:
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        wait = math.nan
    if not math.isfinite(wait):  # nan would never reach its deadline
        raise problem(web.HTTPBadRequest, "wait must be a number of seconds") from None
    wait = min(max(wait, 0.0), longest)
    deadline = time.monotonic() + wait
    pool = request.app[DEPS].store.pool
    while True:
        async with pool.acquire() as conn:
            status = await _master_status(conn, vm_id)
        if status.complete or time.monotonic() >= deadline:
            return json_response(status)
        await asyncio.sleep(HOLD_POLL_S)


async def _master_status(conn, vm_id: uuid.UUID) -> m.MasterStatus:
    vm = await vms.get(conn, vm_id)
    group = await groups.get(conn, vm.group_id)
    planned = group.parsed_plan().vm(vm.name)
    if not planned.replica_of:
        raise problem(web.HTTPNotFound, f"{vm.name} is not a replica; it has no master")
    master = group.parsed_plan().vm(planned.replica_of)
    done = (await conn.fetchval("SELECT master_complete FROM groups WHERE id = $1", group.id) or {})
    position = done.get(master.name)
    return m.MasterStatus(
        complete=position is not None, master=master.name,
        host=str(master.network.address.ip), port=engine_of(master).default_port,
        log_file=(position or {}).get("log_file"), log_pos=(position or {}).get("log_pos"),
    )


@api.route("GET", "/v1/vms/{vm_id}/replication", "Replication credentials (database VMs only)",
           auth="vm", tag="vm", response=m.ReplicationCredentials)
async def replication_credentials(request: web.Request) -> web.Response:
    vm_id = await require_vm(request)
    row = await request.app[DEPS].store.fetchrow(
        "SELECT v.role, g.replication_password FROM vms v JOIN groups g ON g.id = v.group_id"
        " WHERE v.id = $1", vm_id,
    )
    if row["role"] not in ("db-master", "db-replica"):
        raise problem(web.HTTPForbidden, "only database VMs get replication credentials")
    return json_response(m.ReplicationCredentials(user=REPLICATION_USER,
                                                  password=row["replication_password"]))


@api.route("GET", "/v1/archives/{vm_id}/{archive_id}", "Download one of the VM's archives",
           auth="vm", tag="vm")
async def archive(request: web.Request) -> web.StreamResponse:
    vm_id = await require_vm(request)
    async with request.app[DEPS].store.pool.acquire() as conn:
        row = await archives.one_for_vm(conn, vm_id, request.match_info["archive_id"])
    if row is None or not Path(row["file"]).is_file():
        raise problem(web.HTTPNotFound, "no such archive for this VM")
    return web.FileResponse(row["file"])


@api.route("GET", "/v1/support/{name}", "Support data: migration kernel and initrd, kernel "
           "and modules for the new VMs, base image", auth="vm-boot", tag="vm")
async def support(request: web.Request) -> web.StreamResponse:
    await vm_from_token(request, request.query.get("token") or bearer(request))
    name = request.match_info["name"]
    folder = request.app[DEPS].settings.images_dir.resolve()
    path = (folder / name).resolve()
    if path.parent != folder or not path.is_file() or name.startswith("."):
        raise problem(web.HTTPNotFound, f"no support file {name!r}")
    return web.FileResponse(path)


async def _view(db, vm_id: uuid.UUID) -> m.VmView:
    """The VM as the VM sees it; `db`: a connection or the store."""
    row = await db.fetchrow("SELECT * FROM vms WHERE id = $1", vm_id)
    return vm_view(row)


def vm_view(row) -> m.VmView:
    """`row`: a row of vms, or a store Vm as a dict (what a transition returns)."""
    age = (datetime.now(timezone.utc) - row["state_changed_at"]).total_seconds()
    return m.VmView(
        id=row["id"], name=row["name"], role=row["role"], state=row["state"],
        held_state=row["held_state"], failed_from=row["failed_from"], step=row["step"],
        message=row["message"], state_changed_at=row["state_changed_at"], seconds_in_state=age,
    )
