"""Limits on the expensive work of a migration (docs/operations.md, "Limits"): which VMs hold a
slot, and which waiting VMs a free slot admits. Plain functions without I/O: the creator and
the archiver count from the store (shared/store/limits.py) and act on what these decide.

A VM holds an *in-flight slot* from CREATING until it is PROVISIONED: creating allocates its
disks, configuring unpacks its archives onto them, provisioning boots it; from its first boot
from disk on it is a running machine like any other. Parked by a halt at CREATED or
CONFIGURED it keeps its slot: it sits on its host with its disks, and a resume moves it on
without asking again, so freeing the slot would let a resume push the host past its limit. A
FAILED VM frees its slot: it waits for an operator, for as long as that takes, and must not
starve the other groups meanwhile; a CANCELLED one was deleted. (An operator's retry of a VM
that failed after its creation sends it back to CREATED or CONFIGURED without asking for a
slot: that is the one way the count may pass a limit, by the VMs an operator retries.)

An *archive slot* is held while a VM is ARCHIVING; it is counted per legacy site.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from shared.states import VmState

S = VmState

# The expensive phases: a VM in one of these holds an in-flight slot.
IN_FLIGHT = frozenset({S.CREATING, S.CREATED, S.CONFIGURING, S.CONFIGURED, S.PROVISIONING})


def holds_slot(state: VmState, held_state: VmState | None = None) -> bool:
    """Whether a VM in `state` (parked at `held_state`, when HALTED) holds an in-flight slot."""
    if state == S.HALTED:
        return held_state in IN_FLIGHT
    return state in IN_FLIGHT


def unlimited(limit: int) -> bool:
    return limit <= 0


def place(hosts: Sequence[str], in_flight: Mapping[str, int], *, overall: int,
          per_host: int) -> tuple[str | None, str | None]:
    """Where a waiting VM may go now: (its host, None), or (None, why it waits). `hosts` are
    the provider's choices for it, best first; `in_flight` counts the VMs holding a slot per
    host. It takes its first host with a free slot."""
    total = sum(in_flight.values())
    if not unlimited(overall) and total >= overall:
        return None, f"waiting for a slot: {total} of {overall} in flight overall"
    for host in hosts:
        if unlimited(per_host) or in_flight.get(host, 0) < per_host:
            return host, None
    if not hosts:
        return None, "waiting for a slot: the provider offers no host for this VM"
    first = hosts[0]
    others = f" (and on its {len(hosts) - 1} other host(s))" if len(hosts) > 1 else ""
    return None, (f"waiting for a slot: {in_flight.get(first, 0)} of {per_host} in flight on "
                  f"host {first}{others}")


def archive_waiting(archiving: int, limit: int, site: str) -> str | None:
    """Why a VM of `site` may not start archiving now (`archiving` VMs are), or None."""
    if unlimited(limit) or archiving < limit:
        return None
    return f"waiting for an archive slot: {archiving} of {limit} on site {site}"
