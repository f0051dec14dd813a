"""The whole configuration script for every system Ferryman rebuilds (read by the real probe
from its fixture root, tests/fixtures/systems/<kind>/root): it passes bash -n and shellcheck,
and run under the recorder stubs of test_render with the fixture root as the new root, it
retires the legacy network files, writes the system's own, links what it enables, hooks the
first boot, and builds an initrd with the system's own tool."""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import shutil
import stat
from pathlib import Path

import pytest

from services.configurator.render import render_script
from shared.plan import Plan, load_plan_file
from shared.systems import HostSystem, NetworkSettings, RootChanges, root_changes
from shared.systems.model import Initramfs, NetworkStack
from tests.unit.test_render import (EXAMPLE_PLAN, KERNEL, MAC, Run, archive_refs, check_script,
                                    disks_of, run_under_stubs)
from tests.unit.test_systems_probe import FIXTURES, KNOWN, probed

VM_NAME = "db1"  # the example plan's database master: two disks, a dump, a root archive
PRE_FERRY = "etc/ferryman/pre-ferry"


@pytest.fixture(scope="module")
def shop() -> Plan:
    return load_plan_file(EXAMPLE_PLAN)


def script(plan: Plan, system: HostSystem) -> str:
    vm = plan.vm(VM_NAME)
    return render_script(plan, vm, archive_refs(vm), disks=disks_of(vm), mac=MAC, system=system)


def expected_changes(plan: Plan, system: HostSystem) -> RootChanges:
    """What the script must write: root_changes for the VM's planned network and its NIC."""
    network = plan.vm(VM_NAME).network
    return root_changes(system, NetworkSettings(
        mac=MAC, interface=system.interface_name,
        address=ipaddress.ip_interface(str(network.address)),
        gateway=ipaddress.ip_address(str(network.gateway)),
        dns=tuple(ipaddress.ip_address(str(server)) for server in network.dns),
        hostname=network.hostname))


def run_on_fixture_root(plan: Plan, kind: str, tmp_path: Path, **kwargs) -> tuple[Run, Path]:
    """The script run under the stubs, its new root a copy of the kind's fixture root (the
    stubs unpack no archive: the legacy files are there before, as if unpacked)."""
    newroot = tmp_path / "newroot"
    shutil.copytree(FIXTURES / kind / "root", newroot, symlinks=True)
    run = run_under_stubs(script(plan, probed(kind)), tmp_path,
                          disks=disks_of(plan.vm(VM_NAME)), **kwargs)
    return run, newroot


def legacy_network_files(kind: str, changes: RootChanges) -> dict[str, Path]:
    """The fixture root's files (or links) that the script must retire: path -> the file."""
    root = FIXTURES / kind / "root"
    found = {}
    for retired in changes.retired:
        folder = root / retired.folder.lstrip("/")
        if not folder.is_dir():
            continue
        for path in folder.glob(retired.pattern):
            if path.name != retired.keep:
                found[f"{retired.folder}/{path.name}"] = path
    return found


@pytest.mark.parametrize("kind", sorted(KNOWN))
def test_the_script_passes_bash_and_shellcheck(shop: Plan, kind: str, tmp_path: Path):
    check_script(script(shop, probed(kind)), tmp_path, f"{kind}-configure.sh")


# Each kind's legacy network configuration, which its fixture root holds and the script must
# move out of the readers' way (checked here so a fixture cannot quietly lose it).
LEGACY = {
    "debian12-ifupdown": ["/etc/udev/rules.d/70-persistent-net.rules"],
    "debian11-sysvinit": [],  # ifupdown's file is rewritten in place (kept as .pre-ferry)
    "debian12-networkd": ["/etc/systemd/network/10-lan.network"],
    "debian12-netplan": ["/etc/netplan/90-default.yaml"],
    "debian12-networkmanager": ["/etc/NetworkManager/system-connections/ens18.nmconnection"],
    "ubuntu2204-netplan": ["/etc/netplan/50-cloud-init.yaml"],
    "ubuntu2204-netplan-nm": ["/etc/netplan/01-network-manager-all.yaml"],
    "rocky9-networkmanager": ["/etc/NetworkManager/system-connections/enp1s0.nmconnection"],
    "centos7-ifcfg": ["/etc/sysconfig/network-scripts/ifcfg-eth0"],
    "gentoo-openrc-netifrc": ["/etc/runlevels/default/net.eth0"],
}


