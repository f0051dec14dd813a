"""The end of a group over the real RabbitMQ and PostgreSQL, through the operator API and the
`ferry` command: a cancel deletes the VMs the fake provider made, removes the archives, kills
the VMs' tokens and frees the name, even with a creation in flight; it is refused mid-cutover
and once live; a finalize keeps or removes the legacy forwarding, and is refused unless live.

No legacy host is reachable outside the lab: the cutover's SSH edge is a recording double
(harness.RecordingMachines), so what is checked is which script runs on which legacy host, not
iptables itself (the lab journey runs the cutover's forwarding and its undo on real hosts)."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import pytest

from services.cutover.scripts import MAINTENANCE_ON, UNFORWARD, forward_script
from shared import archive_store, journey
from shared import events as ev
from shared.cutover_adapters import CutoverAdapters
from shared.providers.base import group_network
from shared.providers.fake import FakeProvider
from shared.states import NAME_RELEASED, VmState
from shared.store.archives import ArchiveRecord
from shared.store.session import Store
from tests.conftest import eventually
from tests.integration.harness import (
    THREE_VMS, RecordingMachines, Ferry, ferry_cli, play_journey, start_ferry,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]


def with_archives(root: Path) -> str:
    """THREE_VMS with app1's /data archived for real, from a local folder."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "orders.csv").write_text("1,kettle\n2,teapot\n")
    return THREE_VMS.format(group="shop").replace(
        "    network: {address: 10.20.0.11/24",
        f"    archives: [{{path: /data}}]\n    source: {{kind: local, root: {root}}}\n"
        "    network: {address: 10.20.0.11/24", 1)


async def status_of(operator, path: str, **kw) -> tuple[int, dict]:
    async with operator.post(path, **kw) as response:
        return response.status, await response.json()


async def test_a_ready_group_cancelled_with_ferry_cancel_is_gone_and_its_name_free(
        settings, operator, tmp_path):
    """From ready, `ferry cancel shop --yes`: the fake provider has no VM left, the archives'
    files and records are gone, every VM's token is refused (401), the group is cancelled and
    kept for the record, and the same plan is accepted again as a new group."""
    ferry = await start_ferry(settings, operator)
    try:
        plan = with_archives(tmp_path / "legacy-app1")
        group_id = await ferry.submit(plan)
        await play_journey(ferry, group_id)
        await ferry.wait_group(group_id, "ready")
        ids = await ferry.vm_ids(group_id)
        tokens = {name: ferry.token(vm_id) for name, vm_id in ids.items()}
        files = [r["file"] for r in await ferry.pool.fetch("SELECT file FROM archives")]
        assert files and all(Path(f).is_file() for f in files)

        out = await ferry_cli(settings, "cancel", "shop", "--yes")
        assert "group shop cancelled: its VMs are deleted, its archives removed" in out
        assert "the name shop is free again" in out

        assert ferry.provider.vms == {} and ferry.provider.created == 3
        assert {await ferry.state(vm_id) for vm_id in ids.values()} == {"cancelled"}
        assert await ferry.pool.fetchval("SELECT count(*) FROM archives") == 0
        assert not any(Path(f).exists() for f in files)
        assert not archive_store.group_folder(settings.archive_root, group_id).exists()
        for name, vm_id in ids.items():
            async with operator.get(f"/v1/vms/{vm_id}/script",
                                    headers={"Authorization": f"Bearer {tokens[name]}"}) as r:
                assert r.status == 401, name
        row = await ferry.pool.fetchrow("SELECT * FROM groups WHERE id = $1", group_id)
        assert (row["status"], row["closing_error"]) == ("cancelled", None)
        assert row["closed_at"] is not None
        [done] = await ferry.pool.fetch(
            "SELECT body FROM outbox WHERE routing_key = 'group.cancelled'")
        assert done["body"]["payload"] == {"vms_deleted": ["app1", "db1", "db2"],
                                           "archives_removed": 1}

        again = await ferry.submit(plan)
        assert again != group_id
        async with operator.get("/v1/groups/shop") as response:
            assert (await response.json())["id"] == str(again)
        status, body = await status_of(operator, f"/v1/groups/{group_id}/cancel")
        assert status == 409 and body["error"] == \
            "group shop is cancelled already: its VMs and archives are gone"
    finally:
        await ferry.host.stop()


