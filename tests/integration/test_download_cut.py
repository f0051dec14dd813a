"""A VM's archive download cut mid-stream, by a gateway restart or by a connection that falls
silent: the rendered script's download (fetch_checked, fetch_resumed) picks up from the byte
where the cut left it, with a Range request, and the file is byte-identical to the archive (its
sha256 checked as the script does).

The script's own functions are run under bash, cut out of the script the gateway serves the VM;
the gateway is its own process, killed with SIGKILL mid-stream and started again, or reached
through a relay (tests/integration/tcp_proxy.py) that silences the connection; the archive is a
real one, made by the archiver from a legacy folder of several MB. Only curl is slowed (its
--limit-rate, at the test's edge) so that the cut lands mid-stream for certain."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.runtime import SERVICES, Host
from shared.providers.base import BootSource
from shared.providers.fake import FakeProvider
from tests.conftest import eventually
from tests.integration.harness import Ferry
from tests.integration.tcp_proxy import TcpProxy
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
FUNCTIONS = ("json_str", "gateway_config", "gateway", "post_json", "message_update",
             "fetch_resumed", "fetch_checked")
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


@dataclass
class Archived:
    ferry: Ferry
    gateway: ServiceProcess
    vm_id: object
    record: dict
    archive: bytes
    script: str


@asynccontextmanager
async def a_vm_with_its_archive(settings, operator, tmp_path: Path):
    """The product running (the gateway its own process) with one VM booted whose archive of
    /data (~63 MB, incompressible) is made; the rendered script it is served."""
    data = tmp_path / "legacy" / "data"
    data.mkdir(parents=True)
    for n in range(6):  # incompressible: the archive is as large as its files
        (data / f"blob{n}").write_bytes(os.urandom(10 * 1024 * 1024))
    gateway = ServiceProcess("gateway", settings, tmp_path / "gateway.log")
    provider = FakeProvider()
    host = Host(settings, SERVICES, provider=provider)
    await host.start()
    gateway.start()
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
        yield Archived(ferry, gateway, vm_id, dict(record), archive, script)
    finally:
        gateway.stop()
        await host.stop()


async def start_download(setup: Archived, tmp_path: Path, gateway_url: str, out: Path,
                         stall_s: int | None = None) -> asyncio.subprocess.Process:
    """bash running the script's fetch_checked of the archive into `out`, curl held to RATE;
    `stall_s`: the script's DOWNLOAD_STALL_S (unset: its own default)."""
    record = setup.record
    snippet = tmp_path / "download.sh"
    snippet.write_text(
        "set -o errexit -o nounset -o pipefail\n"
        + functions_of(setup.script, FUNCTIONS)
        # The test's edge: curl held to RATE, so the download is mid-stream when cut.
        + f'\ncurl() {{ command curl --limit-rate {RATE} "$@"; }}\n'
        + "gateway_config\n"  # the curl config (token, CA) the script makes as it starts
        + f'fetch_checked "$FERRY_GATEWAY/v1/archives/$FERRY_VM_ID/{record["id"]}" '
          f'{record["sha256"]} "archive of /data" >"{out}"\n')
    work = tmp_path / "work"
    work.mkdir()
    env = {"PATH": os.environ["PATH"], "WORK": str(work), "FERRY_GATEWAY": gateway_url,
           "FERRY_VM_ID": str(setup.vm_id), "FERRY_TOKEN": setup.ferry.token(setup.vm_id)}
    if stall_s is not None:
        env["DOWNLOAD_STALL_S"] = str(stall_s)
    return await asyncio.create_subprocess_exec(
        "bash", str(snippet), env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)


async def a_quarter_written(bash: asyncio.subprocess.Process, out: Path, size: int) -> None:
    async def written():
        if bash.returncode is not None:
            said, errors = await bash.communicate()
            raise AssertionError(f"the download ended early ({bash.returncode}): "
                                 f"{errors.decode()}")
        return out.exists() and out.stat().st_size > size // 4
    await eventually(written, 60, what="a quarter of the archive downloaded")


async def finished_identical(bash: asyncio.subprocess.Process, out: Path,
                             setup: Archived) -> str:
    """Wait for the script's download to end; it succeeded with the archive's bytes. Its
    stderr."""
    said, errors = await asyncio.wait_for(bash.communicate(), 300)
    errors = errors.decode()
    assert bash.returncode == 0, errors
    got = out.read_bytes()
    assert len(got) == len(setup.archive) and got == setup.archive
    assert hashlib.sha256(got).hexdigest() == setup.record["sha256"]
    return errors


async def test_a_download_cut_by_a_gateway_restart_resumes_byte_identical(settings, operator,
                                                                            tmp_path):
    bash = None
    async with a_vm_with_its_archive(settings, operator, tmp_path) as setup:
        try:
            out = tmp_path / "downloaded"
            bash = await start_download(setup, tmp_path, settings.gateway_url, out)
            await a_quarter_written(bash, out, len(setup.archive))
            setup.gateway.kill()
            cut_at = out.stat().st_size
            assert cut_at < len(setup.archive), "the download ended before the gateway was killed"
            setup.gateway.start()
            errors = await finished_identical(bash, out, setup)
            assert "resuming" in errors, errors
            print(f"archive {len(setup.archive)} bytes, cut after {cut_at}; {errors.strip()}")
        finally:
            if bash is not None and bash.returncode is None:
                bash.kill()
                await bash.wait()


async def test_a_download_whose_connection_falls_silent_resumes_on_a_new_one(settings, operator,
                                                                             tmp_path):
    """The connection carrying the download falls silent mid-stream (no reset, no byte: a
    firewall forgot it) and stays so: the script gives it up after DOWNLOAD_STALL_S (here 3 s)
    without a byte (curl status 28) and resumes on a new connection."""
    bash = None
    async with a_vm_with_its_archive(settings, operator, tmp_path) as setup:
        host, port = settings.gateway_url.removeprefix("http://").rsplit(":", 1)
        relay = TcpProxy(host, int(port))
        await relay.start()
        try:
            out = tmp_path / "downloaded"
            bash = await start_download(setup, tmp_path, f"http://127.0.0.1:{relay.port}", out,
                                        stall_s=3)
            await a_quarter_written(bash, out, len(setup.archive))
            relay.blackhole()
            await relay.restore()  # new connections pass again; the silenced one stays silent
            cut_at = out.stat().st_size
            assert relay.silenced == 1
            errors = await finished_identical(bash, out, setup)
            assert "resuming" in errors and "status 28" in errors, errors
            print(f"archive {len(setup.archive)} bytes, silenced after {cut_at}; "
                  f"{errors.strip()}")
        finally:
            if bash is not None and bash.returncode is None:
                bash.kill()
                await bash.wait()
            await relay.cut()
