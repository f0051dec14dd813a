"""The system probe against fixture roots (tests/fixtures/systems/<kind>/root): the real
PROBE_SCRIPT run with sh, as the archiver runs it against a folder, then read_system. Every
kind Ferryman rebuilds is told apart; every other root is refused with what was found."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.systems import PROBE_SCRIPT, HostSystem, UnknownSystem, read_system
from shared.systems.model import Family, Init, Initramfs, NetworkStack
from shared.systems.probe import _SECTION, parse

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "systems"
SH = shutil.which("sh") or "/bin/sh"

D, U, R, G = Family.DEBIAN, Family.UBUNTU, Family.RHEL, Family.GENTOO
SYSTEMD, SYSVINIT, OPENRC = Init.SYSTEMD, Init.SYSVINIT, Init.OPENRC
ITOOLS, DRACUT = Initramfs.INITRAMFS_TOOLS, Initramfs.DRACUT

# kind: (family, release, init, network, interface, renderer, initramfs)
KNOWN = {
    "debian12-ifupdown": (D, "12", SYSTEMD, NetworkStack.IFUPDOWN, "enp1s0", None, ITOOLS),
    "debian11-sysvinit": (D, "11", SYSVINIT, NetworkStack.IFUPDOWN, "eth0", None, ITOOLS),
    "debian12-networkd": (D, "12", SYSTEMD, NetworkStack.NETWORKD, "ens3", None, ITOOLS),
    # name patterns only (en*, eth*): no interface name, eth0 by default
    "debian12-netplan": (D, "12", SYSTEMD, NetworkStack.NETPLAN, None, None, ITOOLS),
    "debian12-networkmanager": (D, "12", SYSTEMD, NetworkStack.NETWORKMANAGER, "ens18", None,
                                ITOOLS),
    "ubuntu2204-netplan": (U, "22.04", SYSTEMD, NetworkStack.NETPLAN, "ens3", "networkd", ITOOLS),
    "ubuntu2204-netplan-nm": (U, "22.04", SYSTEMD, NetworkStack.NETPLAN, None, "NetworkManager",
                              ITOOLS),
    "rocky9-networkmanager": (R, "9.3", SYSTEMD, NetworkStack.NETWORKMANAGER, "enp1s0", None,
                              DRACUT),
    "centos7-ifcfg": (R, "7", SYSTEMD, NetworkStack.IFCFG, "eth0", None, DRACUT),
    "gentoo-openrc-netifrc": (G, "2.15", OPENRC, NetworkStack.NETIFRC, "eth0", None, DRACUT),
}

# kind: what the refusal must say it found
REFUSED = {
    "alpine": ["ID=alpine", "Debian, Ubuntu, RHEL-like and Gentoo"],
    "debian-runit": ["/sbin/init is '/lib/runit/runit-init'", "systemd, sysvinit and OpenRC"],
    "debian-busybox-init": ["/sbin/init is '/bin/busybox'", "no inittab"],
    "debian-no-network": ["no network configuration Ferryman knows is in use"],
    # Before RHEL 7, no os-release: the family is not told (/etc/redhat-release is not read).
    "centos6-no-os-release": ["no /etc/os-release or /usr/lib/os-release"],
    "sysvinit-networkd": ["Debian GNU/Linux 11 (bullseye): sysvinit with systemd-networkd is "
                          "not a combination Ferryman can rebuild",
                          "with sysvinit: ifcfg, ifupdown"],
}


def probe(root: Path) -> str:
    """What the probe prints about `root`, run as the archiver runs it against a folder."""
    done = subprocess.run([SH, "-c", PROBE_SCRIPT, "probe", str(root)], capture_output=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode(errors="replace")


def probed(kind: str) -> HostSystem:
    return read_system(probe(FIXTURES / kind / "root"), kind)


def test_every_fixture_is_tested():
    """Each fixture root is either a kind Ferryman rebuilds or one it refuses."""
    kinds = {path.parent.name for path in FIXTURES.glob("*/root")}
    assert kinds == set(KNOWN) | set(REFUSED)


@pytest.mark.parametrize("kind", sorted(KNOWN))
def test_the_probe_tells_each_known_system(kind: str):
    family, release, init, network, interface, renderer, initramfs = KNOWN[kind]
    system = probed(kind)
    assert (system.family, system.release, system.init, system.network, system.interface,
            system.renderer, system.initramfs) == KNOWN[kind]
    assert system.name  # os-release's PRETTY_NAME, for `ferry status`
    assert system.summary().endswith(f"{network} ({interface or 'eth0'})")


def test_the_known_kinds_are_all_different():
    """No two fixtures of different kinds read the same: the probe tells every kind apart."""
    systems = {kind: probed(kind) for kind in KNOWN}
    verdicts = {(s.family, s.init, s.network, s.renderer) for s in systems.values()}
    # debian12-ifupdown and debian11-sysvinit differ by init; the netplan ones by family or
    # renderer; every (init, network) pair Ferryman writes for appears at least once.
    assert len(verdicts) == len(systems)
    pairs = {(s.init, s.network) for s in systems.values()}
    assert pairs >= {(SYSTEMD, NetworkStack.IFUPDOWN), (SYSVINIT, NetworkStack.IFUPDOWN),
                     (SYSTEMD, NetworkStack.NETWORKD), (SYSTEMD, NetworkStack.NETPLAN),
                     (SYSTEMD, NetworkStack.NETWORKMANAGER), (SYSTEMD, NetworkStack.IFCFG),
                     (OPENRC, NetworkStack.NETIFRC)}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_the_probe_refuses_what_it_cannot_rebuild(kind: str):
    with pytest.raises(UnknownSystem) as refused:
        probed(kind)
    message = str(refused.value)
    assert message.startswith(f"{kind}: ")  # names the host
    for found in REFUSED[kind]:
        assert found in message


def test_the_probe_reads_through_a_merged_usr():
    """On Rocky and CentOS /sbin is a relative link to usr/sbin: the probe still finds
    /sbin/init's link and the programs under it, inside the root (not this machine's)."""
    output = probe(FIXTURES / "rocky9-networkmanager" / "root")
    facts = parse(output)
    assert facts.init_link == "../lib/systemd/systemd"
    assert facts.has("/usr/sbin/NetworkManager") and facts.has("/usr/bin/dracut")
    assert "/etc/os-release" in facts.files  # through its relative link, ../usr/lib/os-release
    assert not facts.has("/usr/sbin/update-initramfs")


def test_a_file_name_with_spaces_is_read_whole(tmp_path: Path):
    """NetworkManager's "Wired connection 1.nmconnection": one file, its name kept."""
    facts = parse(probe(FIXTURES / "ubuntu2204-netplan-nm" / "root"))
    name = "/etc/NetworkManager/system-connections/Wired connection 1.nmconnection"
    assert facts.files[name].startswith("[connection]\nid=Wired connection 1")


