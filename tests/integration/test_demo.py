"""The README's main job, as separate processes: every service on its own, simulated VMs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_takes_the_example_group_to_ready(settings):
    """`ferry demo --provider sim` starts each service as its own process, submits
    tests/fixtures/shop-local.yaml, and the group reaches ready with its timeline printed; every
    process stops cleanly."""
    env = {
        **os.environ,
        "FERRY_DATABASE_SCHEMA": settings.database_schema,
        "FERRY_BUS_PREFIX": settings.bus_prefix,
        "FERRY_STATE_DIR": str(settings.state_dir),
        "FERRY_GATEWAY_PORT": str(settings.gateway_port),
        # The demo as it ships: HTTPS with the installation's CA, which the CLI and the
        # simulated VMs trust.
        "FERRY_GATEWAY_URL": f"https://127.0.0.1:{settings.gateway_port}",
        "FERRY_SIM_PAUSE": "0",
        "COLUMNS": "160",
    }
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--provider", "sim", "--timeout", "120",
         "--plan", str(REPO / "tests" / "fixtures" / "shop-local.yaml")], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SIMULATED" in result.stdout
    assert "the gateway serves HTTPS" in result.stdout
    assert "group shop is ready" in result.stdout
    assert "Timeline" in result.stdout
    logs = settings.state_dir / "logs"
    for service in ("archiver", "creator", "configurator", "provisioner", "coordinator",
                    "cutover", "gateway"):
        text = (logs / f"{service}.log").read_text()
        assert '"host stopped"' in text, f"{service} did not stop gracefully:\n{text[-2000:]}"
