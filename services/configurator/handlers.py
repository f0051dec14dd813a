"""Configurator: renders each created VM's configuration script, issues its token and boots it
from the migration network, where the migration image fetches the script and runs it."""

from __future__ import annotations

import uuid
from pathlib import Path

from shared import events as ev
from shared import journey, rules
from shared.providers.base import BootSource, ProviderError
from shared.model import Vm
from shared.service import Context, Router
from shared.states import VmState
from shared.store.archives import ArchiveRecord
from shared.systems import BASE_IMAGE_SYSTEM, HostSystem
from services.configurator.render import ArchiveRef, RenderError, render_script

router = Router("configurator")

# The step a VM is in from the moment it is booted until its script first reports.
PXE_BOOT = "pxe-boot"
# Asking the provider for the VM's disks (bus, serial), which the script finds them by.
LIST_DISKS = "list-disks"


@router.on(ev.VmCreated)
async def configure_created(event: ev.VmCreated, ctx: Context) -> None:
    """A created VM is booted to configure."""
    assert ctx.vm_id
    await _boot_for_configuration(ctx, ctx.vm_id)


@router.on(ev.GroupResumed)
async def configure_resumed(event: ev.GroupResumed, ctx: Context) -> None:
    """Every created VM of a resumed group is booted to configure."""
    async with ctx.store.session() as db:
        waiting = await db.vms.ids_in(ctx.group_id, VmState.CREATED)
    for vm_id in waiting:
        await _boot_for_configuration(ctx, vm_id)


async def _boot_for_configuration(ctx: Context, vm_id: uuid.UUID) -> None:
    # The boot happens under the VM's row lock, in the transaction that stores its token: a
    # concurrent duplicate waits and finds the VM configuring; if the commit never happens the
    # VM stays created and is booted again, with a new token, on redelivery.
    async with ctx.guarded_transaction() as tx:
        vm = await tx.vms.get(vm_id, lock=True)
        if not rules.may_move_on(vm, VmState.CREATED):
            return
        group = await tx.groups.get(vm.group_id)
        plan = group.parsed_plan()
        try:
            disks = await ctx.provider.disks(vm.provider_ref)
        except ProviderError as exc:
            await journey.transition(tx, vm, VmState.FAILED, step=LIST_DISKS, message=str(exc))
            return
        try:
            script = render_script(plan, plan.vm(vm.name),
                                   [_archive_ref(a) for a in await tx.archives.for_vm(vm.id)],
                                   disks=disks, mac=vm.mac, system=_system_of(vm),
                                   support=support_hashes(ctx.settings.images_dir))
        except RenderError as exc:
            await journey.transition(tx, vm, VmState.FAILED, step="render", message=str(exc))
            return
        await tx.scripts.save(vm.id, script)
        token = await tx.tokens.issue(vm.id)
        kernel_args = {
            "ferry.gateway": ctx.settings.gateway_url, "ferry.vm": str(vm.id), "ferry.token": token,
        }
        try:
            await ctx.provider.boot(vm.provider_ref, BootSource.NETWORK, kernel_args=kernel_args)
        except ProviderError as exc:
            await journey.transition(tx, vm, VmState.FAILED, step=PXE_BOOT, message=str(exc))
            return
        await journey.transition(tx, vm, VmState.CONFIGURING, step=PXE_BOOT)


def support_hashes(images: Path) -> dict[str, str]:
    """The sha256 of each support file, from the manifest the image build writes
    (`sha256_<file>=<hex>` lines); empty when there is none (the sim provider)."""
    try:
        lines = (images / "manifest.txt").read_text().splitlines()
    except OSError:
        return {}
    hashes = {}
    for line in lines:
        key, _, value = line.partition("=")
        if key.startswith("sha256_"):
            hashes[key.removeprefix("sha256_")] = value.strip()
    return hashes


def _system_of(vm: Vm) -> HostSystem:
    """The legacy root's system as the archiver read it; the base image's for a VM without a
    root archive (and for one archived before Ferryman read systems, which it then treated as
    the base image's)."""
    if vm.legacy_system is None:
        return BASE_IMAGE_SYSTEM
    return HostSystem.model_validate(vm.legacy_system)


def _archive_ref(record: ArchiveRecord) -> ArchiveRef:
    return ArchiveRef(id=record.id, kind=record.kind, source=record.source,
                      sha256=record.sha256, size=record.size, engine=record.engine,
                      server_version=record.server_version)