async def test_a_cancel_while_a_vm_is_being_created_leaves_no_vm_behind(settings, operator):
    """The provider is making app1 (its call held open) when the operator cancels: the cancel
    waits for that creation, then deletes app1; db1 and db2, not begun, are never made, and the
    creator's handling of group.archived ends without making anything more."""
    provider = FakeProvider()
    provider.gate = asyncio.Event()
    ferry = await start_ferry(settings, operator, provider=provider)
    try:
        group_id = await ferry.submit(THREE_VMS.format(group="shop"))
        await eventually(lambda: provider.created == 1, what="app1 made, its call held")
        status, body = await status_of(operator, "/v1/groups/shop/cancel")
        assert (status, body["status"]) == (202, "cancelling")
        status, body = await status_of(operator, "/v1/groups",
                                       data=THREE_VMS.format(group="shop"))
        assert (status, body["error"]) == \
            (409, "group 'shop' is being cancelled: submit it again once it is cancelled")
        provider.gate.set()
        await ferry.wait_group(group_id, "cancelled")
        archived = await ferry.pool.fetchval(
            "SELECT event_id FROM outbox WHERE routing_key = 'group.archived'")

        async def creator_done():
            return await ferry.pool.fetchval(
                "SELECT true FROM inbox WHERE service = 'creator' AND event_id = $1", archived)
        await eventually(creator_done, what="the creator to finish with group.archived")
        assert provider.vms == {} and provider.created == 1
        ids = await ferry.vm_ids(group_id)
        assert {await ferry.state(vm_id) for vm_id in ids.values()} == {"cancelled"}
        [done] = await ferry.pool.fetch(
            "SELECT body FROM outbox WHERE routing_key = 'group.cancelled'")
        assert done["body"]["payload"]["vms_deleted"] == ["app1"]
    finally:
        provider.gate.set()
        await ferry.host.stop()


async def test_a_name_is_held_exactly_while_the_states_say(settings, operator):
    """The store's unique index on names and shared.states.NAME_RELEASED say the same."""
    ferry = await start_ferry(settings, operator, services=())
    try:
        definition = await ferry.pool.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'groups_active_name'"
            " AND schemaname = $1", settings.database_schema)
        assert set(re.findall(r"'(\w+)'::text", definition)) == {s.value for s in NAME_RELEASED}
    finally:
        await ferry.host.stop()


async def test_finalize_is_refused_unless_live_and_wants_the_operators_choice(settings,
                                                                             operator):
    """A ready group: finalize answers 409 saying it is not live and what to do; without
    `forwarding` in the body, 422 naming it; `ferry finalize` without --forwarding refuses."""
    ferry = await start_ferry(settings, operator)
    try:
        group_id = await ferry.submit(THREE_VMS.format(group="shop"))
        await play_journey(ferry, group_id)
        await ferry.wait_group(group_id, "ready")
        status, body = await status_of(operator, "/v1/groups/shop/finalize",
                                       json={"forwarding": "keep"})
        assert status == 409 and body["error"] == (
            "group shop is ready, not live: finalize closes a group after its cutover; cut it "
            "over first (`ferry cutover shop`), or cancel it (`ferry cancel shop`)")
        status, body = await status_of(operator, "/v1/groups/shop/finalize", json={})
        assert status == 422 and body["problems"][0]["location"] == "forwarding"
        out = await ferry_cli(settings, "finalize", "shop", expect=2)
        assert "Missing option '--forwarding'" in out
        assert await ferry.group_status(group_id) == "ready"
    finally:
        await ferry.host.stop()


