"""Archiver: every VM of a submitted group is archived (paths and database dumps), one
`archive.ready` per VM."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Awaitable, Callable

from shared import archive_store
from shared import events as ev
from shared import journey
from shared.databases import database_source, engine
from shared.logging import get_logger
from shared.plan import VM
from shared.service import Context, Router
from shared.settings import Settings
from shared.states import VmState
from shared.systems import HostSystem
from shared.store.archives import ArchiveRecord
from services.archiver import admission
from services.archiver.archive import (
    ArchiveError, ArchiveResult, LocalTree, TreeSource, archive_path, archive_stream_cap,
    remove_abandoned_partials,
)
from services.archiver.dumps import DumpError, dump_database, dump_globals, probe_server
from services.archiver.manifest import write_manifest
from services.archiver.ssh import SshTree, dump_database_over_ssh
from services.archiver.system import read_host_system

router = Router("archiver")
log = get_logger(__name__)

# Told what the archiver starts on next ("archiving /data"): the VM's word while it is archived.
Progress = Callable[[str], Awaitable[None]] | None


@router.on(ev.GroupSubmitted)
async def archive_submitted_group(event: ev.GroupSubmitted, ctx: Context) -> None:
    await _request_archives(ctx)


@router.on(ev.GroupResumed)
async def archive_resumed_group(event: ev.GroupResumed, ctx: Context) -> None:
    """What the halt held before archiving is archived now."""
    await _request_archives(ctx)


async def _request_archives(ctx: Context) -> None:
    """The group's planned VMs are admitted to archiving as far as its site's limit allows
    (services/archiver/admission.py), one archive request per VM, so archiver replicas share
    the work per VM."""
    async with ctx.transaction() as tx:
        group = await tx.groups.get(ctx.group_id)
        if group is not None:
            await admission.admit(tx, ctx.settings, group.parsed_plan().site)


@router.on(ev.GroupCancelled)
async def admit_after_cancel(event: ev.GroupCancelled, ctx: Context) -> None:
    """A cancelled group's archives stopped: VMs of its site waiting for a slot go on."""
    await _request_archives(ctx)


@router.on(ev.ArchiveRequested)
async def archive_vm(event: ev.ArchiveRequested, ctx: Context) -> None:
    assert ctx.vm_id
    async with ctx.guarded_transaction() as tx:
        vm = await tx.vms.get(ctx.vm_id)
        group = await tx.groups.get(ctx.group_id)
    if vm is None or group is None:
        return
    site = group.parsed_plan().site
    if vm.state == VmState.PLANNED:
        # Requested before admission existed (or by hand): it waits for a slot like the rest.
        async with ctx.transaction() as tx:
            await admission.admit(tx, ctx.settings, site)
        return
    if vm.state != VmState.ARCHIVING:
        return  # archived already, held by a halt, or failed: nothing to do here
    planned = group.parsed_plan().vm(vm.name)

    async def progress(step: str) -> None:
        # The archiver's progress is the VM's word in archiving: its deadline counts per item.
        async with ctx.store.session() as db:
            await db.vms.heard(vm.id, step)

    try:
        with archive_stream_cap(ctx.settings.archive_bandwidth_bytes_s):
            results, system = await _take_archives(planned, _vm_dir(ctx, group.id, vm.name),
                                                   vm.id, ctx.settings, progress)
    except (ArchiveError, DumpError) as exc:
        async with ctx.transaction() as tx:
            await admission.lock_site(tx, site)
            vm = await tx.vms.get(vm.id, lock=True)
            if vm.state == VmState.ARCHIVING:
                await journey.transition(tx, vm, VmState.FAILED, step="archive",
                                         message=str(exc))
            _discard_if_cancelled(ctx, vm)
            await admission.admit(tx, ctx.settings, site)
        return
    async with ctx.transaction() as tx:
        await admission.lock_site(tx, site)
        vm = await tx.vms.get(vm.id, lock=True)
        if vm.state != VmState.ARCHIVING:
            # A duplicate delivery got here first, or the group was cancelled meanwhile.
            _discard_if_cancelled(ctx, vm)
            await admission.admit(tx, ctx.settings, site)
            return
        items = [await _record(tx, vm.id, result) for result in results]
        if system is not None:
            await tx.vms.record_system(vm.id, system.model_dump(mode="json"))
            await journey.add_message(tx, vm.id, "info", f"legacy system: {system.summary()}")
        for result in results:
            for warning in result.warnings:
                # Where the operator looks (the VM's messages), not only in the service log.
                await journey.add_message(tx, vm.id, "warning",
                                          f"archive of {result.source_path}: {warning}")
        await journey.transition(tx, vm, VmState.ARCHIVED, step="archive")
        await tx.publish(ev.ArchiveReady(archives=items), group_id=group.id, vm_id=vm.id)
        # Its archive slot is free: the next VM of the site goes on, in this same commit.
        await admission.admit(tx, ctx.settings, site)


