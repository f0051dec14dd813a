"""The libvirt provider's XML documents (domains, networks, network filters, the pool): pure
functions of the VM's record, so they are unit-tested without libvirt (docs/providers.md)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from ipaddress import ip_interface, ip_network
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

from shared.providers.base import BootSource, ProviderDisk

# Ferryman's own element in a domain's <metadata>: a domain without it was not made by Ferryman
# and is never changed or deleted.
NAMESPACE = "https://ferryman.dev/xmlns/libvirt/1"
PREFIX = "ferry"
MIGRATION_NETWORK = "ferry-migration"
MIGRATION_BRIDGE = "ferrymig0"
# Under TCG the default model is the fastest for Debian guests (docs/lab-notes.md).
TCG_CPU = "qemu64"
_DEVS = {"virtio": "vd", "scsi": "sd", "sata": "sd"}


@dataclass
class Record:
    """What Ferryman keeps in a domain's metadata: enough to rebuild its XML from nothing."""

    key: str
    spec: dict
    network: str  # MIGRATION_NETWORK or a group network's libvirt name
    disks: list[dict]  # ProviderDisk dumps, plus "volume": the volume's name in the pool
    boot: dict | None = None  # the last boot asked: source and a hash of its token
    extra: dict = field(default_factory=dict)

    def to_xml(self) -> str:
        body = json.dumps({"key": self.key, "spec": self.spec, "network": self.network,
                           "disks": self.disks, "boot": self.boot, **self.extra}, sort_keys=True)
        return f"<{PREFIX}:vm xmlns:{PREFIX}={quoteattr(NAMESPACE)}>{escape(body)}</{PREFIX}:vm>"

    @classmethod
    def from_xml(cls, text: str) -> Record:
        data = json.loads(ET.fromstring(text).text or "{}")
        known = {k: data.pop(k) for k in ("key", "spec", "network", "disks", "boot") if k in data}
        return cls(**known, extra=data)


def domain_name(spec: dict) -> str:
    return f"{spec['name']}.{spec['group']}"


def volume_name(vm_id: str, index: int) -> str:
    return f"ferry-{vm_id}-disk{index}.qcow2"


def group_network_name(group: str) -> str:
    return f"ferry-g-{group}"


def group_bridge(group: str) -> str:
    """≤ 15 characters, the same on every host and every run."""
    return "fg-" + hashlib.sha256(group.encode()).hexdigest()[:10]


def outbound_filter_name(group: str) -> str:
    return f"ferry-out-{group}"


