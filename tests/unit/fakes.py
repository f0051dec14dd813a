"""In-memory fakes of the store's and the bus's interfaces, for handler tests in milliseconds.

`FakeStore` holds the tables as dicts and lists, with the same repositories, methods and
signatures as shared/store (tests/unit/test_fakes.py compares them), and transactions that
roll back on an exception. `FakeBus` delivers what the transactions committed to the outbox to
every service the real topology binds to it, through the services' real routers, until nothing
is left: the handlers, the journey and the rules under test are the product's own.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import secrets
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from services.topology import SERVICES, router_of, topology
from shared.events import Envelope, Payload
from shared.host_keys import HostKey
from shared.model import Group, Vm
from shared.plan import Plan
from shared.rules import Move
from shared.service import Deps
from shared.states import NAME_RELEASED, GroupStatus, VmState
from shared.store.archives import ArchiveRecord
from shared.store.cutover_runs import PENDING
from shared.store.groups import GroupExists
from shared.store.inbox import AlreadyProcessed
from shared.store.limits import Waiting
from shared.limits import holds_slot
from shared.topology import routing_key


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Tables:
    groups: dict[uuid.UUID, Group] = field(default_factory=dict)
    master_complete: dict[uuid.UUID, dict] = field(default_factory=dict)
    passwords: dict[uuid.UUID, str] = field(default_factory=dict)
    vms: dict[uuid.UUID, Vm] = field(default_factory=dict)
    masters: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)  # replica -> master
    transitions: list[tuple[uuid.UUID, VmState, VmState, str | None]] = field(default_factory=list)
    messages: list[tuple[int, uuid.UUID, str, str]] = field(default_factory=list)
    archives: dict[str, ArchiveRecord] = field(default_factory=dict)
    scripts: dict[uuid.UUID, str] = field(default_factory=dict)
    host_keys: dict[uuid.UUID, list] = field(default_factory=dict)
    tokens: dict[bytes, tuple[uuid.UUID, bool]] = field(default_factory=dict)  # hash -> vm, live
    cutover_runs: dict[uuid.UUID, dict] = field(default_factory=dict)
    cutover_steps: dict[tuple[uuid.UUID, int], dict] = field(default_factory=dict)
    inbox: set[tuple[str, uuid.UUID]] = field(default_factory=set)
    outbox: list[Envelope] = field(default_factory=list)


class _Repo:
    def __init__(self, tables: Tables):
        self.t = tables


class FakeGroups(_Repo):
    async def get(self, group_id: uuid.UUID, *, lock: bool = False) -> Group | None:
        return self.t.groups.get(group_id)

    async def find(self, ref: str, *, lock: bool = False) -> Group | None:
        try:
            return await self.get(uuid.UUID(ref))
        except ValueError:
            named = [g for g in self.t.groups.values() if g.name == ref]
            return max(named, key=lambda g: g.created_at) if named else None

    async def add(self, group_id: uuid.UUID, plan: Plan, replication_password: str) -> None:
        if any(g.name == plan.group and g.status not in NAME_RELEASED
               for g in self.t.groups.values()):
            raise GroupExists(f"group {plan.group!r} is already being migrated")
        self.t.groups[group_id] = Group(
            id=group_id, name=plan.group, status=GroupStatus.ACTIVE,
            plan=plan.model_dump(mode="json"), halted_vm_id=None, halted_reason=None,
            archived_at=None, ready_at=None, created_at=_now())
        self.t.passwords[group_id] = replication_password

    async def set_status(self, group: Group, status: GroupStatus, *,
                         halted_vm_id: uuid.UUID | None = None,
                         halted_reason: str | None = None) -> None:
        was = self.t.groups[group.id]
        ready_at = _now() if status == GroupStatus.READY and was.status == GroupStatus.ACTIVE \
            else was.ready_at
        closed_at = _now() if status in (GroupStatus.CANCELLED, GroupStatus.FINALIZED) \
            else was.closed_at
        self.t.groups[group.id] = replace(was, status=status, halted_vm_id=halted_vm_id,
                                          halted_reason=halted_reason, ready_at=ready_at,
                                          closed_at=closed_at, closing_error=None)

    async def record_closing_error(self, group_id: uuid.UUID, error: str | None) -> None:
        self.t.groups[group_id] = replace(self.t.groups[group_id], closing_error=error)

    async def record_legacy_forwarding(self, group_id: uuid.UUID, forwarding: str) -> None:
        self.t.groups[group_id] = replace(self.t.groups[group_id], legacy_forwarding=forwarding)

    async def mark_archived(self, group_id: uuid.UUID) -> bool:
        group = self.t.groups[group_id]
        if group.archived_at is not None:
            return False
        self.t.groups[group_id] = replace(group, archived_at=_now())
        return True

    async def record_master_complete(self, group_id: uuid.UUID, master: str,
                                     position: dict[str, Any]) -> None:
        self.t.master_complete.setdefault(group_id, {})[master] = position

    async def masters_complete(self, group_id: uuid.UUID) -> dict[str, dict[str, Any]]:
        return dict(self.t.master_complete.get(group_id, {}))

    async def replication_password(self, group_id: uuid.UUID) -> str:
        return self.t.passwords[group_id]


class FakeVms(_Repo):
    def _joined(self, vm: Vm) -> Vm:
        return replace(vm, group_status=self.t.groups[vm.group_id].status)

    async def get(self, vm_id: uuid.UUID, *, lock: bool = False) -> Vm | None:
        vm = self.t.vms.get(vm_id)
        return self._joined(vm) if vm else None

    async def of_group(self, group_id: uuid.UUID) -> list[Vm]:
        return sorted((self._joined(v) for v in self.t.vms.values() if v.group_id == group_id),
                      key=lambda v: v.position)

    async def ids_in(self, group_id: uuid.UUID, *states: VmState,
                     role: str | None = None) -> list[uuid.UUID]:
        return [v.id for v in await self.of_group(group_id)
                if v.state in states and (role is None or v.role == role)]

    async def add_planned(self, group_id: uuid.UUID, plan: Plan) -> dict[str, uuid.UUID]:
        ids = {vm.name: uuid.uuid4() for vm in plan.vms}
        for i, vm in enumerate(plan.vms):
            self.t.vms[ids[vm.name]] = Vm(
                id=ids[vm.name], group_id=group_id, name=vm.name, role=vm.role.value,
                position=i, state=VmState.PLANNED, held_state=None, failed_from=None, step=None,
                message=None, provider_ref=None, group_status=GroupStatus.ACTIVE,
                state_changed_at=_now())
            if vm.replica_of:
                self.t.masters[ids[vm.name]] = ids[vm.replica_of]
        return ids

    async def write(self, vm: Vm, move: Move, *, step: str | None, message: str | None,
                    detail: dict[str, Any] | None = None) -> datetime:
        at = _now()
        was = self.t.vms[vm.id]
        self.t.vms[vm.id] = replace(
            was, state=move.state, held_state=move.held_state, failed_from=move.failed_from,
            step=step, message=message, state_changed_at=at, waiting=None,
            last_step=step if step is not None else was.last_step,
            detail=detail if detail is not None else was.detail)
        self.t.transitions.append((vm.id, vm.state, move.state, step))
        return at

    async def set_step(self, vm_id: uuid.UUID, step: str) -> None:
        self.t.vms[vm_id] = replace(self.t.vms[vm_id], step=step, last_step=step)

    async def heard(self, vm_id: uuid.UUID, step: str | None = None) -> None:
        was = self.t.vms[vm_id]
        self.t.vms[vm_id] = replace(was, last_word_at=_now(), last_step=step or was.last_step)

    async def record_made(self, vm_id: uuid.UUID, *, provider: str, ref: str,
                          simulated: bool, mac: str | None = None) -> None:
        self.t.vms[vm_id] = replace(self.t.vms[vm_id], provider=provider, provider_ref=ref,
                                    simulated=simulated, mac=mac)

    async def record_system(self, vm_id: uuid.UUID, system: dict[str, Any]) -> None:
        self.t.vms[vm_id] = replace(self.t.vms[vm_id], legacy_system=system)


class FakeLimits(_Repo):
    """shared/store/limits.py in memory (its lock: the fake store runs one handler at a time)."""

    async def lock(self, what: str) -> None:
        pass

    def _site(self, vm: Vm) -> str:
        group = self.t.groups[vm.group_id]
        return group.plan.get("legacy_site") or group.name

    def _oldest_first(self, vms) -> list[Vm]:
        return sorted(vms, key=lambda v: (self.t.groups[v.group_id].archived_at or _now(),
                                          self.t.groups[v.group_id].created_at, v.position))

    async def in_flight_per_host(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for vm in self.t.vms.values():
            if holds_slot(vm.state, vm.held_state):
                counts[vm.host or ""] = counts.get(vm.host or "", 0) + 1
        return counts

    async def waiting_for_creation(self) -> list[Waiting]:
        return [Waiting(v.id, v.group_id, v.waiting) for v in self._oldest_first(
            v for v in self.t.vms.values() if v.state == VmState.ARCHIVED
            and self.t.groups[v.group_id].status == GroupStatus.ACTIVE
            and self.t.groups[v.group_id].archived_at is not None)]

    async def lock_unless_busy(self, vm_id: uuid.UUID) -> bool:
        return True  # one handler at a time: nobody else holds it

    async def creating(self) -> list[uuid.UUID]:
        return [v.id for v in self.t.vms.values()
                if v.state == VmState.CREATING and v.provider_ref is None]

    async def archiving_at(self, site: str) -> int:
        return sum(1 for v in self.t.vms.values()
                   if v.state == VmState.ARCHIVING and self._site(v) == site)

    async def waiting_for_archive(self, site: str) -> list[Waiting]:
        return [Waiting(v.id, v.group_id, v.waiting) for v in sorted(
            (v for v in self.t.vms.values() if v.state == VmState.PLANNED
             and self.t.groups[v.group_id].status == GroupStatus.ACTIVE
             and self._site(v) == site),
            key=lambda v: (self.t.groups[v.group_id].created_at, v.position))]

    async def set_waiting(self, vm_id: uuid.UUID, waiting: str, state: VmState) -> bool:
        if self.t.vms[vm_id].state != state:
            return False
        self.t.vms[vm_id] = replace(self.t.vms[vm_id], waiting=waiting)
        return True

    async def set_host(self, vm_id: uuid.UUID, host: str) -> None:
        self.t.vms[vm_id] = replace(self.t.vms[vm_id], host=host, waiting=None)


class FakeTransitions(_Repo):
    async def reached(self, vm_id: uuid.UUID, state: VmState, step: str | None) -> bool:
        return any(t[0] == vm_id and t[2] == state and t[3] == step for t in self.t.transitions)


class FakeMessages(_Repo):
    _ids = itertools.count(1)

    async def add(self, vm_id: uuid.UUID, level: str, text: str, *,
                  step: str | None = None) -> tuple[int, uuid.UUID]:
        if step is not None:
            self.t.vms[vm_id] = replace(self.t.vms[vm_id], last_step=step)
        message_id = next(self._ids)
        self.t.messages.append((message_id, vm_id, level, text))
        return message_id, self.t.vms[vm_id].group_id


class FakeArchives(_Repo):
    async def save(self, archive: ArchiveRecord) -> None:
        self.t.archives[archive.id] = archive

    async def for_vm(self, vm_id: uuid.UUID) -> list[ArchiveRecord]:
        master = self.t.masters.get(vm_id)
        mine = [a for a in self.t.archives.values()
                if a.vm_id == vm_id or (a.kind == "database" and a.vm_id == master)]
        return sorted(mine, key=lambda a: (a.kind != "path", a.id))

    async def one_for_vm(self, vm_id: uuid.UUID, archive_id: str) -> ArchiveRecord | None:
        return next((a for a in await self.for_vm(vm_id) if a.id == archive_id), None)

    async def of_group(self, group_id: uuid.UUID) -> list[ArchiveRecord]:
        return sorted((a for a in self.t.archives.values()
                       if self.t.vms[a.vm_id].group_id == group_id), key=lambda a: a.id)

    async def forget_group(self, group_id: uuid.UUID) -> int:
        gone = [a.id for a in await self.of_group(group_id)]
        for archive_id in gone:
            del self.t.archives[archive_id]
        return len(gone)


class FakeScripts(_Repo):
    async def save(self, vm_id: uuid.UUID, script: str) -> None:
        self.t.scripts[vm_id] = script

    async def get(self, vm_id: uuid.UUID) -> str | None:
        return self.t.scripts.get(vm_id)


class FakeHostKeys(_Repo):
    async def replace(self, vm_id: uuid.UUID, keys: list[HostKey]) -> None:
        self.t.host_keys[vm_id] = sorted(keys, key=lambda key: key.type)

    async def of_vm(self, vm_id: uuid.UUID) -> list[HostKey]:
        return list(self.t.host_keys.get(vm_id, []))

    async def of_group(self, group_id: uuid.UUID) -> dict[uuid.UUID, list[HostKey]]:
        return {vm_id: list(keys) for vm_id, keys in self.t.host_keys.items()
                if keys and self.t.vms[vm_id].group_id == group_id}


class FakeTokens(_Repo):
    async def issue(self, vm_id: uuid.UUID) -> str:
        for key, (owner, _) in list(self.t.tokens.items()):
            if owner == vm_id:
                del self.t.tokens[key]
        token = secrets.token_urlsafe(32)
        self.t.tokens[hashlib.sha256(token.encode()).digest()] = (vm_id, True)
        return token

    async def owner(self, token: str) -> uuid.UUID | None:
        found = self.t.tokens.get(hashlib.sha256(token.encode()).digest())
        if found is None or self.t.vms[found[0]].state in (VmState.LIVE, VmState.CANCELLED):
            return None
        self.t.vms[found[0]] = replace(self.t.vms[found[0]], last_word_at=_now())
        return found[0]

    async def revoke_group(self, group_id: uuid.UUID) -> None:
        for key, (owner, _) in list(self.t.tokens.items()):
            if self.t.vms[owner].group_id == group_id:
                del self.t.tokens[key]


class FakeCutoverRuns(_Repo):
    async def add(self, run_id: uuid.UUID, group_id: uuid.UUID, *, prepare: bool) -> None:
        self.t.cutover_runs[run_id] = {"group_id": group_id, "prepare": prepare,
                                       "status": "requested", "reason": None}

    async def status(self, run_id: uuid.UUID, *, lock: bool = False) -> str | None:
        run = self.t.cutover_runs.get(run_id)
        return run["status"] if run else None

    async def set_running(self, run_id: uuid.UUID) -> None:
        self.t.cutover_runs[run_id]["status"] = "running"

    async def finish(self, run_id: uuid.UUID, status: str, reason: str | None,
                     downtime_s: float | None) -> None:
        self.t.cutover_runs[run_id].update(status=status, reason=reason, downtime_s=downtime_s)

    async def in_progress(self, group_id: uuid.UUID) -> bool:
        return any(run["group_id"] == group_id and run["status"] == "running"
                   for run in self.t.cutover_runs.values())

    async def ever_ran(self, group_id: uuid.UUID) -> bool:
        return any(run["group_id"] == group_id and run["status"] not in (*PENDING, "refused")
                   for run in self.t.cutover_runs.values())

    async def refuse_pending(self, group_id: uuid.UUID, reason: str) -> None:
        for run in self.t.cutover_runs.values():
            if run["group_id"] == group_id and run["status"] in PENDING:
                run.update(status="refused", reason=reason)


class FakeCutoverSteps(_Repo):
    async def started(self, run_id: uuid.UUID, position: int, name: str) -> None:
        self.t.cutover_steps[(run_id, position)] = {"name": name, "status": "running"}

    async def finished(self, run_id: uuid.UUID, position: int, status: str, seconds: float, *,
                       detail: str | None = None, error: str | None = None) -> None:
        self.t.cutover_steps[(run_id, position)].update(status=status, seconds=seconds,
                                                        detail=detail, error=error)

    async def undone(self, run_id: uuid.UUID, position: int, error: str | None) -> None:
        self.t.cutover_steps[(run_id, position)].update(
            status="undo_failed" if error else "undone", undo_error=error)

    async def to_undo(self, run_id: uuid.UUID) -> list[int]:
        return sorted((p for (r, p), s in self.t.cutover_steps.items()
                       if r == run_id and s["status"] in ("done", "failed", "running")),
                      reverse=True)


class FakeInbox(_Repo):
    async def claim(self, service: str, event_id: uuid.UUID) -> None:
        if (service, event_id) in self.t.inbox:
            raise AlreadyProcessed(f"{service} already processed {event_id}")
        self.t.inbox.add((service, event_id))

    async def processed(self, service: str, event_id: uuid.UUID) -> bool:
        return (service, event_id) in self.t.inbox


class FakeSession:
    def __init__(self, store: FakeStore):
        self._store = store
        t = store.tables
        self.groups, self.vms, self.transitions = FakeGroups(t), FakeVms(t), FakeTransitions(t)
        self.messages, self.archives, self.scripts = FakeMessages(t), FakeArchives(t), FakeScripts(t)
        self.tokens, self.inbox = FakeTokens(t), FakeInbox(t)
        self.limits, self.host_keys = FakeLimits(t), FakeHostKeys(t)
        self.cutover_runs, self.cutover_steps = FakeCutoverRuns(t), FakeCutoverSteps(t)

    def transaction(self, cause: Envelope | None = None):
        return self._store.transaction(cause)


class FakeTx(FakeSession):
    def __init__(self, store: FakeStore, cause: Envelope | None):
        super().__init__(store)
        self.cause = cause
        self.published: list[Envelope] = []

    async def publish(self, payload: Payload, *, group_id: uuid.UUID,
                      vm_id: uuid.UUID | None = None) -> Envelope:
        event = Envelope.new(payload, group_id=group_id, vm_id=vm_id, cause=self.cause)
        self.published.append(event)
        return event

    async def claim(self, service: str, event_id: uuid.UUID) -> None:
        await self.inbox.claim(service, event_id)


class FakeStore:
    """The store in memory. A transaction commits its changes and its events (to `tables.
    outbox`) when it ends, and leaves the tables as they were when it raises."""

    def __init__(self) -> None:
        self.tables = Tables()

    @asynccontextmanager
    async def transaction(self, cause: Envelope | None = None):
        before = copy.deepcopy(self.tables)
        tx = FakeTx(self, cause)
        try:
            yield tx
        except BaseException:
            # In place: sessions opened before see the rollback too.
            vars(self.tables).update(vars(before))
            raise
        self.tables.outbox.extend(tx.published)

    @asynccontextmanager
    async def session(self):
        yield FakeSession(self)

    async def claim(self, service: str, event_id: uuid.UUID) -> None:
        await FakeInbox(self.tables).claim(service, event_id)

    async def processed(self, service: str, event_id: uuid.UUID) -> bool:
        return await FakeInbox(self.tables).processed(service, event_id)


class FakeBus:
    """Delivers the committed events to the services the real topology binds to them, through
    their real routers, until none is left; `delivered` keeps (service, event type) in order."""

    def __init__(self, store: FakeStore, deps: Deps, services: tuple[str, ...] = SERVICES):
        self.store, self.deps = store, deps
        bindings = topology().bindings
        self.routes = [(s, set(bindings[s]), router_of(s)) for s in services]
        self.sent = 0  # outbox events handed out so far
        self.delivered: list[tuple[str, str]] = []

    async def deliver(self, envelope: Envelope) -> None:
        """Hand one event to every service bound to it (again, for a redelivery)."""
        key = routing_key(envelope.type, envelope.payload)
        for service, keys, router in self.routes:
            if key in keys:
                self.delivered.append((service, envelope.type))
                await router.dispatch(envelope, envelope.typed(), self.deps)

    async def settle(self, limit: int = 1000) -> None:
        """Deliver everything committed so far, and what that causes, in outbox order."""
        for _ in range(limit):
            if self.sent == len(self.store.tables.outbox):
                return
            envelope = self.store.tables.outbox[self.sent]
            self.sent += 1
            await self.deliver(envelope)
        raise AssertionError(f"the events did not settle in {limit} deliveries")