def test_a_probe_cut_short_is_refused():
    """Output without the end marker (the connection dropped, the script was killed) is never
    taken for a whole answer, however much of it came."""
    output = probe(FIXTURES / "debian12-ifupdown" / "root")
    assert read_system(output, "whole").network == NetworkStack.IFUPDOWN
    cut = output[:output.rindex(f"{_SECTION}end")]
    with pytest.raises(UnknownSystem, match="cut: the system probe did not finish"):
        read_system(cut, "cut")
    with pytest.raises(UnknownSystem, match="did not finish"):
        read_system("", "empty")


def test_marker_lines_inside_a_file_are_its_content(tmp_path: Path):
    """A configuration file whose lines start with the probe's section marker (with any kind,
    or none) is read as it is: its lines are content, the verdict is the host's own, and a
    probe cut short cannot pass for a whole one through such a line."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "debian12-ifupdown" / "root", root, symlinks=True)
    interfaces = root / "etc/network/interfaces"
    odd = "".join(f"{_SECTION}{tail}\n" for tail in (
        "", "file", "file ", "exists /sbin/openrc", "init /sbin/openrc-init", "end",
        "unknown kind", "file /etc/os-release")) + _SECTION.strip() + "\n"
    interfaces.write_text(interfaces.read_text() + odd)
    output = probe(root)
    facts = parse(output)
    assert facts.files["/etc/network/interfaces"].endswith(odd.rstrip("\n"))
    assert "/sbin/openrc" not in facts.present
    system = read_system(output, "odd")
    assert (system.init, system.network) == (Init.SYSTEMD, NetworkStack.IFUPDOWN)
    cut = output[:output.rindex(f"{_SECTION}end")]
    with pytest.raises(UnknownSystem, match="did not finish"):
        read_system(cut, "cut")


@pytest.mark.parametrize("document", [
    "network:\n  ethernets:\n    eth0:\n      match: eth0\n",  # match not a mapping
    "network:\n  ethernets:\n    eth0: {match: {name: [a, b]}, set-name: {x: 1}}\n",
    "network:\n  ethernets: [eth0]\n",
    "network:\n  version: 2\n  since: 2001-13-45\n",  # YAML's date that is no date
    "network:\n  renderer: [networkd]\n  ethernets:\n    7: {}\n",
    "network: " + "[" * 5000 + "]" * 5000 + "\n",
])
def test_odd_netplan_documents_give_a_verdict(tmp_path: Path, document: str):
    """netplan YAML that is valid YAML but not the shape netplan documents, or that YAML
    cannot build (an impossible date), is read without a crash."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "debian12-netplan" / "root", root, symlinks=True)
    (root / "etc/netplan/90-default.yaml").write_text(document)
    try:
        system = read_system(probe(root), "odd")
    except UnknownSystem:
        return
    assert system.network == NetworkStack.NETPLAN and system.interface in (None, "eth0", "7")


