"""The services' handlers with in-memory fakes of the store and the bus (tests/unit/fakes.py)
and the fake provider: the halt, retry, resume, replica hold and duplicate-delivery rules as the
handlers and the gateway's report commands apply them, in milliseconds. (The same journey over
the real RabbitMQ and PostgreSQL: tests/integration/test_journey.py.)"""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import REGISTRY

from services.gateway import reports
from shared import events as ev
from shared import journey
from shared.plan import load_plan
from shared.providers.base import BootSource, DiskBus, ProviderError, disk_serial
from shared.providers.fake import FakeProvider
from shared.service import Deps
from shared.settings import Settings
from shared.states import GroupStatus, VmState
from tests.integration.harness import THREE_VMS
from tests.unit.fakes import FakeBus, FakeStore

S = VmState


class World:
    """Ferryman's services on the fakes, and a test playing the VMs' side."""

    def __init__(self, tmp_path):
        self.store = FakeStore()
        self.provider = FakeProvider()
        settings = Settings(state_dir=tmp_path, lab_images=tmp_path / "no-images")
        self.bus = FakeBus(self.store, Deps(store=self.store, settings=settings,
                                            provider=self.provider))
        self.group_id: uuid.UUID | None = None

    async def submit(self, plan: str = THREE_VMS.format(group="shop")) -> None:
        async with self.store.transaction() as tx:
            self.group_id = await journey.submit(tx, load_plan(plan))
        await self.bus.settle()

    def vm(self, name: str):
        return next(v for v in self.store.tables.vms.values() if v.name == name)

    def state(self, name: str) -> VmState:
        return self.vm(name).state

    def group(self):
        return self.store.tables.groups[self.group_id]

    async def report(self, name: str, state: str, step: str | None = None, *,
                     message: str | None = None, detail: dict | None = None):
        """A VM's state_update, as the gateway applies it; then what it causes."""
        async with self.store.session() as db:
            vm = await reports.report_state(db, self.vm(name).id, state, step, message, detail)
        await self.bus.settle()
        return vm

    async def configure(self, *names: str) -> None:
        for name in names:
            await self.report(name, "configuring", "partition")
            await self.report(name, "configured", "done")

    async def ready_master(self, name: str = "db1") -> None:
        await self.report(name, "provisioned", "first-boot")
        await self.report(name, "loading", "load-dumps")
        await self.report(name, "ready", "loaded", detail={"log_file": "bin.3", "log_pos": 7})

    def published(self, event_type: str) -> list[ev.Envelope]:
        return [e for e in self.store.tables.outbox if e.type == event_type]


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


async def test_the_script_finds_the_disks_the_provider_attached(world):
    """The planned buses reach the provider, and the VM's script looks for the disks by the
    serials the provider reports, with their buses."""
    plan = THREE_VMS.format(group="shop").replace(
        "disks: [{size_gb: 10}]", "disks: [{size_gb: 10}, {size_gb: 5, bus: scsi}]", 1)
    await world.submit(plan)
    app1 = world.vm("app1")
    assert world.provider.by_vm_id(app1.id).spec.disk_buses == [DiskBus.VIRTIO, DiskBus.SCSI]
    script = world.store.tables.scripts[app1.id]
    assert f"DISK_SERIALS=(\n    {disk_serial(app1.id, 0)}\n    {disk_serial(app1.id, 1)}\n)" \
        in script
    assert "DISK_BUSES=(\n    virtio\n    scsi\n)" in script


async def test_a_provider_that_cannot_list_the_disks_fails_the_vm(world, monkeypatch):
    """When the provider cannot say which disks it attached, the VM fails at list-disks with
    the provider's words, is not booted, and its group halts."""
    async def cannot(ref: str):
        raise ProviderError(f"fake: {ref} has no disk records")

    monkeypatch.setattr(world.provider, "disks", cannot)
    await world.submit()
    app1 = world.vm("app1")
    assert (app1.state, app1.step) == (S.FAILED, "list-disks")
    assert app1.message == f"fake: {app1.provider_ref} has no disk records"
    assert world.provider.by_vm_id(app1.id).boots == []
    assert world.group().status == GroupStatus.HALTED


async def test_a_group_travels_from_submitted_to_ready(world):
    """Submitted, each VM is archived, created, booted to configure, provisioned when it
    reports configured, and the group is ready once the replica replicates."""
    await world.submit()
    assert {world.state(n) for n in ("app1", "db1", "db2")} == {S.CONFIGURING}
    assert world.provider.created == 3
    await world.configure("app1", "db1", "db2")
    assert {world.state(n) for n in ("app1", "db1", "db2")} == {S.PROVISIONING}
    assert [s for s, _ in world.provider.by_vm_id(world.vm("app1").id).boots] == \
        [BootSource.NETWORK, BootSource.DISK]
    await world.report("app1", "provisioned", "first-boot")
    assert world.state("app1") == S.READY
    await world.ready_master()
    await world.report("db2", "provisioned", "first-boot")
    await world.report("db2", "loading", "load-dumps")
    await world.report("db2", "replicating", "replication-started")
    await world.report("db2", "ready", "replicating")
    assert world.group().status == GroupStatus.READY
    assert len(world.published("group.ready")) == 1
    complete = world.published("db.master.complete")
    assert [e.payload for e in complete] == [{"log_file": "bin.3", "log_pos": 7, "lsn": None}]


