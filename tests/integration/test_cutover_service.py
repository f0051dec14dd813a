"""The cutover service over the real RabbitMQ and PostgreSQL, where no machine is needed: a run
that cannot even start changes nothing, and a run interrupted by a crash that cannot be put
back together afterwards is reported as such. (Runs on real machines, and a cutover process
killed in the middle of one: tests/lab/test_lab_journey.)"""

from __future__ import annotations

import pytest

from shared.cutover_names import WINDOW_STEPS
from services.runtime import SERVICES
from tests.conftest import eventually
from tests.integration.harness import THREE_VMS, play_journey, start_ferry
from tests.service_process import ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]


async def test_a_cutover_that_cannot_start_changes_nothing(settings, operator):
    """The fake provider reports no address for its VMs, so the runbook cannot reach them: the
    run fails with that reason before any step, the group stays ready and its VMs too."""
    ferry = await start_ferry(settings, operator)
    try:
        group_id = await ferry.submit(THREE_VMS.format(group="shop"))
        await play_journey(ferry, group_id)
        await ferry.wait_group(group_id, "ready")
        async with operator.post(f"/v1/groups/{group_id}/cutover", json={}) as response:
            assert response.status == 202, await response.text()
            run_id = (await response.json())["run_id"]

        async def ended():
            row = await ferry.pool.fetchrow("SELECT * FROM cutover_runs WHERE id = $1::uuid",
                                            run_id)
            return row if row["status"] not in ("requested", "running") else None
        run = await eventually(ended, 30, what="the run to end")
        assert run["status"] == "failed"
        assert "app1 has no address this machine reaches (provider fake)" in run["reason"]
        assert await ferry.pool.fetchval(
            "SELECT count(*) FROM cutover_steps WHERE run_id = $1::uuid", run_id) == 0
        assert await ferry.group_status(group_id) == "ready"
        ids = await ferry.vm_ids(group_id)
        assert {await ferry.state(vm_id) for vm_id in ids.values()} == {"ready"}
        failed = await ferry.pool.fetch(
            "SELECT body FROM outbox WHERE routing_key = 'cutover.failed'")
        assert len(failed) == 1
    finally:
        await ferry.host.stop()


async def test_an_interrupted_run_that_cannot_be_rolled_back_is_reported_as_such(
        settings, operator, tmp_path):
    """A run its journal shows `running` (what a cutover process had written when it died in
    the middle of its fourth step, put in the store as the crash left it) is delivered again
    to a cutover process started afresh (`python -m services.cutover`) that cannot put the
    runbook together (the sim provider knows no address of the VMs): the run fails as
    "interrupted, and it cannot be rolled back", with the reason; nothing is undone, and the
    group and its VMs stay cutting_over for an operator to look at."""
    ferry = await start_ferry(settings, operator,
                              services=tuple(s for s in SERVICES if s != "cutover"))
    cutover = ServiceProcess("cutover", settings, tmp_path / "cutover.log", provider="sim")
    try:
        group_id = await ferry.submit(THREE_VMS.format(group="shop"))
        await play_journey(ferry, group_id)
        await ferry.wait_group(group_id, "ready")
        async with operator.post(f"/v1/groups/{group_id}/cutover", json={}) as response:
            assert response.status == 202, await response.text()
            run_id = (await response.json())["run_id"]
        # The crash's residue: the run begun (group and VMs cutting over), three steps done
        # and the fourth running, as the cutover's _begin and its journal write them.
        await ferry.pool.execute("UPDATE cutover_runs SET status = 'running' WHERE id = $1::uuid",
                                 run_id)
        await ferry.pool.execute("UPDATE groups SET status = 'cutting_over' WHERE id = $1",
                                 group_id)
        await ferry.pool.execute("UPDATE vms SET state = 'cutting_over' WHERE group_id = $1",
                                 group_id)
        reached = list(WINDOW_STEPS[:4])
        await ferry.pool.executemany(
            "INSERT INTO cutover_steps (run_id, position, name, status, started_at, finished_at)"
            " VALUES ($1::uuid, $2, $3, $4, now(), CASE WHEN $4 = 'done' THEN now() END)",
            [(run_id, n, name, "running" if n == 3 else "done") for n, name in enumerate(reached)])

        cutover.start()

        async def ended():
            row = await ferry.pool.fetchrow("SELECT * FROM cutover_runs WHERE id = $1::uuid",
                                            run_id)
            return row if row["status"] != "running" else None
        run = await eventually(ended, 60, what="the interrupted run to be dealt with")
        expected = ("interrupted, and it cannot be rolled back: app1 has no address this "
                    "machine reaches (provider sim)")
        assert run["status"] == "failed", cutover.log_text()[-3000:]
        assert run["reason"].startswith(expected), run["reason"]
        steps = await ferry.pool.fetch(
            "SELECT name, status FROM cutover_steps WHERE run_id = $1::uuid ORDER BY position",
            run_id)
        assert [(r["name"], r["status"]) for r in steps] == \
            [(name, "running" if n == 3 else "done") for n, name in enumerate(reached)]
        assert await ferry.group_status(group_id) == "cutting_over"
        ids = await ferry.vm_ids(group_id)
        assert {await ferry.state(vm_id) for vm_id in ids.values()} == {"cutting_over"}
        failed = [r["body"]["payload"]["reason"] for r in await ferry.pool.fetch(
            "SELECT body FROM outbox WHERE routing_key = 'cutover.failed'")]
        assert failed == [run["reason"]]
    finally:
        cutover.stop()
        await ferry.host.stop()
