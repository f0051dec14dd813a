"""The records the journey moves: a group and its VMs, as the store holds them.

Plain values: the rules (`shared/rules.py`) decide on them, the store reads and writes them.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.plan import Plan
from shared.states import GroupStatus, VmState


@dataclass(frozen=True)
class Vm:
    id: uuid.UUID
    group_id: uuid.UUID
    name: str
    role: str
    position: int
    state: VmState
    held_state: VmState | None
    failed_from: VmState | None
    step: str | None
    message: str | None
    provider_ref: str | None
    group_status: GroupStatus
    state_changed_at: datetime
    # What the VM reported with its last state (a master's binary log position).
    detail: dict[str, Any] | None = None
    provider: str | None = None  # the provider that made it
    simulated: bool = False  # made by a provider of simulated VMs (sim), not a real machine
    # The legacy host's system as read from its root (shared/systems.HostSystem as JSON); None
    # until archived, and for a VM without a root archive.
    legacy_system: dict[str, Any] | None = None
    mac: str | None = None  # its NIC's, as the provider made it
    host: str | None = None  # the destination host it was admitted to (shared/limits.py)
    # Why it is not moving on while its group is: it waits for a slot (shared/limits.py).
    waiting: str | None = None
    # When it last said anything to the gateway (or the service progressed on it), and the last
    # step it named: what a deadline counts from (shared/deadlines.py).
    last_word_at: datetime | None = None
    last_step: str | None = None


@dataclass(frozen=True)
class Group:
    id: uuid.UUID
    name: str
    status: GroupStatus
    plan: dict[str, Any]
    halted_vm_id: uuid.UUID | None
    halted_reason: str | None
    archived_at: datetime | None
    ready_at: datetime | None
    created_at: datetime
    closed_at: datetime | None = None  # when it was cancelled or finalized
    # Why the last cancel or finalize stopped short (asking again retries it).
    closing_error: str | None = None
    legacy_forwarding: str | None = None  # a finalized group's: "kept" or "removed"

    def parsed_plan(self) -> Plan:
        """The plan as a model. A group's plan is written once, at submission, and Plan is
        frozen, so one parse per group is shared by every handler of this process, instead of
        one per VM in the configurator and the archiver (docs/performance.md)."""
        plan = _PLANS.get(self.id)
        if plan is None:
            plan = _PLANS[self.id] = Plan.model_validate(self.plan)
            if len(_PLANS) > _PLANS_KEPT:
                _PLANS.popitem(last=False)
        return plan


_PLANS: OrderedDict[uuid.UUID, Plan] = OrderedDict()
_PLANS_KEPT = 256
