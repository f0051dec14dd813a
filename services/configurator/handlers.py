"""Configurator: renders each created VM's configuration script, issues its token and boots it
from the migration network, where the migration image fetches the script and runs it."""

from __future__ import annotations

import uuid
from pathlib import Path

from shared.events import Envelope
from shared.providers.base import BootSource, ProviderError
from shared.service import Context, Router
from shared.states import VmState
from shared.store import archives, groups, tokens, vms
from services.configurator.render import ArchiveRef, RenderError, render_script

router = Router("configurator")

# The step a VM is in from the moment it is booted until its script first reports.
PXE_BOOT = "pxe-boot"


@router.on("vm.created")
@router.on("group.resumed")
async def configure(event: Envelope, ctx: Context) -> None:
    """A created VM (or, on resume, every created VM of the group) is booted to configure."""
    async with ctx.store.pool.acquire() as conn:
        waiting = [event.vm_id] if event.vm_id else await vms.ids_in(conn, event.group_id,
                                                                     VmState.CREATED)
    for vm_id in waiting:
        await _boot_for_configuration(ctx, vm_id)


async def _boot_for_configuration(ctx: Context, vm_id: uuid.UUID) -> None:
    # The boot happens under the VM's row lock, in the transaction that stores its token: a
    # concurrent duplicate waits and finds the VM configuring; if the commit never happens the
    # VM stays created and is booted again, with a new token, on redelivery.
    async with ctx.step() as tx:
        vm = await vms.lock_if(tx.conn, vm_id, VmState.CREATED)
        if vm is None:
            return
        group = await groups.get(tx.conn, vm.group_id)
        plan = group.parsed_plan()
        try:
            script = render_script(plan, plan.vm(vm.name), await _archive_refs(tx.conn, vm.id),
                                   support=support_hashes(ctx.settings.images_dir))
        except RenderError as exc:
            await vms.transition(tx, vm, VmState.FAILED, step="render", message=str(exc))
            return
        await tx.conn.execute(
            "INSERT INTO vm_scripts (vm_id, script) VALUES ($1, $2) ON CONFLICT (vm_id)"
            " DO UPDATE SET script = $2, rendered_at = now()",
            vm.id, script,
        )
        token = await tokens.issue(tx.conn, vm.id)
        kernel_args = {
            "ferry.gateway": ctx.settings.gateway_url, "ferry.vm": str(vm.id), "ferry.token": token,
        }
        try:
            await ctx.provider.boot(vm.provider_ref, BootSource.NETWORK, kernel_args=kernel_args)
        except ProviderError as exc:
            await vms.transition(tx, vm, VmState.FAILED, step=PXE_BOOT, message=str(exc))
            return
        await vms.transition(tx, vm, VmState.CONFIGURING, step=PXE_BOOT)


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


async def _archive_refs(conn, vm_id: uuid.UUID) -> list[ArchiveRef]:
    return [
        ArchiveRef(id=r["id"], kind=r["kind"], source=r["source"], sha256=r["sha256"],
                   size=r["size"], engine=r["engine"])
        for r in await archives.for_vm(conn, vm_id)
    ]
