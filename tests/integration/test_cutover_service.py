"""The cutover service over the real RabbitMQ and PostgreSQL, where no machine is needed: a run
that cannot even start changes nothing. (Runs on real machines: tests/lab/test_lab_journey.)"""

from __future__ import annotations

import pytest

from tests.conftest import eventually
from tests.integration.harness import THREE_VMS, play_journey, start_ferry

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