def filter_uuid(group: str) -> str:
    """Stable, so that redefining the filter updates it in place (libvirt matches by UUID)."""
    h = hashlib.sha256(f"ferry-out/{group}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


NETWORK_BOOT_RETRY_MS = 10000


def mac_address(vm_id: str) -> str:
    """52:54:00 (QEMU's prefix, locally administered) + three bytes of the VM id's hash."""
    b = hashlib.sha256(vm_id.encode()).digest()[:3]
    return "52:54:00:" + ":".join(f"{x:02x}" for x in b)


def domain_xml(*, record: Record, vm_id: str, domain_type: str, cpus: int, pool: str,
               source: BootSource, token: str | None, console_log: str) -> str:
    """The domain, as it boots from `source`. A network boot carries the boot token as its SMBIOS
    serial: the migration network's one boot URL names ${uuid} and ${serial}, which iPXE fills."""
    spec = record.spec
    network_boot = source == BootSource.NETWORK
    cpu = ("<cpu mode='host-passthrough'/>" if domain_type == "kvm"
           else f"<cpu mode='custom' match='exact'><model fallback='allow'>{TCG_CPU}</model></cpu>")
    disks, controllers = [], set()
    for n, disk in enumerate(record.disks):
        bus = disk["bus"]
        if bus != "virtio":
            controllers.add(bus)
        order = n + 1 + (1 if network_boot else 0)
        boot = f"<boot order='{order}'/>" if n == 0 else ""
        disks.append(
            "<disk type='volume' device='disk'>"
            "<driver name='qemu' type='qcow2' discard='unmap'/>"
            f"<source pool={quoteattr(pool)} volume={quoteattr(disk['volume'])}/>"
            f"<target dev='{_DEVS[bus]}{chr(ord('a') + _index_on_bus(record.disks, n))}' bus='{bus}'/>"
            f"<serial>{escape(disk['serial'])}</serial>{boot}</disk>")
    control = "".join({"scsi": "<controller type='scsi' index='0' model='virtio-scsi'/>",
                       "sata": "<controller type='sata' index='0'/>"}[c] for c in sorted(controllers))
    nic_boot = "<boot order='1'/>" if network_boot else ""
    filterref = ""
    if record.network != MIGRATION_NETWORK:
        filterref = f"<filterref filter={quoteattr(outbound_filter_name(spec['group']))}/>"
    serial = escape(token) if network_boot and token else "none"
    # A network boot that fails (iPXE got no DHCP answer or could not fetch the image: seen
    # when six VMs PXE-boot at once under TCG on two cores) falls through to the blank disks
    # and SeaBIOS would halt there for good; it reboots instead, and the network boot is tried
    # again with the same token. The migration image ends by powering off, never by a reboot.
    retry = f"<bios rebootTimeout='{NETWORK_BOOT_RETRY_MS}'/>" if network_boot else ""
    return f"""<domain type={quoteattr(domain_type)}>
  <name>{escape(domain_name(spec))}</name>
  <uuid>{vm_id}</uuid>
  <title>Ferryman: VM {escape(spec['name'])} of group {escape(spec['group'])}</title>
  <metadata>{record.to_xml()}</metadata>
  <memory unit='MiB'>{int(spec['memory_mb'])}</memory>
  <vcpu>{cpus}</vcpu>
  <sysinfo type='smbios'><system><entry name='serial'>{serial}</entry></system></sysinfo>
  <os><type arch='x86_64' machine='pc'>hvm</type><smbios mode='sysinfo'/>{retry}</os>
  <features><acpi/></features>
  {cpu}
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    {''.join(disks)}{control}
    <interface type='network'><source network={quoteattr(record.network)}/>
      <mac address='{mac_address(vm_id)}'/><model type='virtio'/>{filterref}{nic_boot}</interface>
    <serial type='pty'><log file={quoteattr(console_log)} append='on'/><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
</domain>"""


def _index_on_bus(disks: list[dict], n: int) -> int:
    """A disk's letter counts the disks before it that share its device prefix (vd or sd)."""
    prefix = _DEVS[disks[n]["bus"]]
    return sum(1 for d in disks[:n] if _DEVS[d["bus"]] == prefix)


def disk_entries(disks: list[ProviderDisk], vm_id: str) -> list[dict]:
    return [{**d.model_dump(mode="json"), "volume": volume_name(vm_id, d.index)} for d in disks]


def migration_network_xml(subnet: str, boot_url: str) -> str:
    """Isolated (no <forward>): the VMs reach this host's address on it and nothing else. Its
    dnsmasq answers PXE: iPXE (QEMU's virtio ROM) gets the boot URL as its DHCP file name."""
    net = ip_network(subnet)
    hosts = list(net.hosts())
    gateway, first, last = hosts[0], hosts[9], hosts[-2]
    return f"""<network>
  <name>{MIGRATION_NETWORK}</name>
  <bridge name='{MIGRATION_BRIDGE}' stp='off'/>
  <dns enable='no'/>
  <ip address='{gateway}' netmask='{net.netmask}'>
    <dhcp><range start='{first}' end='{last}'/><bootp file={quoteattr(boot_url)}/></dhcp>
  </ip>
</network>"""


def group_network_xml(group: str, gateway_cidr: str, forward_dev: str) -> str:
    """Routed: this host holds the group's gateway address, so it (the prober, the cutover's SSH,
    the legacy side's DNAT) reaches the VMs at their planned addresses; with a forward device,
    the VMs' traffic is routed to that device only. No DHCP: the VMs' addresses are planned."""
    iface = ip_interface(gateway_cidr)
    dev = f" dev={quoteattr(forward_dev)}" if forward_dev else ""
    return f"""<network>
  <name>{escape(group_network_name(group))}</name>
  <forward mode='route'{dev}/>
  <bridge name='{group_bridge(group)}' stp='off'/>
  <dns enable='no'/>
  <ip address='{iface.ip}' netmask='{iface.network.netmask}'/>
</network>"""


def outbound_filter_xml(group: str, subnet: str, migration_gateway: str, open_: bool) -> str:
    """Until the cutover opens it, a group's VM may start connections only to its group's subnet
    and the migration service; connections to it, and their answers, always pass. Refused, not
    dropped, so a test touching production fails at once."""
    net = ip_network(subnet)
    rules = ("<rule action='accept' direction='inout' priority='100'><all/></rule>" if open_ else
             f"<rule action='accept' direction='out' priority='100'><all dstipaddr='{net.network_address}'"
             f" dstipmask='{net.prefixlen}'/></rule>"
             f"<rule action='accept' direction='out' priority='110'><all dstipaddr='{migration_gateway}'/>"
             "</rule>"
             "<rule action='accept' direction='in' priority='120'><all/></rule>"
             "<rule action='reject' direction='out' priority='900'><all/></rule>"
             "<rule action='reject' direction='out' priority='900'><all-ipv6/></rule>")
    return (f"<filter name={quoteattr(outbound_filter_name(group))} chain='root'>"
            f"<uuid>{filter_uuid(group)}</uuid>{rules}</filter>")


def pool_xml(name: str, path: str) -> str:
    return (f"<pool type='dir'><name>{escape(name)}</name>"
            f"<target><path>{escape(path)}</path></target></pool>")


def volume_xml(name: str, size_gb: int) -> str:
    return (f"<volume><name>{escape(name)}</name><capacity unit='GiB'>{size_gb}</capacity>"
            "<allocation>0</allocation><target><format type='qcow2'/></target></volume>")


def metadata_of(domain_xml_text: str) -> Record | None:
    """Ferryman's record in a domain's XML, or None: a domain Ferryman did not make."""
    root = ET.fromstring(domain_xml_text)
    found = root.find(f"metadata/{{{NAMESPACE}}}vm")
    if found is None:
        return None
    return Record.from_xml(ET.tostring(found, encoding="unicode"))


def interface_network(domain_xml_text: str) -> str | None:
    source = ET.fromstring(domain_xml_text).find("devices/interface/source")
    return None if source is None else source.get("network")