class ReachableFakeProvider(FakeProvider):
    """The fake provider, with each VM on its group's network at its planned address (as the
    libvirt provider reports it), so the cutover can put its runbook together."""

    async def addresses(self, ref: str) -> list[str]:
        vm = self._vm(ref)
        if vm.network != group_network(vm.spec.group):
            return []
        return [vm.spec.address.split("/")[0]]


LEGACY = {"app1": ("legacy-app1.example", "198.51.100.11"),
          "db1": ("legacy-db1.example", "198.51.100.12")}


def on_legacy_hosts(plan: str) -> str:
    """THREE_VMS with app1 and db1 read over SSH from their legacy hosts, which serve their old
    public addresses."""
    for name, (host, public) in LEGACY.items():
        address = "10.20.0.11/24" if name == "app1" else "10.20.0.12/24"
        plan = plan.replace(
            f"    network: {{address: {address}, ",
            f"    source: {{kind: ssh, host: {host}}}\n"
            f"    network: {{public_ip: {public}, address: {address}, ", 1)
    return plan


async def archive_by_hand(ferry: Ferry, group_id: uuid.UUID) -> list[Path]:
    """What the archiver does for each VM (it cannot reach the legacy hosts here): archiving,
    an archive recorded for app1 with its file in the archive store, archived, archive.ready.
    The archive files."""
    store = Store(ferry.pool)
    files = []
    for name, vm_id in (await ferry.vm_ids(group_id)).items():
        async with store.transaction() as tx:
            await journey.transition(tx, vm_id, VmState.ARCHIVING, step="archive")
            items = []
            if name == "app1":
                folder = archive_store.vm_folder(ferry.settings.archive_root, group_id, name)
                folder.mkdir(parents=True)
                file = folder / "a-data.tar.zst"
                file.write_bytes(b"archive")
                files.append(file)
                await tx.archives.save(ArchiveRecord(
                    id="a-data", vm_id=vm_id, kind="path", source="/data", engine=None,
                    file=str(file), sha256="0" * 64, size=7))
                items.append(ev.ArchiveItem(id="a-data", kind="path", source="/data",
                                            sha256="0" * 64, size=7))
            await journey.transition(tx, vm_id, VmState.ARCHIVED, step="archive")
            await tx.publish(ev.ArchiveReady(archives=items), group_id=group_id, vm_id=vm_id)
    return files


