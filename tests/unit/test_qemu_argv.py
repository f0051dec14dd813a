"""The qemu provider without QEMU: names, MACs, QEMU command lines, host checks."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from shared.providers import make_provider
from shared.providers import qemu
from shared.providers.base import BootSource, DiskBus, ProviderError, VmSpec
from shared.providers.qemu import QemuProvider, group_namespace, teardown
from shared.providers.qemu_argv import (
    GUEST_GATEWAY_URL, DiskFile, boot_url, qemu_argv, slirp_netdev, tap_netdev, vm_mac, vm_ref,
)
from shared.providers.qemu_net import tap_name
from shared.settings import Settings


def qemu_opts(value: str) -> list[str]:
    """Split an option list as QEMU does: ',' separates, ',,' is a literal comma."""
    parts, current, i = [], "", 0
    while i < len(value):
        if value[i] == ",":
            if value[i + 1:i + 2] == ",":
                current, i = current + ",", i + 2
                continue
            parts.append(current)
            current = ""
        else:
            current += value[i]
        i += 1
    return [*parts, current]


def option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_ref_is_derived_from_the_key():
    assert vm_ref("vm:1") == vm_ref("vm:1") != vm_ref("vm:2")
    assert re.fullmatch(r"qemu-[0-9a-f]{12}", vm_ref("vm:1"))


def test_mac_is_derived_from_the_ref_and_locally_administered():
    ref = vm_ref("vm:1")
    mac = vm_mac(ref)
    assert mac == vm_mac(ref) != vm_mac(vm_ref("vm:2"))
    assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", mac)
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01  # locally administered, unicast


def test_namespace_and_tap_names_fit_interface_names():
    names = {group_namespace(f"group-{n}") for n in range(50)}
    assert len(names) == 50
    assert all(re.fullmatch(r"fm-[0-9a-f]{8}", n) and len(n) <= 15 for n in names)
    assert group_namespace("shop") == group_namespace("shop")
    assert len(tap_name(vm_ref("vm:1"))) <= 15


def test_boot_url_fits_the_bootp_file_field_and_keeps_the_token():
    token = "Ab-_" * 11  # secrets.token_urlsafe(32) is 43 such characters
    url = boot_url(str(uuid.uuid4()), token[:43])
    assert url.startswith(f"{GUEST_GATEWAY_URL}/v1/boot/") and url.endswith(f"?token={token[:43]}")
    assert len(url) < 128
    assert boot_url("v", "a,b&c") == f"{GUEST_GATEWAY_URL}/v1/boot/v?token=a%2Cb%26c"


def test_slirp_netdev_is_isolated_and_escapes_commas():
    netdev = slirp_netdev(python="/opt/py,thon/bin/python3", target=("127.0.0.1", 8470),
                          bootfile="http://10.0.2.100/v1/boot/x?token=y")
    parts = qemu_opts(netdev)
    assert parts[:3] == ["user", "id=n0", "restrict=on"]
    assert "guestfwd=tcp:10.0.2.100:80-cmd:/opt/py,thon/bin/python3 -m shared.providers.guestfwd " \
           "127.0.0.1 8470" in parts
    assert "bootfile=http://10.0.2.100/v1/boot/x?token=y" in parts
    assert "bootfile" not in slirp_netdev(python="p", target=("127.0.0.1", 1), bootfile=None)
    with pytest.raises(ProviderError, match="boot URL longer"):
        slirp_netdev(python="p", target=("127.0.0.1", 1), bootfile="http://x/" + "a" * 130)


def test_slirp_netdev_quotes_the_command_for_libslirp():
    netdev = slirp_netdev(python="/a dir/python", target=("127.0.0.1", 1), bootfile=None)
    assert "-cmd:'/a dir/python' -m shared.providers.guestfwd 127.0.0.1 1" in netdev


def argv_for(source: BootSource, accel: str = "tcg", folder: Path = Path("/lab/vms/x,y")):
    return qemu_argv(folder=folder, name="app1-qemu-1", accel=accel, cpus=2, memory_mb=1024,
                     disks=[DiskFile(folder / "disk0.qcow2", "fm0123456789abd0"),
                            DiskFile(folder / "disk1.qcow2", "fm0123456789abd1")],
                     mac="52:54:00:01:02:03",
                     source=source, netdev=tap_netdev("fmt0123456789"))


def test_network_boot_argv():
    argv = argv_for(BootSource.NETWORK)
    assert argv[0] == "qemu-system-x86_64"
    assert option(argv, "-boot") == ["n"] and "-no-reboot" in argv
    assert option(argv, "-accel") == ["tcg,thread=multi"] and option(argv, "-cpu") == ["qemu64"]
    assert option(argv, "-smp") == ["2"] and option(argv, "-m") == ["1024"]
    assert option(argv, "-display") == ["none"]
    assert option(argv, "-qmp") == ["unix:qmp.sock,server=on,wait=off"]  # relative: cwd is the folder
    assert option(argv, "-pidfile") == ["/lab/vms/x,y/qemu.pid"]
    console = qemu_opts(option(argv, "-chardev")[0])
    assert "path=/lab/vms/x,y/console-network.log" in console
    drives = [qemu_opts(d) for d in option(argv, "-drive")]
    assert [d[0] for d in drives] == ["file=/lab/vms/x,y/disk0.qcow2", "file=/lab/vms/x,y/disk1.qcow2"]
    assert all("if=none" in d and "format=qcow2" in d for d in drives)
    assert [d[2] for d in drives] == ["id=d0", "id=d1"]
    # Each disk a virtio-blk device with its serial, in plan order (the guest finds it by it).
    assert option(argv, "-device") == [
        "virtio-blk-pci,drive=d0,serial=fm0123456789abd0",
        "virtio-blk-pci,drive=d1,serial=fm0123456789abd1",
        "virtio-net-pci,netdev=n0,mac=52:54:00:01:02:03"]
    assert not any("romfile" in a for a in argv)  # it silently disables PXE


def test_disk_boot_argv():
    argv = argv_for(BootSource.DISK, accel="kvm")
    assert option(argv, "-boot") == ["c"] and "-no-reboot" not in argv
    assert option(argv, "-accel") == ["kvm"] and option(argv, "-cpu") == ["host"]
    assert option(argv, "-netdev") == ["tap,id=n0,ifname=fmt0123456789,script=no,downscript=no"]
    assert "path=/lab/vms/x,y/console-disk.log" in qemu_opts(option(argv, "-chardev")[0])


@pytest.fixture
def lab_settings(tmp_path: Path) -> Settings:
    images = tmp_path / "images"
    images.mkdir()
    for name in qemu.IMAGE_FILES:
        (images / name).write_bytes(b"x")
    return Settings(state_dir=tmp_path / "state", lab_images=images, provider="qemu")


def spec(**changes) -> VmSpec:
    fields = dict(vm_id=uuid.uuid4(), group="g", name="a", role="app", cpus=1, memory_mb=512,
                  disks_gb=[1], address="10.20.0.11/24", gateway="10.20.0.1")
    return VmSpec(**{**fields, **changes})


@pytest.mark.parametrize("bus", [DiskBus.SCSI, DiskBus.SATA])
async def test_create_refuses_disks_on_other_buses(lab_settings, bus):
    """The qemu provider attaches virtio disks only: a plan asking for SCSI or SATA is refused
    by name (the VM, the disk, the bus) before anything is made."""
    asked = spec(disks_gb=[10, 20], disk_buses=[DiskBus.VIRTIO, bus])
    with pytest.raises(ProviderError, match=f"VM a, disk 1: planned on {bus}, but the qemu "
                                            "provider attaches virtio disks only"):
        await QemuProvider(lab_settings).create_vm(asked, idempotency_key="k")
    assert not (lab_settings.lab_dir / "vms").exists()


async def test_create_needs_root(lab_settings, monkeypatch):
    monkeypatch.setattr(qemu.os, "geteuid", lambda: 1000)
    with pytest.raises(ProviderError, match="must run as root"):
        await QemuProvider(lab_settings).create_vm(spec(), idempotency_key="k")


async def test_create_needs_qemu(lab_settings, monkeypatch):
    monkeypatch.setattr(qemu.os, "geteuid", lambda: 0)
    monkeypatch.setattr(qemu.shutil, "which", lambda tool: None)
    with pytest.raises(ProviderError, match="qemu-system-x86_64 is not installed.*qemu-system-x86"):
        await QemuProvider(lab_settings).create_vm(spec(), idempotency_key="k")


async def test_create_needs_the_images(lab_settings, monkeypatch, tmp_path):
    monkeypatch.setattr(qemu.os, "geteuid", lambda: 0)
    monkeypatch.setattr(qemu.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    settings = lab_settings.model_copy(update={"lab_images": tmp_path / "missing"})
    with pytest.raises(ProviderError, match="migration-vmlinuz.*deploy/lab/build-images.sh"):
        await QemuProvider(settings).create_vm(spec(), idempotency_key="k")


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its contents."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


async def test_unknown_refs_and_networks(lab_settings):
    """Another provider's ref and a VM that does not exist are refused by name; deleting a VM
    that does not exist is fine and leaves nothing behind."""
    provider = QemuProvider(lab_settings)
    with pytest.raises(ProviderError, match="not a qemu VM reference"):
        await provider.power_off("sim-123")
    with pytest.raises(ProviderError, match="no VM"):
        await provider.boot(vm_ref("nope"), BootSource.DISK)
    await provider.delete(vm_ref("nope"))  # already gone: fine
    vms = lab_settings.lab_dir / "vms"
    assert not vms.exists() or not any(vms.iterdir())


async def test_teardown_leaves_a_stopped_vm_folder_as_it_was(lab_settings):
    """teardown, on a lab whose only VM is not running and with no group network, changes no
    file (a VM folder keeps its disks and console: only processes and networks go), and can
    be repeated."""
    folder = lab_settings.lab_dir / "vms" / vm_ref("vm:1")
    folder.mkdir(parents=True)
    (folder / "vm.json").write_text('{"network": "migration"}')
    (folder / "disk0.qcow2").write_bytes(b"QFI\xfb disk")
    (folder / "console-disk.log").write_text("login:\n")
    before = tree(lab_settings.lab_dir)
    await teardown(lab_settings)
    await teardown(lab_settings)
    assert tree(lab_settings.lab_dir) == before


def test_make_provider_builds_qemu(lab_settings):
    assert make_provider(lab_settings).name == "qemu"
    with pytest.raises(ValueError, match="available: sim, qemu"):
        make_provider(lab_settings.model_copy(update={"provider": "nope"}))