LINE = st.one_of(st.text(max_size=40), st.sampled_from(
    [f"{_SECTION}end", f"{_SECTION}file /etc/os-release", f"{_SECTION}init systemd",
     f"{_SECTION}exists /usr/sbin/netplan", f"{_SECTION}file /etc/netplan/x.yaml",
     "network:", "  ethernets:", "    eth0:", "      match: x", "      when: 2001-13-45",
     "ID=debian", "[Match]", "Name=eth0", "iface eth0 inet static", "config_eth0=\"x\"",
     f"{_SECTION}", "DEVICE=\"", "[connection]", "interface-name=eth0"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(sorted(KNOWN)), min_size=1, max_size=1),
       st.sampled_from(["/etc/os-release", "/etc/network/interfaces", "/etc/netplan/50-x.yaml",
                        "/etc/systemd/network/10-x.network", "/etc/conf.d/net",
                        "/etc/NetworkManager/system-connections/x",
                        "/etc/sysconfig/network-scripts/ifcfg-eth0", "/etc/inittab"]),
       st.lists(LINE, max_size=12))
def test_any_file_content_gives_a_verdict_not_a_crash(kinds, path, lines):
    """Whatever a legacy file holds, read_system decides or refuses (UnknownSystem): the host's
    files are data, and odd data must not stop the archiver with another exception."""
    output = _OUTPUTS.setdefault(kinds[0], probe(FIXTURES / kinds[0] / "root"))
    end = output.rindex(f"{_SECTION}end")
    output = output[:end] + f"\n{_SECTION}file {path}\n" + "\n".join(lines) + "\n" + output[end:]
    try:
        assert isinstance(read_system(output, "fuzzed"), HostSystem)
    except UnknownSystem:
        pass


_OUTPUTS: dict[str, str] = {}
