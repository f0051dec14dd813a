"""Admission to archiving (shared/limits.py): at most FERRY_LIMIT_ARCHIVES_PER_SITE VMs of one
legacy site (Plan.site) are archived at once, across groups; the others stay planned, saying
why, and go on, oldest group first, as archives end.

A round runs inside the caller's transaction under the site's advisory lock: a group's
submission or resume, and the end of an archive (archived, failed) in the very transaction that
records it, so no crash can fall between a slot freeing and the admission it allows. An
admitted VM goes to ARCHIVING and its archive.requested is published with it."""

from __future__ import annotations

from shared import events as ev
from shared import journey, rules
from shared.limits import archive_waiting
from shared.settings import Settings
from shared.states import VmState


async def lock_site(tx, site: str) -> None:
    """Taken before any VM row of the site's archives, by every transaction that admits."""
    await tx.limits.lock(f"archives:{site}")


async def admit(tx, settings: Settings, site: str) -> int:
    """Admit the site's planned VMs while archive slots are free; how many it admitted."""
    await lock_site(tx, site)
    archiving = await tx.limits.archiving_at(site)
    admitted = 0
    for candidate in await tx.limits.waiting_for_archive(site):
        why = archive_waiting(archiving, settings.limit_archives_per_site, site)
        if why is not None:
            if candidate.waiting != why and await tx.limits.set_waiting(
                    candidate.vm_id, why, VmState.PLANNED):
                await journey.add_message(tx, candidate.vm_id, "info", why)
            continue
        vm = await tx.vms.get(candidate.vm_id, lock=True)
        if not rules.may_move_on(vm, VmState.PLANNED):
            continue
        await journey.transition(tx, vm, VmState.ARCHIVING, step="archive")
        await tx.publish(ev.ArchiveRequested(), group_id=vm.group_id, vm_id=vm.id)
        archiving += 1
        admitted += 1
    return admitted
