"""Deadlines against the real PostgreSQL and RabbitMQ, the test playing the VMs: a VM silent
in configuring past its deadline is failed by the coordinator's watchdog with the reason
(`no word for 600 s in configuring, last step: unpacking /data`) and its group halts as for any
failure; a VM that spoke lately is not failed; a plan's deadline overrides the settings' for
its group only; two watchdogs looking at once fail a VM once.

Silence is made by ageing the VMs' clocks in the database (their last word and last change of
state), not by waiting: the watchdog's look is then either called directly or left to the
coordinator's process on a short interval."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from shared.deadlines import fail_the_silent
from shared.providers.base import BootSource
from shared.store.session import Store
from tests.conftest import eventually
from tests.integration.harness import THREE_VMS, Ferry, ferry_cli, start_ferry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]

ONE_VM = """
group: {group}
{deadlines}
vms:
  - name: app1
    role: app
    cpus: 1
    memory_mb: 512
    disks: [{{size_gb: 10}}]
    filesystems: [{{mount: /, size_gb: 8}}]
    network: {{address: 10.20.0.11/24, hostname: app1.{group}.example}}
"""


def deadline_settings(settings, interval: float):
    return settings.model_copy(update={"deadline_configuring_s": 600.0,
                                       "deadline_interval_s": interval})


async def age(ferry: Ferry, vm_id: uuid.UUID, seconds: float) -> None:
    """The VM last spoke, and last changed state, `seconds` ago."""
    await ferry.pool.execute(
        "UPDATE vms SET state_changed_at = now() - $2 * interval '1 second',"
        " last_word_at = now() - $2 * interval '1 second' WHERE id = $1", vm_id, seconds)


async def configuring(ferry: Ferry, vm_id: uuid.UUID) -> None:
    await ferry.wait_booted(vm_id, BootSource.NETWORK)
    assert await ferry.state(vm_id) == "configuring"


async def vm_row(ferry: Ferry, vm_id: uuid.UUID):
    return await ferry.pool.fetchrow("SELECT * FROM vms WHERE id = $1", vm_id)


async def test_a_silent_vm_fails_with_the_reason_and_halts_its_group_a_talking_one_does_not(
        settings, operator):
    """The coordinator's process, looking every 0.2 s, fails app1 (silent 700 s, last step
    named by its log line) and halts the group; db1 and db2, aged as much but speaking since
    (a heartbeat naming a step; a script download), go on configuring."""
    ferry = await start_ferry(deadline_settings(settings, 0.2), operator)
    try:
        group_id = await ferry.submit(THREE_VMS.format(group="quiet"))
        ids = await ferry.vm_ids(group_id)
        for vm_id in ids.values():
            await configuring(ferry, vm_id)
        async with ferry.vm(ids["app1"]) as app1:
            await app1.script()
            await app1.state("configuring", "unpack-archives")
            await app1.message("unpacking /data (excluded when archived: sessions/*)",
                               step="unpacking /data")
        await age(ferry, ids["app1"], 700)
        await age(ferry, ids["db1"], 700)
        async with ferry.vm(ids["db1"]) as db1:
            await db1.heartbeat("unpacking /")  # as the scripts' pulse does, naming a step
        await age(ferry, ids["db2"], 700)
        async with ferry.vm(ids["db2"]) as db2:
            await db2.script()  # any request with its token is a word

        reason = "no word for 600 s in configuring, last step: unpacking /data"
        assert await ferry.wait_state(ids["app1"], "failed") == "failed"
        failed = await vm_row(ferry, ids["app1"])
        assert (failed["message"], failed["failed_from"], failed["step"]) == \
            (reason, "configuring", "unpack-archives")
        await ferry.wait_group(group_id, "halted")
        halted_reason = await ferry.pool.fetchval(
            "SELECT halted_reason FROM groups WHERE id = $1", group_id)
        assert halted_reason == f"app1 failed at unpack-archives: {reason}"
        logged = await ferry.pool.fetchval(
            "SELECT text FROM vm_messages WHERE vm_id = $1 AND level = 'error'", ids["app1"])
        assert logged == reason
        # Neither of those that spoke is failed, at any later look.
        for name in ("db1", "db2"):
            assert await ferry.state(ids[name]) == "configuring", name
        assert (await vm_row(ferry, ids["db1"]))["last_step"] == "unpacking /"
        assert (await vm_row(ferry, ids["db2"]))["last_step"] == "pxe-boot"
        assert await fail_the_silent(Store(ferry.pool), ferry.settings) == []
        # What the operator sees: the reason, as for any failure.
        shown = await ferry_cli(ferry.settings, "status", "quiet", expect=3)
        assert f"HALTED: app1 failed at unpack-archives: {reason}" in shown
    finally:
        await ferry.host.stop()


async def test_a_plans_deadline_overrides_the_settings_for_its_group_only(settings, operator):
    """Both VMs silent 130 s in configuring: the one whose plan gives configuring 120 s fails
    with that figure; the other, under the settings' 600 s, does not."""
    ferry = await start_ferry(deadline_settings(settings, 3600), operator)
    try:
        tight = await ferry.submit(ONE_VM.format(group="tight",
                                                 deadlines="deadlines: {configuring: 120}"))
        loose = await ferry.submit(ONE_VM.format(group="loose", deadlines=""))
        tight_vm = (await ferry.vm_ids(tight))["app1"]
        loose_vm = (await ferry.vm_ids(loose))["app1"]
        for vm_id in (tight_vm, loose_vm):
            await configuring(ferry, vm_id)
            await age(ferry, vm_id, 130)

        failed = await fail_the_silent(Store(ferry.pool), ferry.settings)

        assert [(f.vm, f.group_id) for f in failed] == [("app1", str(tight))]
        assert failed[0].reason == "no word for 120 s in configuring, last step: pxe-boot"
        assert failed[0].silent_s >= 130
        assert await ferry.state(tight_vm) == "failed"
        assert await ferry.state(loose_vm) == "configuring"
        await ferry.wait_group(tight, "halted")
        assert await ferry.group_status(loose) == "active"
    finally:
        await ferry.host.stop()