async def test_a_failed_vm_halts_its_group_and_its_siblings_hold_at_their_next_rest(world):
    """When one VM fails, the coordinator halts the group with the reason; a sibling that
    then reports configured is parked there instead of being provisioned."""
    await world.submit()
    await world.report("db1", "failed", "partition", message="no disk /dev/vdb")
    group = world.group()
    assert group.status == GroupStatus.HALTED
    assert group.halted_reason == "db1 failed at partition: no disk /dev/vdb"
    assert world.vm("db1").failed_from == S.CONFIGURING
    await world.report("app1", "configured", "done")
    app1 = world.vm("app1")
    assert (app1.state, app1.held_state) == (S.HALTED, S.CONFIGURED)
    assert [s for s, _ in world.provider.by_vm_id(app1.id).boots] == [BootSource.NETWORK]
    assert len(world.published("group.halted")) == 1


async def test_a_halted_group_refuses_its_pending_cutover_runs(world):
    """A cutover requested but not started when the group halts ends refused."""
    await world.submit()
    run_id = uuid.uuid4()
    async with world.store.transaction() as tx:
        await tx.cutover_runs.add(run_id, world.group_id, prepare=False)
    await world.report("app1", "failed", "partition", message="boom")
    run = world.store.tables.cutover_runs[run_id]
    assert (run["status"], run["reason"]) == ("refused", "group halted")


async def test_resume_is_refused_while_a_vm_is_failed_and_nothing_changes(world):
    """Resuming a group whose VM is still failed is refused with the reason; the group stays
    halted and no event is published."""
    await world.submit()
    await world.report("db1", "failed", "partition", message="boom")
    published = len(world.store.tables.outbox)
    with pytest.raises(journey.ResumeRefused, match="VM db1 still failed; retry it first"):
        async with world.store.transaction() as tx:
            await journey.resume(tx, world.group_id)
    assert world.group().status == GroupStatus.HALTED
    assert len(world.store.tables.outbox) == published


async def test_a_retried_vm_redoes_its_phase_once_the_group_resumes(world):
    """Retry sends a VM that failed configuring back to created (held while the group is
    halted); resume releases it and the configurator boots it again with a new token."""
    await world.submit()
    db1 = world.vm("db1")
    first_token = world.provider.by_vm_id(db1.id).boots[-1][1]["ferry.token"]
    await world.report("db1", "failed", "partition", message="boom")
    async with world.store.transaction() as tx:
        retried = await journey.retry(tx, db1.id)
    assert (retried.state, retried.held_state) == (S.HALTED, S.CREATED)
    async with world.store.transaction() as tx:
        await journey.resume(tx, world.group_id)
    await world.bus.settle()
    assert world.group().status == GroupStatus.ACTIVE
    assert world.state("db1") == S.CONFIGURING
    boots = world.provider.by_vm_id(db1.id).boots
    assert len(boots) == 2 and boots[-1][1]["ferry.token"] != first_token
    async with world.store.session() as db:
        assert await db.tokens.owner(first_token) is None


async def test_a_replica_cannot_report_replicating_before_its_master_is_complete(world):
    """The replica's early `replicating` is refused and writes nothing; once the master is
    ready (complete), the same report is applied."""
    await world.submit()
    await world.configure("app1", "db1", "db2")
    await world.report("db2", "provisioned", "first-boot")
    await world.report("db2", "loading", "load-dumps")
    published = len(world.store.tables.outbox)
    with pytest.raises(reports.Refused, match="master db1 is not complete yet"):
        await world.report("db2", "replicating", "replication-started")
    assert world.state("db2") == S.LOADING
    assert len(world.store.tables.outbox) == published
    await world.ready_master()
    replica = await world.report("db2", "replicating", "replication-started")
    assert replica.state == S.REPLICATING


async def test_a_repeated_report_is_answered_as_the_first(world):
    """A configured report repeated after the provisioner moved the VM on is not refused (the
    gateway answers with the VM as it is); an out-of-turn report still is."""
    await world.submit()
    await world.configure("app1")
    assert world.state("app1") == S.PROVISIONING
    assert await world.report("app1", "configured", "done") is None
    assert world.state("app1") == S.PROVISIONING
    with pytest.raises(reports.Refused, match="illegal transition provisioning -> configured"):
        await world.report("app1", "configured", "another-step")


async def test_a_redelivered_event_is_ignored_and_counted(world):
    """Every event delivered a second time is recognised by every service: nothing changes in
    the store or at the provider, and each duplicate is counted once."""
    await world.submit()

    def counted() -> float:
        return sum(s.value for m in REGISTRY.collect() if m.name == "ferry_events_duplicate"
                   for s in m.samples if s.name.endswith("_total"))
    tables = world.store.tables
    before = (dict(tables.vms), list(tables.transitions), len(tables.outbox),
              world.provider.create_calls, world.provider.created)
    duplicates_before = counted()
    deliveries = len(world.bus.delivered)
    for envelope in list(tables.outbox):
        await world.bus.deliver(envelope)
    redelivered = len(world.bus.delivered) - deliveries
    assert redelivered > 10
    assert counted() - duplicates_before == redelivered
    assert (dict(tables.vms), list(tables.transitions), len(tables.outbox),
            world.provider.create_calls, world.provider.created) == before