def _vm_dir(ctx: Context, group_id: uuid.UUID, vm_name: str) -> Path:
    folder = archive_store.vm_folder(ctx.settings.archive_root, group_id, vm_name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a full or read-only store: the VM's failure, not a handler's crash
        raise ArchiveError(f"{vm_name}: cannot make the archive folder {folder}: {exc}") from None
    remove_abandoned_partials(folder)
    return folder


def _discard_if_cancelled(ctx: Context, vm) -> None:
    """A VM whose group was cancelled while it was archived: the cancel removes the group's
    folder once it has cancelled the VMs, which may be before this archiver wrote its files;
    they go now, unrecorded (the VM's row lock, held here, orders the two)."""
    if vm.state == VmState.CANCELLED:
        archive_store.remove_vm(ctx.settings.archive_root, vm.group_id, vm.name)
        log.info("archives of a cancelled VM discarded", vm=vm.name)


def archive_id(vm_id: uuid.UUID, kind: str, source: str) -> str:
    """Stable per (VM, kind, source), so a redone archive replaces its own record."""
    return "a" + hashlib.sha256(f"{vm_id}:{kind}:{source}".encode()).hexdigest()[:20]


async def _take_archives(planned: VM, folder: Path, vm_id: uuid.UUID, settings: Settings,
                         progress: Progress = None,
                         ) -> tuple[list[ArchiveResult], HostSystem | None]:
    """Every planned archive and dump of one VM, and the system of its root when the root is
    archived; an error names the VM (and, from the source, the host and the cause)."""
    if planned.source is None:
        return [], None  # a new VM: nothing to carry over
    try:
        return await _archive_source(planned, folder, vm_id, settings, progress or _quiet)
    except (ArchiveError, DumpError) as exc:
        raise type(exc)(f"{planned.name}: {exc}") from None


async def _archive_source(planned: VM, folder: Path, vm_id: uuid.UUID, settings: Settings,
                          progress: Callable[[str], Awaitable[None]],
                          ) -> tuple[list[ArchiveResult], HostSystem | None]:
    source = planned.source
    over_ssh = source.kind == "ssh"
    tree: TreeSource
    if over_ssh:
        # One connection first: an unreachable host or a refused key fails here, worded.
        tree = await SshTree.for_source(source, settings).probe()
    else:
        tree = LocalTree(Path(source.root or "/"),
                         no_data_timeout_s=settings.archive_no_data_timeout_s)
    # Read before anything is archived: a system Ferryman cannot rebuild stops here. The plan
    # may name it instead (a root that does not show it, such as a folder standing for one).
    system = source.system
    if system is None and any(spec.path == "/" for spec in planned.archives):
        system = await read_host_system(tree)
    # Servers with globals (PostgreSQL) are asked first, before anything is archived: their
    # version, and whether they have every database the plan names.
    remote = tree if over_ssh else None
    with_globals = _servers_with_globals(planned)
    versions: dict[str, str] = {}
    for server, specs in with_globals:
        versions[server.name] = await probe_server(
            database_source(specs[0], over_ssh), [spec.name for spec in specs], tree=remote)
    results: list[ArchiveResult] = []
    for spec in planned.archives:
        await progress(f"archiving {spec.path}")
        dest = folder / f"{archive_id(vm_id, 'path', spec.path)}.tar.zst"
        results.append(await archive_path(tree, spec.path, list(spec.excludes), dest))
    for server, specs in with_globals:
        await progress(f"dumping the {server.name} globals")
        dest = folder / f"{archive_id(vm_id, 'database', server.globals_source)}.sql.zst"
        results.append(await dump_globals(database_source(specs[0], over_ssh), dest,
                                          versions[server.name], tree=remote))
    for db in planned.databases:
        await progress(f"dumping database {db.name}")
        dest = folder / f"{archive_id(vm_id, 'database', db.name)}{engine(db.engine).dump_suffix}"
        database = database_source(db, over_ssh)
        if over_ssh:
            result = await dump_database_over_ssh(tree, database, dest)
        else:
            result = await dump_database(database, dest)
        results.append(replace(result, server_version=versions.get(db.engine)))
    for result in results:
        for warning in result.warnings:
            log.warning("archive warning", vm=planned.name, source=result.source_path,
                        warning=warning)
    try:
        write_manifest(results, folder)
    except OSError as exc:
        raise ArchiveError(f"cannot write the manifest in {folder}: {exc}") from None
    return results, system


async def _quiet(step: str) -> None:
    """No one to tell of the progress (a caller without a VM row)."""


def _servers_with_globals(planned: VM) -> list[tuple]:
    """Each engine of the VM's databases that dumps its server's globals once (PostgreSQL's
    roles), with its databases; their first one says how to reach the server."""
    found: dict[str, tuple] = {}
    for db in planned.databases:
        server = engine(db.engine)
        if server.globals_source is not None:
            found.setdefault(server.name, (server, []))[1].append(db)
    return list(found.values())


async def _record(tx, vm_id: uuid.UUID, result: ArchiveResult) -> ev.ArchiveItem:
    source = result.source_path
    item_id = archive_id(vm_id, result.kind, source)
    await tx.archives.save(ArchiveRecord(
        id=item_id, vm_id=vm_id, kind=result.kind, source=source,
        engine=getattr(result, "engine", None), file=str(result.file), sha256=result.sha256,
        size=result.size, server_version=result.server_version))
    return ev.ArchiveItem(id=item_id, kind=result.kind, source=source, sha256=result.sha256,
                          size=result.size, warnings=list(result.warnings))
