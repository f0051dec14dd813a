"""The end of a group with the in-memory store and bus and the fake provider: a cancel deletes
what was made and closes the group, whatever was in flight; a finalize keeps or removes the
legacy forwarding. (Over the real RabbitMQ and PostgreSQL: tests/integration/test_group_end.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.archiver import handlers as archiver
from services.creator import handlers as creator
from services.creator.specs import vm_spec
from services.cutover.scripts import UNFORWARD
from services.topology import router_of
from shared import events as ev
from shared import journey
from shared.cutover_adapters import CutoverAdapters
from shared.events import Envelope
from shared.plan import load_plan
from shared.providers.base import ProviderError
from shared.service import Context
from shared.states import GroupStatus, VmState
from shared.store.archives import ArchiveRecord
from tests.integration.harness import THREE_VMS, RecordingMachines
from tests.unit.test_handlers import World

S, G = VmState, GroupStatus


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


async def ready(world: World) -> None:
    await world.submit()
    await world.configure("app1", "db1", "db2")
    await world.report("app1", "provisioned", "first-boot")
    await world.ready_master()
    for state, step in (("provisioned", "first-boot"), ("loading", "load-dumps"),
                        ("replicating", "replication-started"), ("ready", "replicating")):
        await world.report("db2", state, step)
    assert world.group().status == G.READY


async def cancel(world: World) -> None:
    async with world.store.transaction() as tx:
        group = await tx.groups.get(world.group_id, lock=True)
        await journey.request_cancel(tx, group)
    await world.bus.settle()


async def test_a_cancelled_ready_group_has_its_vms_deleted_tokens_revoked_and_name_freed(world):
    """From ready: every VM the provider made is deleted and ends cancelled, the archive
    records go, the VMs' tokens no longer open anything, the group is cancelled (closed) and
    its name may be submitted again."""
    await ready(world)
    token = world.provider.by_vm_id(world.vm("app1").id).boots[0][1]["ferry.token"]
    async with world.store.transaction() as tx:
        await tx.archives.save(ArchiveRecord(id="a1", vm_id=world.vm("app1").id, kind="path",
                                             source="/", engine=None, file="/nowhere/a1",
                                             sha256="0" * 64, size=1))
    await cancel(world)
    assert world.provider.vms == {}
    assert {world.state(n) for n in ("app1", "db1", "db2")} == {S.CANCELLED}
    group = world.group()
    assert (group.status, group.closing_error) == (G.CANCELLED, None)
    assert group.closed_at is not None
    assert world.store.tables.archives == {}
    async with world.store.session() as db:
        assert await db.tokens.owner(token) is None
    [done] = world.published("group.cancelled")
    assert done.payload == {"vms_deleted": ["app1", "db1", "db2"], "archives_removed": 1}
    async with world.store.transaction() as tx:
        await journey.submit(tx, load_plan(THREE_VMS.format(group="shop")))


async def test_a_provider_error_leaves_the_group_cancelling_and_a_second_cancel_finishes(world):
    """The provider refuses to delete db1: the others are deleted, the group stays cancelling
    with db1 and the provider's words, and the name stays held; asked again, the cancel
    deletes db1 (and only db1) and the group is cancelled."""
    await world.submit()
    refused = {world.vm("db1").provider_ref}
    delete = world.provider.delete
    deleted: list[str] = []

    async def flaky(ref: str) -> None:
        if ref in refused:
            refused.discard(ref)
            raise ProviderError(f"fake: {ref} is locked")
        deleted.append(ref)
        await delete(ref)
    world.provider.delete = flaky
    await cancel(world)
    group = world.group()
    assert group.status == G.CANCELLING
    assert group.closing_error.startswith(
        f"the provider did not delete db1: fake: {world.vm('db1').provider_ref} is locked;")
    assert "Cancel again to retry (`ferry cancel shop`)" in group.closing_error
    assert [e.payload["reason"] for e in world.published("group.cancel_failed")] == \
        [group.closing_error]
    assert (world.state("app1"), world.state("db1")) == (S.CANCELLED, S.CONFIGURING)
    with pytest.raises(Exception, match="already being migrated"):
        async with world.store.transaction() as tx:
            await journey.submit(tx, load_plan(THREE_VMS.format(group="shop")))
    await cancel(world)
    assert world.group().status == G.CANCELLED and world.group().closing_error is None
    assert world.provider.vms == {}
    assert deleted.count(world.vm("db1").provider_ref) == 1 and len(deleted) == 3


async def test_a_creation_asked_for_after_the_cancel_makes_nothing(world):
    """The whole group archived, but the creator has not created yet when the cancel comes:
    its group.archived, delivered after, makes no VM, and a creation that had already marked
    its VM creating stops before the provider (the group is read inside its transaction)."""
    world.bus.routes = [r for r in world.bus.routes if r[0] != "creator"]
    await world.submit()
    async with world.store.transaction() as tx:  # what the creator's note of archive.ready does
        assert await journey.mark_archived_once(tx, world.group_id)
        await journey.transition(tx, world.vm("db2").id, S.CREATING, step="create")
    archived = Envelope.new(ev.GroupArchived(), group_id=world.group_id)
    await cancel(world)
    assert world.group().status == G.CANCELLING  # no creator heard the cancel
    deps = world.bus.deps
    await router_of("creator").dispatch(archived, archived.typed(), deps)
    await creator._create(deps, world.vm("db2").id, archived)
    assert world.provider.create_calls == 0
    assert world.state("db2") == S.CREATING and world.state("app1") == S.ARCHIVED


async def test_a_vm_whose_creation_was_cut_off_is_found_by_its_key_and_deleted(world):
    """A creator died after the provider made the VM and before it was recorded (the VM is
    creating without a provider reference): the cancel asks the provider with the same
    idempotency key, gets that VM, and deletes it."""
    world.bus.routes = [r for r in world.bus.routes if r[0] != "creator"]
    await world.submit()
    vm = world.vm("app1")
    async with world.store.transaction() as tx:
        await journey.transition(tx, vm.id, S.CREATING, step="create")
    made = await world.provider.create_vm(vm_spec(world.group().parsed_plan(), vm),
                                          idempotency_key=f"vm:{vm.id}")
    world.bus.routes = [*world.bus.routes, ("creator", {"group.cancel_requested"},
                                            router_of("creator"))]
    await cancel(world)
    assert made.ref not in world.provider.vms and world.provider.created == 1
    assert world.group().status == G.CANCELLED
    assert world.published("group.cancelled")[0].payload["vms_deleted"] == ["app1"]


async def test_a_failure_reported_while_the_group_is_cancelling_halts_nothing(world):
    """A VM's failure in flight when the cancel began neither halts the cancelling group nor
    fails the coordinator's handler."""
    world.bus.routes = [r for r in world.bus.routes if r[0] != "creator"]
    await world.submit()
    async with world.store.transaction() as tx:
        group = await tx.groups.get(world.group_id, lock=True)
        await journey.request_cancel(tx, group)
    event = Envelope.new(ev.VmFailed(failed_from="configuring", message="boom"),
                         group_id=world.group_id, vm_id=world.vm("db1").id)
    await router_of("coordinator").dispatch(event, event.typed(), world.bus.deps)
    assert world.group().status == G.CANCELLING
    assert world.published("group.halted") == []


