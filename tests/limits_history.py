"""The most VMs ever in flight, or archiving, at once, replayed from the store's history of
transitions (vm_transitions): how the chaos wave and the integration tests check the limits
(shared/limits.py) held, from what was recorded rather than by sampling."""

from __future__ import annotations

import collections

from shared.limits import holds_slot
from shared.states import VmState


async def most_at_once(conn) -> dict:
    """The largest number of VMs in flight at once (overall and per host), and archiving at
    once per legacy site. Replayed in the order of the lines' ids, not their times (a
    transaction's now() is its start): an admission counts the slots freed by commits before
    it, whose lines were written, and numbered, before its own."""
    rows = await conn.fetch(
        "SELECT t.vm_id, t.to_state, v.host, COALESCE(g.plan->>'legacy_site', g.name) AS site"
        " FROM vm_transitions t JOIN vms v ON v.id = t.vm_id JOIN groups g ON g.id = v.group_id"
        " ORDER BY t.id")
    holding: dict = {}  # vm id -> holds an in-flight slot
    archiving: dict = {}  # vm id -> archiving
    in_flight, per_host, per_site = 0, collections.Counter(), collections.Counter()
    most_overall, most_host, most_site = 0, collections.Counter(), collections.Counter()
    for row in rows:
        vm, to = row["vm_id"], VmState(row["to_state"])
        # The history does not record where a halt parks a VM: parked from the expensive
        # phases, it keeps the slot it held (shared/limits.py).
        now_holding = holding.get(vm, False) if to == VmState.HALTED else holds_slot(to)
        if now_holding != holding.get(vm, False):
            step = 1 if now_holding else -1
            in_flight += step
            per_host[row["host"]] += step
        holding[vm] = now_holding
        now_archiving = to == VmState.ARCHIVING
        if now_archiving != archiving.get(vm, False):
            per_site[row["site"]] += 1 if now_archiving else -1
        archiving[vm] = now_archiving
        most_overall = max(most_overall, in_flight)
        most_host[row["host"]] = max(most_host[row["host"]], per_host[row["host"]])
        most_site[row["site"]] = max(most_site[row["site"]], per_site[row["site"]])
    return {"most_in_flight": most_overall, "most_in_flight_per_host": dict(most_host),
            "most_archiving_per_site": dict(most_site)}
