"""The scripts' pulse (reporting.sh): while a script runs, a heartbeat to the gateway every
PULSE_S seconds in which the VM's disks were written, none while nothing is written (a hung VM
stays silent and misses its deadline). Run under bash with recorder stubs of curl and sleep;
the test waits on the stubs' records, never on the clock."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import eventually

REPORTING = (Path(__file__).resolve().parents[2] / "services" / "configurator" / "templates"
             / "reporting.sh.mustache")
BASH = shutil.which("bash") or "/bin/bash"

# /proc/diskstats lines: major minor name, then reads..., the 7th number is sectors written.
DISKSTATS = """\
 252       0 vda 100 0 800 10 {vda} 0 {vda_sectors} 20 0 30 30
 252       1 vda1 50 0 400 5 1 0 999 1 0 1 1
   7       0 loop0 5 0 10 0 0 0 0 0 0 0 0
 253       0 dm-0 9 0 9 0 9 0 555 0 0 0 0
   8       0 sda 1 0 8 0 1 0 {sda_sectors} 0 0 0 0
"""

STUB = """#!/bin/bash
echo "$*" >>"{log}"
{then}
"""


def write_stats(path: Path, vda: int, sda: int) -> None:
    path.write_text(DISKSTATS.format(vda=1, vda_sectors=vda, sda_sectors=sda))


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, then in (("curl", ""), ("sleep", "exec /bin/sleep 0.02")):
        stub = folder / name
        stub.write_text(STUB.format(log=tmp_path / f"{name}.log", then=then))
        stub.chmod(0o755)
    return folder


def bash(tmp_path: Path, stubs: Path, command: str, **kwargs):
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "FERRY_DISKSTATS": str(tmp_path / "diskstats"),
           "FERRY_GATEWAY": "http://gw", "FERRY_VM_ID": "vm-1", "FERRY_TOKEN": "t"}
    return subprocess.Popen([BASH, "-c", f'. "{REPORTING}"; {command}'], env=env,
                            stdout=subprocess.PIPE, text=True, **kwargs)


def test_disk_writes_sum_the_sectors_written_to_whole_disks_only(tmp_path, stubs):
    """vda and sda count; a partition, a loop device and a device-mapper volume (counted on
    their disks already) do not."""
    write_stats(tmp_path / "diskstats", vda=1000, sda=234)
    done = bash(tmp_path, stubs, "disk_writes")
    assert done.communicate(timeout=30)[0].strip() == "1234"


async def test_a_heartbeat_goes_only_after_the_disks_were_written(tmp_path, stubs):
    """Three rounds of the pulse with the disks untouched: no heartbeat. The disks written:
    one heartbeat to /v1/vms/<vm>/heartbeat, and no more while they rest again."""
    stats, curl, sleep = tmp_path / "diskstats", tmp_path / "curl.log", tmp_path / "sleep.log"
    write_stats(stats, vda=1000, sda=0)
    pulse = bash(tmp_path, stubs, "PULSE_S=7; pulse")
    try:
        await eventually(lambda: len(lines(sleep)) >= 3, 20, what="three rounds")
        assert lines(curl) == []
        write_stats(stats, vda=5000, sda=0)
        await eventually(lambda: lines(curl), 20, what="a heartbeat")
        rounds = len(lines(sleep))
        await eventually(lambda: len(lines(sleep)) >= rounds + 3, 20, what="three more rounds")
        [call] = lines(curl)
        assert "http://gw/v1/vms/vm-1/heartbeat" in call and "--data-binary {}" in call
        assert all(line == "7" for line in lines(sleep))
    finally:
        pulse.kill()
        pulse.wait()
