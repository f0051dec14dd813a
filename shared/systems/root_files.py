"""The files a rebuilt VM's root needs for its new network and its first boot, written the way
its own system reads them (`HostSystem`): the network by the stack the legacy host used, the NIC
found by its MAC and given the name the legacy configuration used, the hostname, and the hook
that runs local.start at the end of the first boot under that init system.

Pure: the configurator renders these into the configuration script, which writes them into the
new root; golden files (tests/fixtures/systems) pin the text for every stack.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass

import yaml

from shared.systems.model import Family, HostSystem, Init, NetworkStack

MARK = "# Written by Ferryman"
UDEV_RULE = "/etc/udev/rules.d/70-ferryman-net.rules"
LOCAL_START = "/etc/ferryman/local.start"
DONE = "/etc/ferryman/local.start.done"


@dataclass(frozen=True)
class NetworkSettings:
    """The new VM on its group's network (the plan's), and the NIC it has there."""

    mac: str  # the NIC's, as the provider made it
    interface: str  # the name the NIC gets: the legacy configuration's, or eth0
    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address | None
    dns: tuple[ipaddress.IPv4Address, ...]
    hostname: str  # the FQDN or short name the plan gives

    @property
    def short_hostname(self) -> str:
        return self.hostname.split(".", 1)[0]


@dataclass(frozen=True)
class RootFile:
    path: str
    mode: str  # octal, as chmod takes it
    text: str


@dataclass(frozen=True)
class RootLink:
    path: str
    target: str


@dataclass(frozen=True)
class Retired:
    """Legacy files matching `pattern` in `folder` that would configure the old network: moved
    to /etc/ferryman/pre-ferry/, where no stack reads them (a renamed file in place would still
    be read by some: NetworkManager reads every file of its folder). `keep` is left in place."""

    folder: str
    pattern: str
    keep: str = ""


@dataclass(frozen=True)
class RootChanges:
    retired: tuple[Retired, ...]
    files: tuple[RootFile, ...]
    links: tuple[RootLink, ...]
    # For sysvinit: the line put at the top of /etc/rc.local (an edit of the legacy file, which
    # the script makes), None under other inits.
    rc_local_line: str | None = None


def root_changes(system: HostSystem, net: NetworkSettings) -> RootChanges:
    """Everything the configuration script writes for `system`'s network, names and boot."""
    retired, files, links = _network(system, net)
    files += [_udev_rule(net), *_names(system, net), *_boot_hook_files(system)]
    links += _boot_hook_links(system)
    return RootChanges(retired=tuple(retired), files=tuple(files), links=tuple(links),
                       rc_local_line=_rc_local_line() if system.init == Init.SYSVINIT else None)


def _why(net: NetworkSettings) -> str:
    return (f"{MARK}: this VM on its new network. Its NIC is the one with MAC {net.mac}, "
            f"named {net.interface} by {UDEV_RULE}.")


# --- network -------------------------------------------------------------------------------------

def _network(system: HostSystem, net: NetworkSettings):
    writer = {
        NetworkStack.IFUPDOWN: _ifupdown, NetworkStack.NETWORKD: _networkd,
        NetworkStack.NETPLAN: _netplan, NetworkStack.NETWORKMANAGER: _networkmanager,
        NetworkStack.IFCFG: _ifcfg, NetworkStack.NETIFRC: _netifrc,
    }[system.network]
    return writer(system, net)


def _udev_rule(net: NetworkSettings) -> RootFile:
    # The name by MAC, for every stack: the kernel's ethN order is no promise, and the legacy
    # host's firewall rules or daemons may name the interface.
    return RootFile(UDEV_RULE, "0644", "\n".join([
        f"{MARK}: the NIC on the new network keeps the legacy interface's name.",
        f'SUBSYSTEM=="net", ACTION=="add", ATTR{{address}}=="{net.mac}", NAME="{net.interface}"',
    ]))


