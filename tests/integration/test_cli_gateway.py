"""`ferry` as a separate process against the real gateway: its JSON is the API's answer, and a
cutover whose gateway goes away while the command follows the run ends with a clear error and
exit status 5, not a traceback."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from services.runtime import SERVICES
from tests.conftest import OPERATOR_TOKEN, eventually
from tests.integration.harness import THREE_VMS, play_journey, start_ferry
from tests.service_process import REPO

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]


async def start_cli(settings, tmp_path, *args: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update({"FERRY_GATEWAY_PORT": str(settings.gateway_port),
                "FERRY_GATEWAY_PLAIN_HTTP": str(settings.gateway_plain_http).lower(),
                "FERRY_OPERATOR_TOKEN": OPERATOR_TOKEN,
                "FERRY_STATE_DIR": str(settings.state_dir),
                "XDG_CONFIG_HOME": str(tmp_path / "config"), "COLUMNS": "200"})
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", *args, cwd=REPO, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)


async def finished(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_s_json_is_the_gateway_s_answer(settings, operator, tmp_path):
    ferry = await start_ferry(settings, operator)
    try:
        await ferry.submit(THREE_VMS.format(group="shop"))
        code, out, err = await finished(await start_cli(settings, tmp_path, "status", "-o",
                                                        "json"))
        assert (code, err) == (0, "")
        async with operator.get("/v1/groups") as answer:
            assert json.loads(out) == await answer.json()
        code, out, err = await finished(await start_cli(settings, tmp_path, "status", "shop",
                                                        "-o", "json"))
        assert code == 0, err
        assert sorted(vm["name"] for vm in json.loads(out)["vms"]) == ["app1", "db1", "db2"]
    finally:
        await ferry.host.stop()


async def test_a_cutover_that_loses_its_gateway_ends_with_5(settings, operator, tmp_path):
    """The cutover service is not running, so the run waits; the gateway then stops while
    `ferry cutover --yes` follows it: after its grace the command ends with 5, saying the run
    goes on and how to follow it again; stdout (JSON) stays empty."""
    ferry = await start_ferry(settings, operator,
                              services=tuple(s for s in SERVICES if s != "cutover"))
    stopped = False
    try:
        group_id = await ferry.submit(THREE_VMS.format(group="shop"))
        await play_journey(ferry, group_id)
        await ferry.wait_group(group_id, "ready")
        cli = await start_cli(settings, tmp_path, "cutover", "shop", "--yes", "-o", "json")

        async def requested():
            async with operator.get("/v1/groups/shop/cutover") as answer:
                return (await answer.json())["runs"]
        runs = await eventually(requested, timeout=30, what="the cutover run requested")
        await ferry.host.stop()
        stopped = True
        code, out, err = await finished(cli)
        assert code == 5, err
        assert out == ""
        assert f"lost cutover run {runs[0]['id']} of shop" in err
        assert "`ferry cutover shop --follow` picks it up again" in err
        assert "Traceback" not in err
    finally:
        if not stopped:
            await ferry.host.stop()