async def test_archives_written_after_the_cancel_are_discarded_unrecorded(world, tmp_path,
                                                                         monkeypatch):
    """The archiver has begun app1 (archiving) when the group is cancelled, and writes its
    archives only after the cancel removed the group's folder: finding the VM cancelled, it
    removes what it wrote and records nothing."""
    root = tmp_path / "legacy-app1"
    (root / "data").mkdir(parents=True)
    (root / "data" / "orders.csv").write_text("1,kettle\n")
    plan = THREE_VMS.format(group="shop").replace(
        "    network: {address: 10.20.0.11/24",
        f"    archives: [{{path: /data}}]\n    source: {{kind: local, root: {root}}}\n"
        "    network: {address: 10.20.0.11/24", 1)
    world.bus.routes = [r for r in world.bus.routes if r[0] != "archiver"]
    await world.submit(plan)
    begun, go_on = asyncio.Event(), asyncio.Event()
    make_folder = archiver._vm_dir

    def begins(*args):
        begun.set()
        return make_folder(*args)

    async def take_later(*args):
        await go_on.wait()
        return await take(*args)
    take = archiver._take_archives
    monkeypatch.setattr(archiver, "_vm_dir", begins)
    monkeypatch.setattr(archiver, "_take_archives", take_later)
    deps, archiver_router = world.bus.deps, router_of("archiver")
    [submitted] = world.published("group.submitted")
    await archiver_router.dispatch(submitted, submitted.typed(), deps)
    request = next(e for e in world.published("archive.requested")
                   if e.vm_id == world.vm("app1").id)
    archiving = asyncio.create_task(archiver_router.dispatch(request, request.typed(), deps))
    await asyncio.wait_for(begun.wait(), 10)
    assert world.state("app1") == S.ARCHIVING
    await cancel(world)
    assert world.state("app1") == S.CANCELLED and world.group().status == G.CANCELLED
    folder = deps.settings.archive_root / str(world.group_id) / "app1"
    written = []
    write_manifest = archiver.write_manifest

    def noting(results, dest):
        written.extend(r.file for r in results)
        return write_manifest(results, dest)
    monkeypatch.setattr(archiver, "write_manifest", noting)
    go_on.set()
    await asyncio.wait_for(archiving, 10)
    assert written and all(Path(f).parent == folder for f in written)
    assert not folder.exists() and not folder.parent.exists()
    assert world.store.tables.archives == {}
    assert world.published("archive.ready") == []


