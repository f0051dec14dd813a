"""Admission to the expensive phases (shared/limits.py): archived VMs wait for an in-flight
slot, overall and on the destination host the provider would put them on, and go on, oldest
group first, when one frees.

One round runs in one transaction under an advisory lock (shared/store/limits.py): count the
VMs holding slots, then move the waiting ones that fit from ARCHIVED to CREATING, each with its
host. Two creator replicas therefore never admit past a limit between them, and a redelivered
event finds nothing more to admit. The VMs' creation itself happens after the commit, outside
the lock (handlers._create), each under its own row lock."""

from __future__ import annotations

import uuid

from services.creator.specs import vm_key, vm_spec
from shared import events as ev
from shared import journey
from shared.limits import place
from shared.logging import get_logger
from shared.model import Group
from shared.providers.base import ProviderError
from shared.service import Deps
from shared.states import ENDING, VmState
from shared.store.limits import Waiting

log = get_logger(__name__)

# The step of a VM admitted (CREATING) and not yet handed to the provider: a cancel knows the
# provider never saw it. handlers._create moves it to step "create" before the provider call.
ADMITTED = "admitted"


async def admit(deps: Deps, cause: ev.Envelope | None = None) -> list[uuid.UUID]:
    """One round of admission; the VMs it admitted (now CREATING at step "admitted", their
    host recorded)."""
    s = deps.settings
    admitted: list[uuid.UUID] = []
    groups: dict[uuid.UUID, Group | None] = {}
    # The provider is asked once per shape of VM in a round (libvirt asks every host): VMs
    # of one shape fit the same hosts, then. (One made already, retried after a failed
    # creation, may be on another: create_vm answers where, and _create records that.)
    offered: dict[tuple, list[str] | ProviderError] = {}
    async with deps.store.transaction(cause=cause) as tx:
        await tx.limits.lock("creation")
        waiting = await tx.limits.waiting_for_creation()
        if not waiting:
            return []
        in_flight = await tx.limits.in_flight_per_host()
        for candidate in waiting:
            if candidate.group_id not in groups:
                groups[candidate.group_id] = await tx.groups.get(candidate.group_id)
            group = groups[candidate.group_id]
            if group is None or group.status in ENDING:
                continue
            hosts: list[str] = []
            if not _full(in_flight, s.limit_in_flight):
                hosts = await _placements(deps, tx, group, candidate, offered)
                if hosts is None:
                    continue  # failed: the provider has no host for it
            host, why = place(hosts, in_flight, overall=s.limit_in_flight,
                              per_host=s.limit_in_flight_per_host)
            if host is None:
                await _wait(tx, candidate, why)
            elif await _admit(tx, candidate, host):
                in_flight[host] = in_flight.get(host, 0) + 1
                admitted.append(candidate.vm_id)
    if admitted:
        log.info("vms admitted", count=len(admitted), in_flight=sum(in_flight.values()))
    return admitted


def _full(in_flight: dict[str, int], overall: int) -> bool:
    """No slot free overall: the provider need not be asked where a VM would go."""
    return overall > 0 and sum(in_flight.values()) >= overall


async def _placements(deps: Deps, tx, group: Group, candidate: Waiting,
                      offered: dict[tuple, list[str] | ProviderError]) -> list[str] | None:
    """The provider's hosts for the VM, best first; None when it has none (the VM failed,
    as a creation the provider refused fails)."""
    vm = await tx.vms.get(candidate.vm_id)
    spec = vm_spec(group.parsed_plan(), vm)
    shape = (spec.cpus, spec.memory_mb, tuple(spec.disks_gb), tuple(spec.disk_buses))
    if shape not in offered:
        try:
            offered[shape] = await deps.provider.placements(spec, idempotency_key=vm_key(vm))
        except ProviderError as exc:
            offered[shape] = exc
    hosts = offered[shape]
    if not isinstance(hosts, ProviderError):
        return hosts
    vm = await tx.vms.get(candidate.vm_id, lock=True)
    if vm is not None and vm.state == VmState.ARCHIVED:
        vm = await journey.transition(tx, vm, VmState.CREATING, step="create")
        await journey.transition(tx, vm, VmState.FAILED, step="create", message=str(hosts))
    return None


async def _admit(tx, candidate: Waiting, host: str) -> bool:
    """ARCHIVED -> CREATING on `host`; False if the VM moved meanwhile (a halt, a cancel)."""
    vm = await tx.vms.get(candidate.vm_id, lock=True)
    if vm is None or vm.state != VmState.ARCHIVED or vm.group_status in ENDING:
        return False
    await journey.transition(tx, vm, VmState.CREATING, step=ADMITTED)
    await tx.limits.set_host(vm.id, host)
    return True


async def _wait(tx, candidate: Waiting, why: str) -> None:
    """Say why the VM waits: on the VM (the API, `ferry status`, the UI) and, when it starts
    waiting or the reason changes, in its log."""
    if candidate.waiting == why:
        return
    if await tx.limits.set_waiting(candidate.vm_id, why, VmState.ARCHIVED):
        await journey.add_message(tx, candidate.vm_id, "info", why)
