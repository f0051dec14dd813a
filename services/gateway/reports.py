"""What a VM's reports do, apart from HTTP: a state report moves the VM along its journey, a
replica asks for its master's status. The routes (vm_routes.py) parse and answer; these take a
store session, so the handler tests run them on the in-memory store (tests/unit/fakes.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from shared import journey, rules
from shared.databases import engine_of, rebuild_engines
from shared.model import Vm
from shared.states import IllegalTransition, VmState


class Refused(Exception):
    """The report cannot be applied from where the VM is; says why."""


class NotAReplica(Exception):
    pass


@dataclass(frozen=True)
class MasterStatus:
    master: str
    complete: bool
    host: str
    port: int
    log_file: str | None = None
    log_pos: int | None = None
    lsn: str | None = None


async def report_state(db, vm_id: uuid.UUID, state: str, step: str | None,
                       message: str | None, detail: dict[str, Any] | None) -> Vm | None:
    """Apply a VM's report of its state (and the message that comes with it). Returns the VM as
    it now is, or None for a report that repeats one applied before (answer with the VM as it
    is). Raises Refused; nothing is written then. `db`: a session on the store."""
    target = VmState(state)
    try:
        async with db.transaction() as tx:
            if target == VmState.REPLICATING:
                status = await master_status(tx, vm_id)
                if rules.replicating_too_early(target, status.complete):
                    raise Refused(f"refused: master {status.master} is not complete yet")
            vm = await journey.transition(tx, vm_id, target, step=step, message=message,
                                          detail=detail)
            if message:
                level = "error" if target == VmState.FAILED else "info"
                await journey.add_message(tx, vm_id, level, message)
            return vm
    except IllegalTransition as exc:
        if rules.answered_as_before(target, await db.transitions.reached(vm_id, target, step)):
            return None
        raise Refused(f"refused: {exc}") from None


async def master_status(db, vm_id: uuid.UUID) -> MasterStatus:
    """A replica's master: where it is, and whether it completed (and at which position).
    Raises NotAReplica."""
    vm = await db.vms.get(vm_id)
    group = await db.groups.get(vm.group_id)
    plan = group.parsed_plan()
    planned = plan.vm(vm.name)
    if not planned.replica_of:
        raise NotAReplica(f"{vm.name} is not a replica; it has no master")
    master = plan.vm(planned.replica_of)
    position = (await db.groups.masters_complete(group.id)).get(master.name)
    return MasterStatus(
        master=master.name, complete=position is not None,
        host=str(master.network.address.ip), port=_position_port(master, plan),
        log_file=(position or {}).get("log_file"), log_pos=(position or {}).get("log_pos"),
        lsn=(position or {}).get("lsn"),
    )


def _position_port(master, plan) -> int:
    """The port of the master's server that replicas follow from a position (MariaDB, MySQL),
    which a master running PostgreSQL too also has; else its engine's."""
    servers = rebuild_engines(master, plan)
    return next((s.default_port for s in servers if s.replica_loads_dumps),
                engine_of(master, plan).default_port)
