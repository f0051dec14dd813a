"""What a legacy host runs, as far as rebuilding it is concerned: its family and release, the
init system that runs its boot, the network stack that configures its interfaces, and the tool
that makes its initramfs.

Read from the host's root by `shared.systems.probe` when it is archived, stored with the VM, and
used by the configurator to write the files that system reads (`shared.systems.root_files`).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

# A plain interface name (what the kernel takes, at most 15 characters): no pattern, no path.
INTERFACE_NAME = r"^[A-Za-z0-9_.-]{1,15}$"


class Family(StrEnum):
    DEBIAN = "debian"
    UBUNTU = "ubuntu"
    RHEL = "rhel"  # Red Hat Enterprise Linux and its rebuilds (Rocky, Alma, CentOS, Oracle), Fedora
    GENTOO = "gentoo"


class Init(StrEnum):
    SYSTEMD = "systemd"
    SYSVINIT = "sysvinit"
    OPENRC = "openrc"


class NetworkStack(StrEnum):
    IFUPDOWN = "ifupdown"  # /etc/network/interfaces
    NETWORKD = "systemd-networkd"  # /etc/systemd/network/*.network
    NETPLAN = "netplan"  # /etc/netplan/*.yaml, rendered for networkd or NetworkManager
    NETWORKMANAGER = "networkmanager"  # keyfiles in /etc/NetworkManager/system-connections
    IFCFG = "ifcfg"  # /etc/sysconfig/network-scripts/ifcfg-* (RHEL up to 8)
    NETIFRC = "netifrc"  # Gentoo's /etc/conf.d/net


class Initramfs(StrEnum):
    INITRAMFS_TOOLS = "initramfs-tools"  # update-initramfs (Debian, Ubuntu)
    DRACUT = "dracut"  # RHEL-likes, Gentoo, newer Debian/Ubuntu by choice


# The init systems Ferryman can hook its first boot into, with the network stacks it can write
# for each. Anything else is refused when the host is archived, before any VM is created.
KNOWN = {
    Init.SYSTEMD: {NetworkStack.IFUPDOWN, NetworkStack.NETWORKD, NetworkStack.NETPLAN,
                   NetworkStack.NETWORKMANAGER, NetworkStack.IFCFG},
    Init.SYSVINIT: {NetworkStack.IFUPDOWN, NetworkStack.IFCFG},
    Init.OPENRC: {NetworkStack.NETIFRC, NetworkStack.IFUPDOWN},
}


class UnknownSystem(ValueError):
    """The legacy root is not one Ferryman knows how to rebuild; the message says what it found."""


class HostSystem(BaseModel):
    """One legacy host's system, as read from its root."""

    # A field's docstring is its description in the plan's JSON Schema (a plan may name it).
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    family: Family
    """debian, ubuntu, rhel (RHEL and its rebuilds, Fedora) or gentoo."""
    release: str = ""
    """os-release's VERSION_ID ("12", "9.3"); empty on a rolling release."""
    name: str = ""
    """os-release's PRETTY_NAME, for people."""
    init: Init
    """What PID 1 runs: systemd, sysvinit or openrc."""
    network: NetworkStack
    """The stack that configures the host's network: ifupdown, systemd-networkd, netplan,
    networkmanager, ifcfg or netifrc."""
    interface: str | None = Field(None, pattern=INTERFACE_NAME)
    """The interface the legacy network configuration names (eth0, ens3): the new VM's NIC,
    found by its MAC, gets that name, so the host's other files that name it still hold;
    default eth0."""
    renderer: str | None = None
    """netplan only: the backend its configuration asks for (networkd or NetworkManager)."""
    initramfs: Initramfs | None = None
    """What makes an initramfs in the root (initramfs-tools or dracut), when the kernel bundle
    brings none."""

    @property
    def interface_name(self) -> str:
        return self.interface or "eth0"

    def summary(self) -> str:
        """One line for `ferry status`: `Debian GNU/Linux 11 (bullseye) · sysvinit · ifupdown (eth0)`."""
        name = self.name or f"{self.family} {self.release}".strip()
        return f"{name} · {self.init} · {self.network} ({self.interface_name})"


# What a VM without a root archive boots: the base image (deploy/lab/build-images.sh builds it
# from Debian 12 with systemd, ifupdown and initramfs-tools).
BASE_IMAGE_SYSTEM = HostSystem(
    family=Family.DEBIAN, release="12", name="Debian GNU/Linux 12 (bookworm), the base image",
    init=Init.SYSTEMD, network=NetworkStack.IFUPDOWN, initramfs=Initramfs.INITRAMFS_TOOLS)


def check_known(system: HostSystem) -> HostSystem:
    """`system` itself, or UnknownSystem when its init and network stack are not a pair that
    Ferryman writes."""
    if system.network not in KNOWN[system.init]:
        known = ", ".join(sorted(KNOWN[system.init]))
        raise UnknownSystem(f"{system.name or system.family}: {system.init} with "
                            f"{system.network} is not a combination Ferryman can rebuild "
                            f"(with {system.init}: {known})")
    return system