async def test_a_cut_over_group_cannot_be_cancelled_and_is_finalized_without_its_forwarding(
        settings, operator):
    """A whole cutover runs through the real cutover service, its SSH edge a recording double:
    held at its maintenance page, a cancel is refused as a run in progress; live, a cancel is
    refused pointing at finalize; `ferry finalize shop --forwarding remove` runs the rollback's
    UNFORWARD on each legacy host the cutover forwarded from, removes the archives and closes
    the group."""
    machines = RecordingMachines()
    held = machines.holds[MAINTENANCE_ON] = asyncio.Event()
    ferry = await start_ferry(
        settings, operator, provider=ReachableFakeProvider(),
        services=("creator", "configurator", "provisioner", "coordinator", "cutover"),
        cutover=CutoverAdapters(Path("/key"), Path("/known"), Path("/tsig"), remote=machines))
    try:
        group_id = await ferry.submit(on_legacy_hosts(THREE_VMS.format(group="shop")))
        files = await archive_by_hand(ferry, group_id)
        await play_journey(ferry, group_id)
        await ferry.wait_group(group_id, "ready")

        status, _ = await status_of(operator, "/v1/groups/shop/cutover", json={})
        assert status == 202
        await ferry.wait_group(group_id, "cutting_over")
        await eventually(lambda: machines.scripts_on("legacy-app1.example"),
                         what="the maintenance page going up")
        status, body = await status_of(operator, "/v1/groups/shop/cancel")
        assert status == 409 and body["error"].startswith(
            "group shop has a cutover run in progress: wait for it to end")
        held.set()
        await ferry.wait_group(group_id, "live", timeout=30)
        for host, public in LEGACY.values():
            new = "10.20.0.11" if host == "legacy-app1.example" else "10.20.0.12"
            assert forward_script(public, new) in machines.scripts_on(host)

        status, body = await status_of(operator, f"/v1/groups/{group_id}/cancel")
        assert status == 409 and "ferry finalize shop --forwarding keep|remove" in body["error"]
        out = await ferry_cli(settings, "cancel", "shop", "--yes", expect=1)
        assert "group shop is live (cut over)" in out

        machines.ran.clear()
        out = await ferry_cli(settings, "finalize", "shop", "--forwarding", "remove")
        assert "group shop finalized: the forwarding on the legacy hosts was removed" in out
        assert machines.ran == [("legacy-app1.example", UNFORWARD),
                                ("legacy-db1.example", UNFORWARD)]
        row = await ferry.pool.fetchrow("SELECT * FROM groups WHERE id = $1", group_id)
        assert (row["status"], row["legacy_forwarding"]) == ("finalized", "removed")
        assert not any(f.exists() for f in files)
        assert await ferry.pool.fetchval("SELECT count(*) FROM archives") == 0
        assert not (settings.state_dir / "cutover" / "shop").exists()
        assert {await ferry.state(v) for v in (await ferry.vm_ids(group_id)).values()} == \
            {"live"}
        status, body = await status_of(operator, "/v1/groups/shop/finalize",
                                       json={"forwarding": "keep"})
        assert status == 409 and body["error"] == "group shop is finalized already: it is closed"
    finally:
        held.set()
        await ferry.host.stop()


async def test_a_finalize_that_keeps_the_forwarding_reaches_no_legacy_host(settings, operator):
    """A group as a completed cutover leaves it (live, its VMs live), finalized with the
    forwarding kept: no script runs anywhere, and the group is closed saying it was kept."""
    machines = RecordingMachines()
    ferry = await start_ferry(
        settings, operator, services=("cutover",),
        cutover=CutoverAdapters(Path("/key"), Path("/known"), Path("/tsig"), remote=machines))
    try:
        group_id = await ferry.submit(on_legacy_hosts(THREE_VMS.format(group="shop")))
        await ferry.pool.execute("UPDATE vms SET state = 'live' WHERE group_id = $1", group_id)
        await ferry.pool.execute("UPDATE groups SET status = 'live' WHERE id = $1", group_id)
        status, body = await status_of(operator, "/v1/groups/shop/finalize",
                                       json={"forwarding": "keep"})
        assert (status, body["status"]) == (202, "finalizing")
        await ferry.wait_group(group_id, "finalized")
        assert machines.ran == []
        assert await ferry.pool.fetchval(
            "SELECT legacy_forwarding FROM groups WHERE id = $1", group_id) == "kept"
    finally:
        await ferry.host.stop()


async def test_ferry_cancel_on_a_terminal_wants_the_groups_name_typed(settings, operator):
    """On a terminal, `ferry cancel shop` shows what it will do and cancels only when the
    group's name is typed: another name cancels nothing."""
    ferry = await start_ferry(settings, operator)
    try:
        group_id = await ferry.submit(THREE_VMS.format(group="shop"))
        await ferry.wait_group(group_id, "active")
        out = await ferry_cli(settings, "cancel", "shop", typed="shopp", expect=1)
        assert "deletes its VMs through the provider and removes its archives" in out
        assert "you typed 'shopp', not 'shop': nothing was cancelled" in out
        assert await ferry.group_status(group_id) == "active"
        out = await ferry_cli(settings, "cancel", "shop", typed="shop")
        assert "group shop cancelled" in out
        assert await ferry.group_status(group_id) == "cancelled"
    finally:
        await ferry.host.stop()
