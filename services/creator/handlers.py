"""Creator: once the whole group is archived, one blank VM per plan entry, through the provider;
on an operator's cancel, the group's VMs deleted through it again.

Provider calls carry the VM's id as idempotency key, so a redelivered event or a restart
mid-creation never makes a second VM.

A cancel and a creation meet on the VM's row lock: a creation holds it while the provider
makes the VM and records it, and the cancel takes it before deleting the VM. So a VM is either
made and recorded before the cancel looks at it (then deleted), or looked at after the group
went cancelling (then never made)."""

from __future__ import annotations

import uuid

from shared import archive_store
from shared import events as ev
from shared import journey
from services.creator import admission as limits_admission
from services.creator.admission import ADMITTED
from services.creator.specs import vm_key, vm_spec
from shared.logging import get_logger
from shared.model import Vm
from shared.plan import Plan
from shared.providers.base import ProviderError, VmSpec
from shared.service import Context, Deps, Router
from shared.states import ENDING, GroupStatus, VmState

router = Router("creator")
log = get_logger(__name__)


@router.on(ev.ArchiveReady)
async def note_archive(event: ev.ArchiveReady, ctx: Context) -> None:
    async with ctx.transaction() as tx:
        await tx.groups.get(ctx.group_id, lock=True)  # one archive.ready at a time
        if await journey.mark_archived_once(tx, ctx.group_id):
            await tx.publish(ev.GroupArchived(), group_id=ctx.group_id)


@router.on(ev.GroupResumed)
async def resume_creation(event: ev.GroupResumed, ctx: Context) -> None:
    async with ctx.guarded_transaction() as tx:
        group = await tx.groups.get(ctx.group_id, lock=True)
        if group and group.archived_at is None \
                and await journey.mark_archived_once(tx, group.id):
            await tx.publish(ev.GroupArchived(), group_id=group.id)
            return
    await _create_group_vms(ctx)


@router.on(ev.GroupArchived)
async def create_group_vms(event: ev.GroupArchived, ctx: Context) -> None:
    await _create_group_vms(ctx)


# A slot frees when a VM leaves the expensive phases (shared/limits.py): provisioned, failed,
# or cancelled (cancel_group admits when it is done). Each admits the VMs waiting for one.

@router.on(ev.VmProvisioned)
async def admit_after_provisioned(event: ev.VmProvisioned, ctx: Context) -> None:
    await admit_and_create(ctx.deps, cause=ctx.envelope)


@router.on(ev.VmFailed)
async def admit_after_failure(event: ev.VmFailed, ctx: Context) -> None:
    await admit_and_create(ctx.deps, cause=ctx.envelope)


@router.on_start
async def admit_on_start(deps: Deps) -> None:
    """A creator killed between admitting VMs and making them, or between a slot freeing and
    the admission it causes: what it left is finished when it (or any creator) starts."""
    await admit_and_create(deps)


async def _create_group_vms(ctx: Context) -> None:
    await admit_and_create(ctx.deps, cause=ctx.envelope)


async def admit_and_create(deps: Deps, *, cause: ev.Envelope | None = None) -> None:
    """Admit the VMs waiting for an in-flight slot as far as the limits allow, then make every
    VM admitted and not made: this round's, and those a creator killed after admitting them
    left (of any group: admission is not per group). Admission is idempotent: it admits from
    what the store holds now, so a redelivered event admits nothing twice."""
    await limits_admission.admit(deps, cause)
    async with deps.store.session() as db:
        admitted = await db.limits.creating()
    for vm_id in admitted:
        await _create(deps, vm_id, cause)


