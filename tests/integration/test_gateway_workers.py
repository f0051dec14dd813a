"""FERRY_GATEWAY_WORKERS=2: `python -m services.gateway` runs two workers on one port, stops
them on SIGTERM, and exits non-zero when one of them dies (real processes, real sockets)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import OPERATOR_TOKEN, eventually
from tests.service_process import REPO, ServiceProcess, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]


def workers_of(pid: int) -> set[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in children.read_text().split()} if children.exists() else set()


def listening_pids(port: int) -> set[int]:
    """Who listens on the port, as ss sees it (one socket per worker with SO_REUSEPORT)."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


async def answered(url: str) -> bool:
    try:
        async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as session:
            async with session.get(f"{url}/v1/groups") as answer:
                return answer.status == 200
    except aiohttp.ClientError:
        return False


async def start_two(settings, tmp_path) -> tuple[ServiceProcess, set[int]]:
    gateway = ServiceProcess("gateway", settings, tmp_path / "gateway.log", gateway_workers="2")
    gateway.start()
    port = settings.gateway_port

    def both_listening() -> set[int] | None:
        workers = workers_of(gateway.process.pid)
        return workers if len(workers) == 2 and listening_pids(port) == workers else None

    workers = await eventually(both_listening, 60, interval=0.2, what="two workers listening")
    assert await eventually(lambda: answered(settings.gateway_url), 30, what="an answer")
    return gateway, workers


async def test_two_workers_share_the_port_and_stop_together(settings, tmp_path):
    gateway, workers = await start_two(settings, tmp_path)
    try:
        # Many fresh connections: the kernel spreads them, every one is answered.
        for _ in range(20):
            assert await answered(settings.gateway_url)
    finally:
        gateway.stop()
    assert gateway.process.returncode == 0, gateway.log_text()[-2000:]
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


async def test_a_worker_that_dies_takes_the_gateway_down_non_zero(settings, tmp_path):
    gateway, workers = await start_two(settings, tmp_path)
    victim, other = sorted(workers)
    try:
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: gateway.process.poll() is not None, 60,
                         what="the supervisor to exit")
    finally:
        gateway.stop()
    assert gateway.process.returncode == 1
    assert not Path(f"/proc/{other}").exists(), "the surviving worker was left running"
    assert "a gateway worker exited" in gateway.log_text()


def test_workers_on_port_zero_are_refused_with_the_reason(settings):
    env = settings_env(settings, gateway_workers="2", gateway_port="0")
    done = subprocess.run([sys.executable, "-m", "services.gateway"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "FERRY_GATEWAY_WORKERS=2 needs a fixed FERRY_GATEWAY_PORT" in done.stderr
