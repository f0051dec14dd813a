"""Archiver: every VM of a submitted group is archived (paths and database dumps), one
`archive.ready` per VM."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from shared import events as ev
from shared.events import Envelope
from shared.plan import VM
from shared.service import Context, Router
from shared.states import GroupStatus, VmState
from shared.store import groups, vms
from services.archiver.archive import (
    ArchiveError, ArchiveResult, LocalTree, archive_path, remove_abandoned_partials,
)
from services.archiver.dumps import DatabaseSource, DumpError, dump_database
from services.archiver.manifest import write_manifest

router = Router("archiver")


@router.on("group.submitted")
@router.on("group.resumed")
async def request_archives(event: Envelope, ctx: Context) -> None:
    """One archive request per planned VM, so archiver replicas share the work per VM."""
    async with ctx.transaction() as tx:
        for vm in await vms.of_group(tx.conn, event.group_id):
            if vm.state == VmState.PLANNED:
                await tx.publish(ev.ArchiveRequested(), group_id=event.group_id, vm_id=vm.id)


@router.on("archive.requested")
async def archive_vm(event: Envelope, ctx: Context) -> None:
    assert event.vm_id
    async with ctx.step() as tx:
        vm = await vms.get(tx.conn, event.vm_id, lock=True)
        if vm is None:
            return
        if vm.state == VmState.PLANNED and vm.group_status == GroupStatus.ACTIVE:
            vm = await vms.transition(tx, vm.id, VmState.ARCHIVING, step="archive")
        group = await groups.get(tx.conn, event.group_id)
    if vm.state != VmState.ARCHIVING or group is None:
        return  # archived already, held by a halt, or failed: nothing to do here
    planned = group.parsed_plan().vm(vm.name)
    try:
        results = await _take_archives(planned, _vm_dir(ctx, group.id, vm.name), vm.id)
    except (ArchiveError, DumpError) as exc:
        async with ctx.transaction() as tx:
            if (await vms.get(tx.conn, vm.id, lock=True)).state == VmState.ARCHIVING:
                await vms.transition(tx, vm.id, VmState.FAILED, step="archive", message=str(exc))
        return
    async with ctx.transaction() as tx:
        vm = await vms.get(tx.conn, vm.id, lock=True)
        if vm.state != VmState.ARCHIVING:
            return  # a duplicate delivery got here first
        items = [await _record(tx, vm.id, result) for result in results]
        await vms.transition(tx, vm.id, VmState.ARCHIVED, step="archive")
        await tx.publish(ev.ArchiveReady(archives=items), group_id=group.id, vm_id=vm.id)


def _vm_dir(ctx: Context, group_id: uuid.UUID, vm_name: str) -> Path:
    folder = ctx.settings.archive_root / str(group_id) / vm_name
    folder.mkdir(parents=True, exist_ok=True)
    remove_abandoned_partials(folder)
    return folder


def archive_id(vm_id: uuid.UUID, kind: str, source: str) -> str:
    """Stable per (VM, kind, source), so a redone archive replaces its own record."""
    return "a" + hashlib.sha256(f"{vm_id}:{kind}:{source}".encode()).hexdigest()[:20]


async def _take_archives(planned: VM, folder: Path, vm_id: uuid.UUID) -> list[ArchiveResult]:
    results: list[ArchiveResult] = []
    if planned.source is None:
        return results  # a new VM: nothing to carry over
    if planned.source.kind != "local":
        raise ArchiveError(f"{planned.name}: source kind {planned.source.kind!r} is not supported yet")
    tree = LocalTree(Path(planned.source.root or "/"))
    for spec in planned.archives:
        dest = folder / f"{archive_id(vm_id, 'path', spec.path)}.tar.zst"
        results.append(await archive_path(tree, spec.path, list(spec.excludes), dest))
    for db in planned.databases:
        dest = folder / f"{archive_id(vm_id, 'database', db.name)}.sql.zst"
        source = DatabaseSource(
            engine=db.engine, name=db.name, host=db.host, port=db.effective_port, user=db.user,
            password=os.environ.get(db.password_env) if db.password_env else None,
        )
        results.append(await dump_database(source, dest))
    write_manifest(results, folder)
    return results


async def _record(tx, vm_id: uuid.UUID, result: ArchiveResult) -> ev.ArchiveItem:
    source = result.source_path
    item_id = archive_id(vm_id, result.kind, source)
    await tx.conn.execute(
        "INSERT INTO archives (id, vm_id, kind, source, engine, file, sha256, size)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (id) DO UPDATE SET file = $6, sha256 = $7, size = $8, created_at = now()",
        item_id, vm_id, result.kind, source, getattr(result, "engine", None), str(result.file),
        result.sha256, result.size,
    )
    return ev.ArchiveItem(id=item_id, kind=result.kind, source=source, sha256=result.sha256,
                          size=result.size)
