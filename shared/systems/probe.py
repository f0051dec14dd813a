"""Read a legacy root: which system it is (`HostSystem`), from its own files.

`SCRIPT` is a POSIX shell script that runs on the legacy host over SSH (or here, against a
folder standing for a host's root, its first argument) and prints what gives the system away:
os-release, where /sbin/init leads, which of the network stacks' files and enable links exist,
and the network configuration files themselves (at most 64 KiB each). `read_system` parses that
and decides; it never runs anything, so the decision is unit-tested from fixture roots.

The host's files are data here: nothing of them is run or written anywhere, and only the verdict
(family, init, network stack, interface name) is kept.
"""

from __future__ import annotations

import configparser
import re
import shlex
from dataclasses import dataclass, field

import yaml

from shared.systems.model import (
    INTERFACE_NAME, Family, HostSystem, Init, Initramfs, NetworkStack, UnknownSystem,
    check_known,
)

# Paths whose presence tells (an enable link, a program, a marker file).
MARKERS = (
    "/etc/inittab", "/sbin/openrc", "/sbin/openrc-run", "/usr/sbin/openrc", "/etc/init.d/net.lo",
    "/sbin/ifup", "/usr/sbin/ifup", "/usr/sbin/netplan", "/usr/sbin/NetworkManager",
    "/usr/sbin/update-initramfs", "/usr/bin/dracut", "/usr/sbin/dracut",
    "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
    "/etc/systemd/system/multi-user.target.wants/NetworkManager.service",
    "/etc/systemd/system/multi-user.target.wants/networking.service",
    "/etc/init.d/networking", "/etc/init.d/rc.local", "/etc/rc.d/rc.local",
)
# Files whose contents tell (globs are expanded on the host).
FILES = (
    "/etc/os-release", "/usr/lib/os-release", "/etc/inittab", "/etc/network/interfaces",
    "/etc/systemd/network/*.network", "/etc/netplan/*.yaml",
    "/etc/NetworkManager/system-connections/*", "/etc/sysconfig/network-scripts/ifcfg-*",
    "/etc/conf.d/net",
)
_SECTION = "@@ferry-probe "
MAX_FILE_BYTES = 65536

SCRIPT = f"""\
R=${{1:-}}
for m in {' '.join(MARKERS)}; do
    if [ -e "$R$m" ] || [ -L "$R$m" ]; then printf '\\n{_SECTION}exists %s\\n' "$m"; fi
done
printf '\\n{_SECTION}init %s\\n' "$(readlink "$R/sbin/init" 2>/dev/null || {{ [ -f "$R/sbin/init" ] && echo file; }} || echo none)"
set -f  # the patterns are expanded under $R below, not here
for pattern in {' '.join(FILES)}; do
    set +f
    for f in "$R"$pattern; do
        if [ -f "$f" ]; then
            printf '\\n{_SECTION}file %s\\n' "${{f#"$R"}}"
            # Each line of the file behind a "|": no line of a host's file can pass for a
            # section of the probe's own.
            head -c {MAX_FILE_BYTES} "$f" | sed 's/^/|/'
        fi
    done
    set -f
done
set +f
printf '\\n{_SECTION}end\\n'
"""


@dataclass
class Facts:
    """What the probe printed: the files it showed, the markers present, /sbin/init's link."""

    files: dict[str, str] = field(default_factory=dict)
    present: set[str] = field(default_factory=set)
    init_link: str = "none"  # the link's target, "file" for a real file, "none"
    complete: bool = False  # the probe ran to its end

    def has(self, *paths: str) -> bool:
        return any(path in self.present for path in paths)

    def matching(self, prefix: str, suffix: str = "") -> dict[str, str]:
        return {path: text for path, text in sorted(self.files.items())
                if path.startswith(prefix) and path.endswith(suffix)}


def parse(output: str) -> Facts:
    facts = Facts()
    current: list[str] | None = None
    for line in output.split("\n"):
        if line.startswith(_SECTION):
            kind, _, value = line[len(_SECTION):].partition(" ")
            current = None
            if kind == "exists":
                facts.present.add(value)
            elif kind == "init":
                facts.init_link = value
            elif kind == "file":
                current = []
                facts.files[value] = current  # joined below
            elif kind == "end":
                facts.complete = True
        elif current is not None and line.startswith("|"):
            current.append(line[1:])
    facts.files = {path: "\n".join(lines).strip("\n") for path, lines in facts.files.items()}
    return facts