@pytest.mark.parametrize("kind", sorted(KNOWN))
def test_the_script_writes_the_systems_own_files(shop: Plan, kind: str, tmp_path: Path):
    """Run on a copy of the fixture root: the legacy network files are moved under
    /etc/ferryman/pre-ferry (same folder below it), the new files are in place with their
    text and modes, the links lead where they should, and under sysvinit rc.local runs
    local.start right after its #! line, the legacy lines kept."""
    system = probed(kind)
    changes = expected_changes(shop, system)
    legacy = legacy_network_files(kind, changes)
    assert sorted(legacy) == sorted(LEGACY[kind])
    run, newroot = run_on_fixture_root(shop, kind, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.states()[-1] == ("configured", "done")

    for path, original in legacy.items():
        kept = newroot / PRE_FERRY / path.lstrip("/")
        assert kept.is_symlink() == original.is_symlink(), path
        if original.is_symlink():
            assert os.readlink(kept) == os.readlink(original)
        else:
            assert kept.read_text() == original.read_text()
        folder, name = path.rsplit("/", 1)
        assert f"legacy {path} moved to /etc/ferryman/pre-ferry{folder}" in run.texts()
        written = {f.path for f in changes.files} | {link.path for link in changes.links}
        if path not in written:
            assert not (newroot / path.lstrip("/")).exists(), f"{path} was left in place"

    # Nothing but Ferryman's own is left for the stacks to read in the retired folders: no
    # legacy file, and no .pre-ferry copy either (initscripts, NetworkManager would read one).
    ours = {f.path for f in changes.files} | {link.path for link in changes.links}
    for retired in changes.retired:
        folder = newroot / retired.folder.lstrip("/")
        left = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        stray = [name for name in left
                 if (fnmatch.fnmatch(name, retired.pattern) or name.endswith(".pre-ferry"))
                 and f"{retired.folder}/{name}" not in ours and name != retired.keep]
        assert not stray, f"left in {retired.folder}: {stray}"

    for retired in changes.retired:
        if retired.keep and (FIXTURES / kind / "root" / retired.folder.lstrip("/")
                             / retired.keep).exists():
            assert (newroot / retired.folder.lstrip("/") / retired.keep).is_file()

    for file in changes.files:
        path = newroot / file.path.lstrip("/")
        assert not path.is_symlink() and path.read_text() == file.text + "\n", file.path
        assert stat.S_IMODE(path.stat().st_mode) == int(file.mode, 8), file.path
    for link in changes.links:
        assert os.readlink(newroot / link.path.lstrip("/")) == link.target, link.path

    rc_local = newroot / "etc/rc.local"
    if changes.rc_local_line is not None:
        legacy_rc = (FIXTURES / kind / "root/etc/rc.local").read_text().splitlines()
        lines = rc_local.read_text().splitlines()
        assert lines == [legacy_rc[0], changes.rc_local_line, *legacy_rc[1:]]
        assert os.access(rc_local, os.X_OK)
    elif rc_local.exists() or rc_local.is_symlink():
        assert "ferryman" not in rc_local.read_text()  # left as the legacy host had it


def test_a_linked_resolv_conf_is_replaced_not_followed(shop: Plan, tmp_path: Path):
    """Ubuntu's /etc/resolv.conf is a link to systemd-resolved's stub: the new file replaces
    the link (kept as resolv.conf.pre-ferry), nothing is written where it led."""
    run, newroot = run_on_fixture_root(shop, "ubuntu2204-netplan", tmp_path)
    assert run.returncode == 0, run.stderr
    resolv = newroot / "etc/resolv.conf"
    assert not resolv.is_symlink() and "nameserver 10.20.0.1" in resolv.read_text()
    assert os.readlink(newroot / "etc/resolv.conf.pre-ferry") == \
        "../run/systemd/resolve/stub-resolv.conf"
    assert not (newroot / "run").exists()


@pytest.mark.parametrize("kind", sorted(k for k in KNOWN if KNOWN[k][-1] == Initramfs.DRACUT))
def test_a_dracut_system_builds_its_initrd_with_dracut(shop: Plan, kind: str, tmp_path: Path):
    """A kernel bundle without an initrd: a RHEL-like or Gentoo root makes one with its own
    dracut, not host-only, with LVM, named as GRUB's entry expects; never update-initramfs."""
    run, newroot = run_on_fixture_root(shop, kind, tmp_path)
    assert run.returncode == 0, run.stderr
    chroots = [call["args"] for call in run.of("chroot")]
    assert [str(newroot), "dracut", "--force", "--no-hostonly", "--add", "lvm",
            f"/boot/initrd.img-{KERNEL}", KERNEL] in chroots
    assert not [args for args in chroots if "update-initramfs" in args]
    assert (newroot / f"boot/initrd.img-{KERNEL}").read_text() == "initrd"
    assert f"initrd /initrd.img-{KERNEL}" in (newroot / "boot/grub/grub.cfg").read_text()


def test_a_bundled_initrd_is_used_on_a_dracut_system_too(shop: Plan, tmp_path: Path):
    run, _ = run_on_fixture_root(shop, "rocky9-networkmanager", tmp_path,
                                 env={"FERRY_STUB_BUNDLED_INITRD": "1"})
    assert run.returncode == 0, run.stderr
    assert not [c for c in run.of("chroot") if "dracut" in c["args"]]
    assert "using the initrd that came with kernel" in run.texts()


def test_an_initramfs_tools_system_builds_its_initrd_with_update_initramfs(shop: Plan,
                                                                          tmp_path: Path):
    run, newroot = run_on_fixture_root(shop, "ubuntu2204-netplan", tmp_path)
    assert run.returncode == 0, run.stderr
    chroots = [call["args"] for call in run.of("chroot")]
    assert [str(newroot), "update-initramfs", "-c", "-k", "all"] in chroots
    assert not [args for args in chroots if "dracut" in args]
    assert "MODULES=most" in (newroot / "etc/initramfs-tools/conf.d/ferryman.conf").read_text()


def test_a_system_without_an_initramfs_tool_fails_the_initrd_step(shop: Plan, tmp_path: Path):
    """Gentoo without dracut (the probe found no initramfs tool) and a kernel without an
    initrd: the script stops at the initrd step, saying why, before GRUB is touched."""
    system = probed("gentoo-openrc-netifrc").model_copy(update={"initramfs": None})
    assert system.network == NetworkStack.NETIFRC
    vm = shop.vm(VM_NAME)
    run = run_under_stubs(script(shop, system), tmp_path, disks=disks_of(vm))
    assert run.returncode != 0
    assert [b["step"] for b in run.posted("state") if b["state"] == "failed"] == ["initrd"]
    assert "has no initramfs tool Ferryman knows" in run.texts()
    assert not run.of("grub-install")
