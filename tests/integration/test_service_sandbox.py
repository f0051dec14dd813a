"""The systemd unit's MemoryDenyWriteExecute=yes does not break Ferryman: the gateway and a
service (the cutover, which loads the provider), each its own process as deployed, started
under the kernel's own write-xor-execute guard (tests/mdwe_run.py, PR_SET_MDWE) reach the real
database and broker and answer /readyz 200. (A write+execute mapping is refused under it: the
first test shows the guard is on, so the second cannot pass without it.)"""

from __future__ import annotations

import subprocess
import sys

import aiohttp
import pytest

from tests.conftest import eventually, free_port
from tests.service_process import REPO, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]

WRITE_EXECUTE = ("import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE"
                 " | mmap.PROT_EXEC); print('mapped')")


def test_the_guard_refuses_a_writable_executable_mapping(tmp_path):
    (tmp_path / "wx.py").write_text(WRITE_EXECUTE + "\n")
    plain = subprocess.run([sys.executable, str(tmp_path / "wx.py")], capture_output=True,
                           text=True, timeout=60)
    assert plain.returncode == 0 and "mapped" in plain.stdout, plain.stderr
    guarded = subprocess.run([sys.executable, "-m", "tests.mdwe_run", "wx"], cwd=REPO,
                             env={"PYTHONPATH": f"{REPO}:{tmp_path}"}, capture_output=True,
                             text=True, timeout=60)
    assert guarded.returncode != 0 and "PermissionError" in guarded.stderr, \
        (guarded.returncode, guarded.stdout, guarded.stderr)


@pytest.mark.timeout(180)
async def test_the_gateway_and_a_service_run_with_memory_deny_write_execute(settings, tmp_path):
    ports = {"gateway": settings.gateway_port, "cutover": free_port()}
    processes = {}
    try:
        for name, port in ports.items():
            extra = {} if name == "gateway" else {"metrics_port": str(port)}
            env = settings_env(settings, log_format="json", provider="sim", **extra)
            log = open(tmp_path / f"{name}.log", "wb")
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", "tests.mdwe_run", f"services.{name}"], cwd=REPO, env=env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            log.close()

        async def ready(name: str) -> bool:
            process = processes[name]
            assert process.poll() is None, \
                (name, process.returncode, (tmp_path / f"{name}.log").read_text()[-2000:])
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
                    async with http.get(f"http://127.0.0.1:{ports[name]}/readyz") as answer:
                        return answer.status == 200
            except aiohttp.ClientError:
                return False
        for name in ports:
            await eventually(lambda: ready(name), 90, interval=0.3, what=f"{name} ready")
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
    # A graceful stop, as systemd's SIGTERM asks, under the guard too.
    assert {name: p.returncode for name, p in processes.items()} == \
        {name: 0 for name in processes}, [(tmp_path / f"{n}.log").read_text()[-2000:]
                                          for n in processes]