def with_legacy_sources(plan: str) -> str:
    """THREE_VMS with app1 and db1 on SSH-reachable legacy hosts with old public addresses."""
    for name, public in (("app1", "198.51.100.11"), ("db1", "198.51.100.12")):
        plan = plan.replace(
            f"    network: {{address: 10.20.0.{11 if name == 'app1' else 12}/24, ",
            f"    source: {{kind: ssh, host: legacy-{name}.example}}\n"
            f"    network: {{public_ip: {public}, address: 10.20.0.{11 if name == 'app1' else 12}"
            "/24, ", 1)
    return plan


async def live(world: World, hosts: RecordingMachines) -> None:
    """A group the cutover left live (the cutover itself needs machines: see the integration
    and lab tests; a finalize looks at the group's status only), with the test's legacy hosts
    at the SSH edge."""
    world.bus.deps.cutover = CutoverAdapters(Path("/key"), Path("/known"), Path("/tsig"),
                                             remote=hosts)
    world.bus.routes = [r for r in world.bus.routes if r[0] not in ("archiver", "creator")]
    await world.submit(with_legacy_sources(THREE_VMS.format(group="shop")))
    async with world.store.transaction() as tx:
        group = await tx.groups.get(world.group_id)
        for step in (G.READY, G.CUTTING_OVER, G.LIVE):
            group = await journey.set_group_status(tx, group, step)


async def finalize(world: World, forwarding: str) -> None:
    async with world.store.transaction() as tx:
        group = await tx.groups.get(world.group_id, lock=True)
        await journey.request_finalize(tx, group, forwarding)
    await world.bus.settle()


async def test_a_finalize_that_removes_the_forwarding_runs_unforward_on_each_legacy_host(world):
    """Asked to remove it, the cutover service runs the rollback's UNFORWARD on the legacy host
    of each VM with an old public address (app1, db1; db2 has none), then closes the group
    with the forwarding removed."""
    hosts = RecordingMachines()
    await live(world, hosts)
    await finalize(world, "remove")
    assert hosts.ran == [("legacy-app1.example", UNFORWARD), ("legacy-db1.example", UNFORWARD)]
    group = world.group()
    assert (group.status, group.legacy_forwarding) == (G.FINALIZED, "removed")
    assert [e.payload for e in world.published("group.finalized")] == \
        [{"forwarding": "removed", "archives_removed": 0}]


async def test_a_finalize_that_keeps_the_forwarding_touches_no_legacy_host(world):
    hosts = RecordingMachines()
    await live(world, hosts)
    await finalize(world, "keep")
    assert hosts.ran == []
    assert (world.group().status, world.group().legacy_forwarding) == (G.FINALIZED, "kept")


async def test_a_legacy_host_out_of_reach_leaves_the_group_finalizing_with_the_reason(world):
    """db1's legacy host refuses the connection: the group stays finalizing with ssh's words
    and what to do; once it answers, finalizing again removes the forwarding and closes it."""
    hosts = RecordingMachines(unreachable={"legacy-db1.example"})
    await live(world, hosts)
    await finalize(world, "remove")
    group = world.group()
    assert group.status == G.FINALIZING
    assert group.closing_error.startswith(
        "the forwarding was not removed: removing the forwarding of 198.51.100.12: cannot "
        "reach legacy db1 (legacy-db1.example) over SSH: Connection refused. Finalize again")
    assert "--forwarding keep" in group.closing_error
    hosts.unreachable.clear()
    await finalize(world, "remove")
    assert world.group().status == G.FINALIZED
    assert [host for host, _ in hosts.ran] == \
        ["legacy-app1.example", "legacy-app1.example", "legacy-db1.example"]


async def test_a_halted_group_with_a_failed_vm_is_cancelled_whole(world):
    """A halted group (db1 failed, its siblings held) may be cancelled: the failed VM and the
    held ones are deleted alike, and no VM is retried or resumed on the way."""
    await world.submit()
    await world.report("db1", "failed", "partition", message="no disk /dev/vdb")
    assert world.group().status == G.HALTED
    await cancel(world)
    assert world.group().status == G.CANCELLED
    assert {world.state(n) for n in ("app1", "db1", "db2")} == {S.CANCELLED}
    assert world.provider.vms == {}
    assert world.published("group.resumed") == []
