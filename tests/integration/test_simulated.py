"""A group's VMs made by a provider of simulated VMs are marked simulated in the API (the CLI
and the UI show the flag: tests/unit/test_cli.py, tests/ui); VMs of a provider of machines are
not."""

from __future__ import annotations

import pytest

from shared.providers.fake import FakeProvider
from tests.integration.harness import THREE_VMS, start_ferry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]


class MachinesProvider(FakeProvider):
    """The fake, declaring real machines (what the libvirt provider declares)."""

    name = "machines"
    simulated = False


@pytest.mark.parametrize("provider,simulated", [(FakeProvider, True), (MachinesProvider, False)])
async def test_the_api_says_whether_a_groups_vms_are_simulated(settings, operator, provider,
                                                                simulated):
    """Once created, each VM carries its provider and the flag, and so do the group's detail
    and its line in the list of groups."""
    ferry = await start_ferry(settings, operator, provider())
    try:
        group_id = await ferry.submit(THREE_VMS.format(group="shop"))
        for vm_id in (await ferry.vm_ids(group_id)).values():
            await ferry.wait_state(vm_id, "configuring")
        async with operator.get(f"/v1/groups/{group_id}") as response:
            detail = await response.json()
        assert detail["simulated"] is simulated
        assert {(vm["provider"], vm["simulated"]) for vm in detail["vms"]} == \
            {(provider.name, simulated)}
        async with operator.get("/v1/groups") as response:
            listed = (await response.json())["groups"]
        assert [g["simulated"] for g in listed] == [simulated]
    finally:
        await ferry.host.stop()