def read_system(output: str, where: str) -> HostSystem:
    """The system the probe's `output` describes; UnknownSystem (naming `where`) when Ferryman
    cannot tell it or cannot rebuild it."""
    facts = parse(output)
    if not facts.complete:
        raise UnknownSystem(f"{where}: the system probe did not finish")
    release = _os_release(facts, where)
    family = _family(release, where)
    init = _init(facts, where)
    network, interface, renderer = _network(facts, family, init, where)
    system = HostSystem(
        family=family, release=release.get("VERSION_ID", ""),
        name=release.get("PRETTY_NAME", ""), init=init, network=network,
        interface=interface, renderer=renderer, initramfs=_initramfs(facts))
    try:
        return check_known(system)
    except UnknownSystem as exc:
        raise UnknownSystem(f"{where}: {exc}") from None


# --- family --------------------------------------------------------------------------------------

_RHEL_IDS = {"rhel", "centos", "rocky", "almalinux", "ol", "fedora", "scientific"}


def _os_release(facts: Facts, where: str) -> dict[str, str]:
    text = facts.files.get("/etc/os-release") or facts.files.get("/usr/lib/os-release")
    if not text:
        raise UnknownSystem(f"{where}: no /etc/os-release or /usr/lib/os-release: cannot tell "
                            "which system this is")
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Z_]+", key.strip()):
            try:
                words = shlex.split(value, comments=False)
            except ValueError:
                words = [value.strip()]
            values[key.strip()] = " ".join(words)
    return values


def _family(release: dict[str, str], where: str) -> Family:
    os_id = release.get("ID", "").lower()
    like = release.get("ID_LIKE", "").lower().split()
    if os_id == "ubuntu":
        return Family.UBUNTU
    if os_id == "debian" or "debian" in like and "ubuntu" not in like:
        return Family.DEBIAN
    if "ubuntu" in like:
        return Family.UBUNTU
    if os_id in _RHEL_IDS or {"rhel", "fedora", "centos"} & set(like):
        return Family.RHEL
    if os_id == "gentoo" or "gentoo" in like:
        return Family.GENTOO
    raise UnknownSystem(f"{where}: os-release says ID={os_id or '?'}"
                        f"{' ID_LIKE=' + ' '.join(like) if like else ''}: Ferryman rebuilds "
                        "Debian, Ubuntu, RHEL-like and Gentoo hosts")


# --- init ----------------------------------------------------------------------------------------

def _init(facts: Facts, where: str) -> Init:
    """What PID 1 runs: where /sbin/init leads, and for a real /sbin/init, whether its
    inittab hands the boot to OpenRC (Gentoo) or runs sysvinit's rc."""
    link = facts.init_link
    program = link.rstrip("/").rsplit("/", 1)[-1]
    if program == "systemd":
        return Init.SYSTEMD
    if program == "openrc-init":
        return Init.OPENRC
    if link == "file" or program == "init":
        inittab = facts.files.get("/etc/inittab", "")
        if "openrc" in inittab:
            return Init.OPENRC
        if inittab:
            return Init.SYSVINIT
    raise UnknownSystem(f"{where}: /sbin/init is {'missing' if link == 'none' else link!r}"
                        " and no inittab says how the host boots: Ferryman knows systemd, "
                        "sysvinit and OpenRC")


# --- network -------------------------------------------------------------------------------------

