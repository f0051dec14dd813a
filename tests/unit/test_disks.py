"""Disks found by what they are: the serial each planned disk gets, and the script's search
for it in sysfs (services/configurator/templates/disks.sh.mustache)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pydantic
import pytest

from services.configurator.render import TEMPLATES
from shared.providers.base import DiskBus, ProviderDisk, VmSpec, disk_serial, planned_disks


def test_serials_are_short_ascii_and_unique_per_vm_and_disk():
    """A serial fits SATA's and virtio-blk's 20 bytes, and no two disks of a fleet share one."""
    vms = [uuid.uuid4() for _ in range(50)]
    serials = [disk_serial(vm, i) for vm in vms for i in range(12)]
    assert len(set(serials)) == len(serials)
    assert all(len(s) <= 20 and s.isascii() and s.isalnum() for s in serials)
    assert disk_serial(vms[0], 1) == disk_serial(vms[0], 1)


def test_planned_disks_default_to_virtio_and_need_a_bus_per_disk():
    """Without buses every disk is virtio; with them, one per disk, or the spec is refused."""
    fields = dict(vm_id=uuid.uuid4(), group="g", name="app1", role="app", cpus=1, memory_mb=512,
                  disks_gb=[10, 20])
    assert [d.bus for d in planned_disks(VmSpec(**fields))] == [DiskBus.VIRTIO] * 2
    mixed = planned_disks(VmSpec(**fields, disk_buses=["scsi", "sata"]))
    assert [(d.index, d.size_gb, d.bus) for d in mixed] == [(0, 10, DiskBus.SCSI),
                                                            (1, 20, DiskBus.SATA)]
    with pytest.raises(pydantic.ValidationError, match="VM app1: 1 disk bus"):
        VmSpec(**fields, disk_buses=["scsi"])


# --- the script's search, against a fake sysfs ---------------------------------------------------

VM_ID = uuid.UUID("5b0c7d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e")
SHELLS = [shell for shell in ("bash", "dash", "busybox") if shutil.which(shell)]


def disk(index: int, bus: str, size_gb: int = 10) -> ProviderDisk:
    return ProviderDisk(index=index, size_gb=size_gb, bus=bus, serial=disk_serial(VM_ID, index))


def fake_sysfs(root: Path, disks: list[ProviderDisk], names: list[str] | None = None) -> Path:
    """A sysfs whose /sys/block holds `disks` as Linux shows them: a virtio disk (vdX) with its
    `serial`; a SCSI disk (sdX) with its unit serial number page as QEMU answers it (4-byte
    header, then the serial) and vendor QEMU; a SATA disk (sdX) with that page as libata
    translates it (the ATA serial, space-padded to 20) and vendor ATA. Names go vda, vdb ... and
    sda, sdb ... in plan order unless given. Also a loop device, which has no serial."""
    counts = {"vd": 0, "sd": 0}
    for i, planned in enumerate(disks):
        prefix = "vd" if planned.bus == DiskBus.VIRTIO else "sd"
        name = names[i] if names else prefix + "abcdefgh"[counts[prefix]]
        counts[prefix] += 1
        block = root / "block" / name
        (block / "device").mkdir(parents=True)
        (block / f"{name}1").mkdir()  # a partition, as sysfs nests them
        serial = planned.serial.encode()
        if planned.bus == DiskBus.VIRTIO:
            (block / "serial").write_bytes(serial)
        elif planned.bus == DiskBus.SCSI:
            (block / "device/vpd_pg80").write_bytes(bytes([0, 0x80, 0, len(serial)]) + serial)
            (block / "device/vendor").write_text("QEMU    \n")
        else:
            (block / "device/vpd_pg80").write_bytes(bytes([0, 0x80, 0, 20]) + serial.ljust(20))
            (block / "device/vendor").write_text("ATA     \n")
    (root / "block/loop0").mkdir(parents=True, exist_ok=True)
    return root


def find(shell: str, sysfs: Path, *args: str, wait_s: int = 0, by_id: Path | None = None,
         command: str = "find_disk") -> subprocess.CompletedProcess:
    """Run one function of disks.sh under `shell`, with the real commands it uses."""
    partial = (TEMPLATES / "disks.sh.mustache").read_text()
    argv = [shell, "sh"] if shell == "busybox" else [shell]
    env = {"PATH": os.environ["PATH"], "FERRY_SYSFS": str(sysfs),
           "FERRY_DISK_WAIT_S": str(wait_s),
           "FERRY_DISK_BY_ID": str(by_id or sysfs / "no-by-id")}
    return subprocess.run([*argv, "-c", f'{partial}\n{command} "$@"', "disks.sh", *args],
                          env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("shell", SHELLS)
def test_each_planned_disk_is_found_by_its_serial_whatever_its_bus(shell, tmp_path):
    """A virtio disk, two SCSI and a SATA one are found by serial, wherever the kernel put
    them (here the SCSI disks in the reverse of plan order)."""
    disks = [disk(0, "virtio"), disk(1, "scsi"), disk(2, "sata"), disk(3, "scsi")]
    sysfs = fake_sysfs(tmp_path, disks, names=["vda", "sdc", "sdb", "sda"])
    for planned, device in zip(disks, ["/dev/vda", "/dev/sdc", "/dev/sdb", "/dev/sda"]):
        done = find(shell, sysfs, planned.serial, planned.bus.value)
        assert (done.returncode, done.stdout, done.stderr) == (0, device + "\n", ""), planned
    buses = [find(shell, sysfs, name, command="disk_bus_of").stdout for name in
             ("vda", "sdc", "sdb")]
    assert buses == ["virtio\n", "scsi\n", "sata\n"]


@pytest.mark.parametrize("shell", SHELLS)
def test_a_missing_disk_names_its_serial_bus_and_the_disks_seen(shell, tmp_path):
    """A serial no disk has fails, once the wait is over, naming the serial, the bus it was
    planned on and every disk there is with its bus and serial."""
    sysfs = fake_sysfs(tmp_path, [disk(0, "virtio"), disk(1, "sata")])
    done = find(shell, sysfs, disk_serial(VM_ID, 7), "scsi")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        f"no disk with serial {disk_serial(VM_ID, 7)} (planned on scsi) after 0 s; disks seen: "
        f"sda (sata, serial '{disk_serial(VM_ID, 1)}'), "
        f"vda (virtio, serial '{disk_serial(VM_ID, 0)}')\n")
    empty = tmp_path / "empty"
    (empty / "block").mkdir(parents=True)
    assert find(shell, empty, "x", "virtio").stderr.endswith("disks seen: none\n")


def test_a_disk_that_appears_late_is_waited_for(tmp_path):
    """The search looks again until its deadline: a disk that appears a second later is found."""
    planned = disk(0, "sata")
    (tmp_path / "block").mkdir()
    partial = (TEMPLATES / "disks.sh.mustache").read_text()
    env = {"PATH": os.environ["PATH"], "FERRY_SYSFS": str(tmp_path), "FERRY_DISK_WAIT_S": "20",
           "FERRY_DISK_BY_ID": str(tmp_path / "no-by-id")}
    search = subprocess.Popen(["bash", "-c", f'{partial}\nfind_disk "$@"', "disks.sh",
                               planned.serial, "sata"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    assert search.poll() is None
    fake_sysfs(tmp_path / "later", [planned])
    (tmp_path / "later/block/sda").rename(tmp_path / "block/sda")
    out, err = search.communicate(timeout=20)
    assert (search.returncode, out, err) == (0, "/dev/sda\n", "")


def test_udev_by_id_links_are_used_where_there_are_some(tmp_path):
    """Where udev runs, its /dev/disk/by-id link names the serial even if sysfs does not."""
    planned = disk(1, "scsi")
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    device = tmp_path / "dev" / "sdq"
    device.parent.mkdir()
    device.touch()
    (by_id / f"scsi-0QEMU_QEMU_HARDDISK_{planned.serial}").symlink_to(device)
    (by_id / f"scsi-0QEMU_QEMU_HARDDISK_{planned.serial}-part1").symlink_to(device)
    sysfs = fake_sysfs(tmp_path / "sys", [disk(0, "virtio")])
    done = find("bash", sysfs, planned.serial, "scsi", by_id=by_id)
    assert (done.returncode, done.stdout) == (0, f"{device}\n")


@pytest.mark.parametrize("shell", SHELLS)
def test_partitions_of_a_found_disk(shell, tmp_path):
    """Partition N of a disk: vda1, sda2; a name ending in a digit takes a p (nvme0n1p1)."""
    for device, number, partition in (("/dev/vda", 1, "/dev/vda1"), ("/dev/sda", 2, "/dev/sda2"),
                                      ("/dev/nvme0n1", 1, "/dev/nvme0n1p1")):
        done = find(shell, tmp_path, device, str(number), command="partition_of")
        assert done.stdout == partition + "\n"
