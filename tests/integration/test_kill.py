"""A service process killed with SIGKILL in the middle of its work, then started again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services.runtime import SERVICES
from tests.conftest import eventually
from tests.integration.harness import start_ferry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]

REPO = Path(__file__).resolve().parents[2]

PLAN = """
group: killed
vms:
  - name: files
    cpus: 1
    memory_mb: 512
    disks: [{{size_gb: 10}}]
    filesystems: [{{mount: /, size_gb: 8}}]
    archives: [{{path: /data}}]
    source: {{kind: local, root: {root}}}
    network: {{address: 10.20.0.11/24, hostname: files.example}}
"""


def archiver_process(settings) -> subprocess.Popen:
    env = {**os.environ, "FERRY_DATABASE_SCHEMA": settings.database_schema,
           "FERRY_BUS_PREFIX": settings.bus_prefix, "FERRY_STATE_DIR": str(settings.state_dir),
           "FERRY_RETRY_DELAYS": "[0.2, 0.4]", "FERRY_LOG_FORMAT": "json"}
    return subprocess.Popen([sys.executable, "-m", "services.archiver"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_an_archiver_killed_mid_archive_finishes_after_restart(settings, operator, tmp_path):
    """kill -9 of the archiver process while it writes an archive loses nothing: restarted, it
    archives the VM once (one archive.ready), the file matches its record, and the killed
    writer's partial file is cleared away."""
    data = tmp_path / "legacy" / "data"
    data.mkdir(parents=True)
    for n in range(6):  # incompressible, so the archive takes a moment to write
        (data / f"blob{n}").write_bytes(os.urandom(48 * 1024 * 1024))
    others = tuple(s for s in SERVICES if s != "archiver")
    ferry = await start_ferry(settings, operator, services=others)
    archiver = archiver_process(settings)
    try:
        group_id = await ferry.submit(PLAN.format(root=tmp_path / "legacy"))
        vm_id = (await ferry.vm_ids(group_id))["files"]
        await ferry.wait_state(vm_id, "archiving")
        folder = settings.state_dir / "archives" / str(group_id) / "files"
        await eventually(lambda: any(folder.glob("*.partial-*")), what="a partial archive")
        archiver.send_signal(signal.SIGKILL)
        archiver.wait(10)
        assert await ferry.state(vm_id) == "archiving"
        assert list(folder.glob("*.partial-*")), "the killed writer left its partial file"

        archiver = archiver_process(settings)
        await ferry.wait_state(vm_id, "configuring", timeout=60)
        ready = await ferry.pool.fetchval(
            "SELECT count(*) FROM outbox WHERE group_id = $1 AND routing_key = 'archive.ready'",
            group_id)
        assert ready == 1 and ferry.provider.created == 1
        record = await ferry.pool.fetchrow("SELECT * FROM archives WHERE vm_id = $1", vm_id)
        listed = subprocess.run(["sha256sum", record["file"]], capture_output=True, text=True,
                                check=True).stdout.split()[0]
        assert listed == record["sha256"]
        assert not list(folder.glob("*.partial-*"))
    finally:
        archiver.terminate()
        archiver.wait(30)
        await ferry.host.stop()
