"""The gateway restarted while a VM downloads an archive: the rendered script's download
(fetch_checked, fetch_resumed) picks up from the byte where the cut left it, with a Range
request, and the file is byte-identical to the archive (its sha256 checked as the script does).

The script's own functions are run under bash, cut out of the script the gateway serves the VM;
the gateway is its own process, killed with SIGKILL mid-stream and started again; the archive is
a real one, made by the archiver from a legacy folder of several MB. Only curl is slowed (its
--limit-rate, at the test's edge) so that the kill lands mid-stream for certain."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re

import pytest

from services.runtime import SERVICES, Host
from shared.providers.base import BootSource
from shared.providers.fake import FakeProvider
from tests.conftest import eventually
from tests.integration.harness import Ferry
from tests.service_process import ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]

PLAN = """
group: download
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

# The script's functions a download needs, in the order they are defined.
FUNCTIONS = ("json_str", "gateway", "post_json", "message_update", "fetch_resumed",
             "fetch_checked")
RATE = "4M"  # bytes a second curl is held to: the ~63 MB archive takes ~16 s
# The kill comes once a quarter is written out, leaving ~47 MB unsent: more than the socket
# buffers can hold (tcp_rmem at most 32 MB and tcp_wmem 4 MB on this machine), so the stream is
# cut for certain rather than curl finding the rest in its buffers; curl's report says so.


def functions_of(script: str, names: tuple[str, ...]) -> str:
    """The definitions of `names` in the rendered script (from `name() {` to the first `}` at
    the start of a line); the last of each, the script's own (local.start, quoted into the
    script as a value, defines some of them too)."""
    found = []
    for name in names:
        matches = list(re.finditer(rf"^{name}\(\) {{\n.*?^}}\n", script, re.M | re.S))
        assert matches, f"{name} is not defined in the rendered script"
        found.append(matches[-1].group(0))
    return "\n".join(found)


async def test_a_download_cut_by_a_gateway_restart_resumes_byte_identical(settings, operator,
                                                                            tmp_path):
    data = tmp_path / "legacy" / "data"
    data.mkdir(parents=True)
    for n in range(6):  # incompressible: the archive is as large as its files
        (data / f"blob{n}").write_bytes(os.urandom(10 * 1024 * 1024))
    gateway = ServiceProcess("gateway", settings, tmp_path / "gateway.log")
    provider = FakeProvider()
    host = Host(settings, SERVICES, provider=provider)
    await host.start()
    gateway.start()
    bash = None
    try:
        ferry = Ferry(settings, host, provider, operator)

        async def submitted():
            try:
                return await ferry.submit(PLAN.format(root=tmp_path / "legacy"))
            except OSError:
                return None  # the gateway process is still starting
        group_id = await eventually(submitted, 60, interval=0.2, what="the plan submitted")
        vm_id = (await ferry.vm_ids(group_id))["files"]
        await ferry.wait_booted(vm_id, BootSource.NETWORK)
        record = await ferry.pool.fetchrow("SELECT * FROM archives WHERE vm_id = $1", vm_id)
        archive = open(record["file"], "rb").read()
        assert len(archive) > 60 * 1024 * 1024
        async with ferry.vm(vm_id) as vm:
            script = await vm.script()

        out = tmp_path / "downloaded"
        snippet = tmp_path / "download.sh"
        snippet.write_text(
            "set -o errexit -o nounset -o pipefail\n"
            + functions_of(script, FUNCTIONS)
            # The test's edge: curl held to RATE, so the download is mid-stream when killed.
            + f'\ncurl() {{ command curl --limit-rate {RATE} "$@"; }}\n'
            + f'fetch_checked "$FERRY_GATEWAY/v1/archives/$FERRY_VM_ID/{record["id"]}" '
              f'{record["sha256"]} "archive of /data" >"{out}"\n')
        work = tmp_path / "work"
        work.mkdir()
        env = {"PATH": os.environ["PATH"], "WORK": str(work), "FERRY_GATEWAY":
               settings.gateway_url, "FERRY_VM_ID": str(vm_id), "FERRY_TOKEN": ferry.token(vm_id)}
        bash = await asyncio.create_subprocess_exec(
            "bash", str(snippet), env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)

        quarter = len(archive) // 4

        async def a_quarter_downloaded():
            if bash.returncode is not None:
                said, errors = await bash.communicate()
                raise AssertionError(f"the download ended early ({bash.returncode}): "
                                     f"{errors.decode()}")
            return out.exists() and out.stat().st_size > quarter
        await eventually(a_quarter_downloaded, 60, what="a quarter of the archive downloaded")
        gateway.kill()
        cut_at = out.stat().st_size
        assert cut_at < len(archive), "the download ended before the gateway was killed"
        gateway.start()

        said, errors = await asyncio.wait_for(bash.communicate(), 300)
        errors = errors.decode()
        assert bash.returncode == 0, errors
        assert "resuming" in errors, errors
        got = out.read_bytes()
        assert len(got) == len(archive) and got == archive
        assert hashlib.sha256(got).hexdigest() == record["sha256"]
        print(f"archive {len(archive)} bytes, cut after {cut_at}; {errors.strip()}")
    finally:
        if bash is not None and bash.returncode is None:
            bash.kill()
            await bash.wait()
        gateway.stop()
        await host.stop()