async def test_two_watchdogs_looking_at_once_fail_a_silent_vm_once(settings, operator):
    """Two replicas of the coordinator look at the same moment: one fails the VM, the other
    skips its locked row; one vm.failed is announced."""
    ferry = await start_ferry(deadline_settings(settings, 3600), operator)
    try:
        group_id = await ferry.submit(ONE_VM.format(group="twice", deadlines=""))
        vm_id = (await ferry.vm_ids(group_id))["app1"]
        await configuring(ferry, vm_id)
        await age(ferry, vm_id, 700)
        stores = [Store(ferry.pool), Store(ferry.pool)]

        looks = await asyncio.gather(*(fail_the_silent(s, ferry.settings) for s in stores))

        assert sorted(len(found) for found in looks) == [0, 1]
        announced = await ferry.pool.fetchval(
            "SELECT count(*) FROM outbox WHERE routing_key = 'vm.failed'"
            " AND body->>'vm_id' = $1", str(vm_id))
        assert announced == 1
        await ferry.wait_group(group_id, "halted")
    finally:
        await ferry.host.stop()


async def test_a_cancelled_groups_vms_and_resting_vms_have_no_deadline(settings, operator):
    """Aged VMs of a group being cancelled, and a VM resting in configured (waiting for the
    provisioner, or a person), are left alone."""
    ferry = await start_ferry(deadline_settings(settings, 3600), operator)
    try:
        ending = await ferry.submit(ONE_VM.format(group="ending", deadlines=""))
        resting = await ferry.submit(ONE_VM.format(group="resting", deadlines=""))
        ending_vm = (await ferry.vm_ids(ending))["app1"]
        resting_vm = (await ferry.vm_ids(resting))["app1"]
        await configuring(ferry, ending_vm)
        await configuring(ferry, resting_vm)
        await ferry.pool.execute("UPDATE groups SET status = 'cancelling' WHERE id = $1", ending)
        await ferry.pool.execute("UPDATE vms SET state = 'configured' WHERE id = $1", resting_vm)
        await age(ferry, ending_vm, 7000)
        await age(ferry, resting_vm, 7000)

        assert await fail_the_silent(Store(ferry.pool), ferry.settings) == []
    finally:
        await ferry.host.stop()


async def test_the_archivers_progress_is_the_vms_word_while_it_is_archived(settings, operator,
                                                                          tmp_path):
    """Each item the archiver starts on restarts the VM's clock (and names its last step)."""
    root = tmp_path / "legacy"
    (root / "data").mkdir(parents=True)
    (root / "data" / "file").write_text("content")
    plan = ONE_VM.format(group="archived", deadlines="") + f"""
    source: {{kind: local, root: {root}}}
    archives: [{{path: /data}}]
"""
    ferry = await start_ferry(deadline_settings(settings, 3600), operator)
    try:
        vm_id = (await ferry.vm_ids(await ferry.submit(plan)))["app1"]
        await ferry.wait_state(vm_id, "configuring")
        row = await ferry.pool.fetchrow(
            "SELECT v.last_word_at, t.at AS archived_at FROM vms v JOIN vm_transitions t"
            " ON t.vm_id = v.id AND t.to_state = 'archived' WHERE v.id = $1", vm_id)
        # Heard before it was archived: no token was issued yet, so only the archiver spoke.
        assert row["last_word_at"] is not None and row["last_word_at"] <= row["archived_at"]
    finally:
        await ferry.host.stop()