def _network(facts: Facts, family: Family, init: Init,
             where: str) -> tuple[NetworkStack, str | None, str | None]:
    """The stack that configures the host's network, in the order one shadows another: netplan
    writes networkd's or NetworkManager's files, so it wins; RHEL's ifcfg files are read by
    NetworkManager; networkd and NetworkManager count only when enabled."""
    netplan = facts.matching("/etc/netplan/", ".yaml")
    if facts.has("/usr/sbin/netplan") and any(_yaml(text) for text in netplan.values()):
        interface, renderer = _netplan_interface(netplan)
        return NetworkStack.NETPLAN, interface, renderer
    ifcfg = {path: text for path, text in facts.matching("/etc/sysconfig/network-scripts/ifcfg-")
             .items() if not path.endswith("ifcfg-lo")}
    if family == Family.RHEL and ifcfg:
        return NetworkStack.IFCFG, _ifcfg_interface(ifcfg), None
    if init == Init.SYSTEMD and facts.has(
            "/etc/systemd/system/multi-user.target.wants/NetworkManager.service"):
        return (NetworkStack.NETWORKMANAGER,
                _keyfile_interface(facts.matching("/etc/NetworkManager/system-connections/")),
                None)
    networkd = facts.matching("/etc/systemd/network/", ".network")
    if init == Init.SYSTEMD and networkd and facts.has(
            "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"):
        return NetworkStack.NETWORKD, _networkd_interface(networkd), None
    if init == Init.OPENRC and ("/etc/conf.d/net" in facts.files or facts.has("/etc/init.d/net.lo")):
        return NetworkStack.NETIFRC, _netifrc_interface(facts.files.get("/etc/conf.d/net", "")), None
    if facts.has("/sbin/ifup", "/usr/sbin/ifup") and "/etc/network/interfaces" in facts.files:
        return (NetworkStack.IFUPDOWN,
                _ifupdown_interface(facts.files["/etc/network/interfaces"]), None)
    if init != Init.SYSTEMD:
        # networkd's and NetworkManager's files under another init: nothing runs them there.
        # Named, so the refusal (check_known) says which combination the host is.
        if networkd:
            return NetworkStack.NETWORKD, _networkd_interface(networkd), None
        keyfiles = facts.matching("/etc/NetworkManager/system-connections/")
        if keyfiles:
            return NetworkStack.NETWORKMANAGER, _keyfile_interface(keyfiles), None
    raise UnknownSystem(f"{where}: no network configuration Ferryman knows is in use (looked for "
                        "netplan, RHEL ifcfg files, an enabled NetworkManager or systemd-networkd, "
                        "Gentoo's /etc/conf.d/net, ifupdown's /etc/network/interfaces)")


_IFNAME = re.compile(INTERFACE_NAME)


def _name(candidate: str | None) -> str | None:
    """An interface name worth keeping: a plain name (not a pattern, not loopback)."""
    if candidate and _IFNAME.match(candidate) and candidate != "lo":
        return candidate
    return None


def _first(names) -> str | None:
    for candidate in names:
        if _name(candidate):
            return candidate
    return None


def _ifupdown_interface(text: str) -> str | None:
    return _first(line.split()[1] for line in text.splitlines()
                  if len(line.split()) >= 3 and line.split()[0] == "iface")


def _networkd_interface(files: dict[str, str]) -> str | None:
    names = []
    for text in files.values():
        section = _ini(text)
        if section is not None and section.has_option("Match", "Name"):
            names += section.get("Match", "Name").split()
    return _first(names)


def _keyfile_interface(files: dict[str, str]) -> str | None:
    names = []
    for text in files.values():
        section = _ini(text)
        if section is not None and section.has_option("connection", "interface-name"):
            names.append(section.get("connection", "interface-name").strip())
    return _first(names)


def _ifcfg_interface(files: dict[str, str]) -> str | None:
    names = []
    for path, text in files.items():
        device = re.search(r"^DEVICE=[\"']?([^\"'\s]+)", text, re.MULTILINE)
        names.append(device.group(1) if device else path.rsplit("ifcfg-", 1)[-1])
    return _first(names)


def _netifrc_interface(text: str) -> str | None:
    return _first(re.findall(r"^config_([A-Za-z0-9_]+)=", text, re.MULTILINE))


def _netplan_interface(files: dict[str, str]) -> tuple[str | None, str | None]:
    names, renderer = [], None
    for text in files.values():
        network = (_yaml(text) or {}).get("network") or {}
        if not isinstance(network, dict):
            continue
        renderer = network.get("renderer", renderer)
        ethernets = network.get("ethernets") or {}
        if isinstance(ethernets, dict):
            for key, spec in ethernets.items():
                spec = spec if isinstance(spec, dict) else {}
                matched = spec.get("match") if isinstance(spec.get("match"), dict) else {}
                names.append(spec.get("set-name") or matched.get("name") or key)
    return _first(str(n) for n in names), renderer if renderer in ("networkd",
                                                                    "NetworkManager") else None


def _yaml(text: str) -> dict | None:
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: a date like 2001-13-45
        return None
    return data if isinstance(data, dict) else None


def _ini(text: str) -> configparser.ConfigParser | None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error:
        return None
    return parser


def _initramfs(facts: Facts) -> Initramfs | None:
    if facts.has("/usr/sbin/update-initramfs"):
        return Initramfs.INITRAMFS_TOOLS
    if facts.has("/usr/bin/dracut", "/usr/sbin/dracut"):
        return Initramfs.DRACUT
    return None