async def _create(deps: Deps, vm_id: uuid.UUID, cause: ev.Envelope | None) -> None:
    """Make an admitted (CREATING) VM on the host it was admitted to."""
    # First, committed: the VM is handed to the provider (step "create"), so a cancel from now
    # on asks the provider for it, and a cancel before never involves the provider.
    async with deps.store.transaction(cause=cause) as tx:
        if not await tx.limits.lock_unless_busy(vm_id):
            return  # another creator is making it (if it dies, the next event or start-up)
        vm = await tx.vms.get(vm_id, lock=True)
        if vm is None or vm.state != VmState.CREATING or await _ending(tx, vm):
            return
        if vm.step != "create":
            await journey.transition(tx, vm, VmState.CREATING, step="create")
    # The provider is called under the VM's row lock, in the transaction that records the
    # result: a concurrent duplicate waits and then finds the VM created; a crash rolls back
    # and the call is made again with the same idempotency key, which returns the same VM.
    async with deps.store.transaction(cause=cause) as tx:
        vm = await tx.vms.get(vm_id, lock=True)
        if vm is None or vm.state != VmState.CREATING or await _ending(tx, vm):
            return
        group = await tx.groups.get(vm.group_id)
        try:
            made = await deps.provider.create_vm(vm_spec(group.parsed_plan(), vm),
                                                 idempotency_key=vm_key(vm), host=vm.host)
        except ProviderError as exc:
            await journey.transition(tx, vm, VmState.FAILED, step="create", message=str(exc))
            return
        await tx.vms.record_made(vm.id, provider=deps.provider.name, ref=made.ref,
                                 simulated=deps.provider.simulated, mac=made.mac)
        if made.host and made.host != vm.host:
            await tx.limits.set_host(vm.id, made.host)  # made before, elsewhere
        await journey.transition(tx, vm, VmState.CREATED, step="create")
        await tx.publish(ev.VmCreated(provider=deps.provider.name, provider_ref=made.ref),
                         group_id=vm.group_id, vm_id=vm.id)


async def _ending(tx, vm: Vm) -> bool:
    """The VM's group is being cancelled (read now, after the VM's lock was taken: the status
    that came with the VM may predate the wait): nothing more is made for it."""
    group = await tx.groups.get(vm.group_id)
    return group is None or group.status in ENDING


# --- cancel ------------------------------------------------------------------------------------

@router.on(ev.GroupCancelRequested)
async def cancel_group(event: ev.GroupCancelRequested, ctx: Context) -> None:
    """Delete every VM the provider made for the group, remove its archives, and close it. A
    provider error stops it there: the group stays cancelling with the reason, and the
    operator's next cancel carries on from the VMs not yet deleted."""
    async with ctx.store.session() as db:
        group = await db.groups.get(ctx.group_id)
        members = await db.vms.of_group(ctx.group_id)
    if group is None or group.status != GroupStatus.CANCELLING:
        return  # cancelled already (a repeated request), or never asked
    plan = group.parsed_plan()
    deleted, problems = [], []
    for vm in members:
        try:
            if await _delete(ctx, plan, vm.id):
                deleted.append(vm.name)
        except ProviderError as exc:
            problems.append(f"{vm.name}: {exc}")
    if problems:
        async with ctx.transaction() as tx:
            await journey.ending_stopped(
                tx, group.id, f"the provider did not delete {'; '.join(problems)}; the other "
                f"VMs are deleted. Cancel again to retry (`ferry cancel {group.name}`)")
        await admit_and_create(ctx.deps, cause=ctx.envelope)
        return
    # Files first: a crash after this leaves records whose files are gone, which the next
    # delivery removes again harmlessly.
    async with ctx.store.session() as db:
        files = [a.file for a in await db.archives.of_group(group.id)]
    archive_store.remove_group(ctx.settings.archive_root, group.id, files)
    async with ctx.transaction() as tx:
        await journey.cancelled(tx, group.id, deleted)
    # Its VMs' slots are free: VMs of other groups waiting for one go on.
    await admit_and_create(ctx.deps, cause=ctx.envelope)


async def _delete(ctx: Context, plan: Plan, vm_id: uuid.UUID) -> bool:
    """Delete one VM through the provider and mark it cancelled; True if the provider had made
    it. Under the VM's row lock: a creation, boot or move of it in flight finishes first."""
    async with ctx.guarded_transaction() as tx:
        vm = await tx.vms.get(vm_id, lock=True)
        if vm is None or vm.state == VmState.CANCELLED:
            return False  # deleted by an earlier attempt
        ref = vm.provider_ref
        if ref is None and vm.state == VmState.CREATING and vm.step != ADMITTED:
            # A creation cut off before it was recorded may have made the VM: the provider
            # returns it for the same idempotency key (making it, if it had not), to delete.
            # (Admitted and never handed to the provider, it was not made: nothing to ask.)
            ref = (await ctx.provider.create_vm(vm_spec(plan, vm), idempotency_key=vm_key(vm),
                                                host=vm.host)).ref
        if ref is not None:
            await ctx.provider.delete(ref)  # stops it first; one already gone is fine
        await journey.transition(tx, vm, VmState.CANCELLED, step="cancel")
        log.info("vm cancelled", vm=vm.name, deleted=ref is not None)
        return ref is not None