# An old persistent-net rule names the legacy machine's MACs and would take the name first.
_PERSISTENT_NET = Retired("/etc/udev/rules.d", "70-persistent-net.rules")


def _ifupdown(system, net):
    lines = [_why(net), "auto lo", "iface lo inet loopback", "",
             f"auto {net.interface}", f"iface {net.interface} inet static",
             f"    address {net.address.with_prefixlen}"]
    if net.gateway:
        lines.append(f"    gateway {net.gateway}")
    if net.dns:
        lines.append("    dns-nameservers " + " ".join(map(str, net.dns)))
    return [_PERSISTENT_NET], [RootFile("/etc/network/interfaces", "0644", "\n".join(lines))], []


def _networkd(system, net):
    lines = [_why(net), "[Match]", f"MACAddress={net.mac}", "", "[Network]",
             f"Address={net.address.with_prefixlen}"]
    if net.gateway:
        lines.append(f"Gateway={net.gateway}")
    lines += [f"DNS={server}" for server in net.dns]
    return ([_PERSISTENT_NET, Retired("/etc/systemd/network", "*.network")],
            [RootFile("/etc/systemd/network/10-ferryman.network", "0644", "\n".join(lines))], [])


def _netplan(system, net):
    ethernet: dict = {"match": {"macaddress": net.mac}, "set-name": net.interface,
                      "addresses": [net.address.with_prefixlen]}
    if net.gateway:
        # "to: 0.0.0.0/0" rather than "to: default": netplan before 0.103 knows only the former.
        ethernet["routes"] = [{"to": "0.0.0.0/0", "via": str(net.gateway)}]
    if net.dns:
        ethernet["nameservers"] = {"addresses": [str(server) for server in net.dns]}
    document = {"network": {"version": 2, "renderer": system.renderer or "networkd",
                            "ethernets": {net.interface: ethernet}}}
    text = _why(net) + "\n" + yaml.safe_dump(document, sort_keys=False).rstrip("\n")
    # 0600: netplan warns of (and newer releases refuse) configuration others can read.
    return ([_PERSISTENT_NET, Retired("/etc/netplan", "*.yaml")],
            [RootFile("/etc/netplan/60-ferryman.yaml", "0600", text)], [])


def _networkmanager(system, net):
    name = f"ferryman-{net.interface}"
    ipv4 = [f"address1={net.address.with_prefixlen}" + (f",{net.gateway}" if net.gateway else "")]
    if net.dns:
        ipv4.append("dns=" + "".join(f"{server};" for server in net.dns))
    lines = [_why(net), "[connection]", f"id={name}",
             f"uuid={uuid.uuid5(uuid.NAMESPACE_URL, f'ferryman:{net.mac}:{net.address}')}",
             "type=ethernet", f"interface-name={net.interface}", "autoconnect=true", "",
             "[ethernet]", f"mac-address={net.mac}", "", "[ipv4]", "method=manual", *ipv4, "",
             "[ipv6]", "method=ignore"]
    return ([_PERSISTENT_NET, Retired("/etc/NetworkManager/system-connections", "*")],
            [RootFile(f"/etc/NetworkManager/system-connections/{name}.nmconnection", "0600",
                      "\n".join(lines))], [])


def _ifcfg(system, net):
    lines = [_why(net), f"DEVICE={net.interface}", f"HWADDR={net.mac}", "TYPE=Ethernet",
             "ONBOOT=yes", "BOOTPROTO=none", f"IPADDR={net.address.ip}",
             f"PREFIX={net.address.network.prefixlen}"]
    if net.gateway:
        lines.append(f"GATEWAY={net.gateway}")
    lines += [f"DNS{i}={server}" for i, server in enumerate(net.dns, start=1)]
    return ([_PERSISTENT_NET,
             Retired("/etc/sysconfig/network-scripts", "ifcfg-*", keep="ifcfg-lo")],
            [RootFile(f"/etc/sysconfig/network-scripts/ifcfg-{net.interface}", "0644",
                      "\n".join(lines))], [])


def _netifrc(system, net):
    interface = net.interface.replace(".", "_").replace("-", "_")  # netifrc's variable names
    lines = [_why(net), f'config_{interface}="{net.address.with_prefixlen}"']
    if net.gateway:
        lines.append(f'routes_{interface}="default via {net.gateway}"')
    if net.dns:
        lines.append(f'dns_servers_{interface}="{" ".join(map(str, net.dns))}"')
    service = f"net.{net.interface}"
    return ([_PERSISTENT_NET, Retired("/etc/runlevels/default", "net.*")],
            [RootFile("/etc/conf.d/net", "0644", "\n".join(lines))],
            [RootLink(f"/etc/init.d/{service}", "net.lo"),
             RootLink(f"/etc/runlevels/default/{service}", f"/etc/init.d/{service}")])


# --- names ---------------------------------------------------------------------------------------

def _names(system: HostSystem, net: NetworkSettings) -> list[RootFile]:
    address = net.address.ip
    names = " ".join(dict.fromkeys([net.hostname, net.short_hostname]))
    files = [
        RootFile("/etc/hostname", "0644", net.short_hostname),
        RootFile("/etc/hosts", "0644", "\n".join([
            "127.0.0.1\tlocalhost", f"{address}\t{names}", "",
            "::1\tlocalhost ip6-localhost ip6-loopback", "ff02::1\tip6-allnodes",
            "ff02::2\tip6-allrouters"])),
        RootFile("/etc/resolv.conf", "0644", "\n".join(
            [f"{MARK} for the new network of this VM."]
            + [f"nameserver {server}" for server in net.dns])),
    ]
    if system.family == Family.GENTOO and system.init == Init.OPENRC:
        files.append(RootFile("/etc/conf.d/hostname", "0644",
                              f'{MARK}.\nhostname="{net.short_hostname}"'))
    return files


# --- the first boot ------------------------------------------------------------------------------

SYSTEMD_UNIT = f"""\
[Unit]
Description=Ferryman first boot: check in with the migration service (local.start)
Wants=network-online.target
# Not after the database server: an app VM must not wait for a server it does not use (minutes
# under emulation), and a database VM's local.start stops and restarts its server itself.
After=network-online.target
ConditionPathExists=!{DONE}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={LOCAL_START}
# A database load takes as long as it takes.
TimeoutStartSec=infinity
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target"""

_UNIT_PATH = "/etc/systemd/system/ferryman-local-start.service"
# OpenRC's "local" service runs /etc/local.d/*.start at the end of the boot, as the seed's
# Gentoo ran /etc/conf.d/local.start.
_OPENRC_START = "/etc/local.d/ferryman.start"


def _boot_hook_files(system: HostSystem) -> list[RootFile]:
    if system.init == Init.SYSTEMD:
        return [RootFile(_UNIT_PATH, "0644", SYSTEMD_UNIT)]
    if system.init == Init.OPENRC:
        return [RootFile(_OPENRC_START, "0755", "\n".join([
            "#!/bin/sh", f"{MARK}: the first boot's check-in with the migration service.",
            f"[ -e {DONE} ] || {LOCAL_START}"]))]
    return []  # sysvinit: a line in /etc/rc.local (rc_local_line)


def _boot_hook_links(system: HostSystem) -> list[RootLink]:
    if system.init == Init.SYSTEMD:
        return [RootLink("/etc/systemd/system/multi-user.target.wants/"
                         "ferryman-local-start.service", _UNIT_PATH)]
    if system.init == Init.OPENRC:
        return [RootLink("/etc/runlevels/default/local", "/etc/init.d/local")]
    return []


def _rc_local_line() -> str:
    # Debian's initscripts (/etc/init.d/rc.local) and RHEL's rc.sysinit run /etc/rc.local last.
    return f"[ -e {DONE} ] || {LOCAL_START} # ferryman-local-start"
